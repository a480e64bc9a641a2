"""Shared helpers for the stack tests: configs, cached mock runs, resource queries."""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any


import mockrun
from mockrun import (  # noqa: F401 - re-exported
    OB_CONFIG_RE, WORKER_STEP_RE, ProgramResult, demo_master_key, demo_ssh_key_pair,
    mock_instance_address, mock_password, reveal,
)

ANYWHERE = "0.0.0.0/0"


class OptionRecordingMonitor(mockrun.RecordingMonitor):
    """Also records the options the stack tests of the remote steps check."""

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        record = self.recorded[-1]
        record.additional_secret_outputs = tuple(request.additionalSecretOutputs)
        record.replace_on_changes = tuple(request.replaceOnChanges)
        record.delete_before_replace = bool(request.deleteBeforeReplace)
        record.custom_timeouts = {k: getattr(request.customTimeouts, k) for k in ("create", "update", "delete")}
        record.aliases = tuple(_alias(a) for a in request.aliases)
        record.replacement_trigger = _trigger(request)
        record.provider = request.provider  # "<provider urn>::<id>", "" for the default provider
        # input name -> URNs it was computed from (the engine hands these to policy packs)
        record.property_dependencies = {k: tuple(v.urns) for k, v in request.propertyDependencies.items()}
        return response


def _trigger(request):
    """The `replacement_trigger` option as the engine receives it (None when unset)."""
    if not request.HasField("replacement_trigger"):
        return None
    from google.protobuf import json_format
    from pulumi.runtime import rpc

    return rpc.deserialize_property(json_format.MessageToDict(request.replacement_trigger))


def _alias(alias) -> dict:
    """An alias as the engine receives it: {"urn": ...} or the spec's fields."""
    if alias.WhichOneof("alias") == "urn":
        return {"urn": alias.urn}
    spec = alias.spec
    out = {k: getattr(spec, k) for k in ("name", "type", "stack", "project") if getattr(spec, k)}
    which = spec.WhichOneof("parent")
    if which == "parentUrn":
        out["parentUrn"] = spec.parentUrn
    elif which == "noParent":
        out["noParent"] = spec.noParent
    return out


# Every mocked run in the test session records the options the tests check.
mockrun.RecordingMonitor = OptionRecordingMonitor


@functools.lru_cache(maxsize=None)
def ssh_pair() -> tuple[str, str]:
    """One throwaway ed25519 pair per test session (generation is cheap, equality is handy)."""
    return demo_ssh_key_pair()


def minimal_config(**overrides: Any) -> dict[str, Any]:
    """Only the required keys (bare names), plus `overrides`."""
    public, private = ssh_pair()
    cfg: dict[str, Any] = {
        "sites": [{"name": "news", "domain": "example.com"}],
        "masterKeys": {"news": demo_master_key("news")},
        "adminCidrs": ["198.51.100.7/32"],
        "sshPublicKey": public,
        "sshPrivateKey": private,
    }
    cfg.update(overrides)
    return cfg


def prod_config(**overrides: Any) -> dict[str, Any]:
    """Pulumi.prod.yaml's config with demo secrets, plus bare-key `overrides`."""
    cfg = mockrun.load_stack_file("prod")
    public, private = ssh_pair()
    sites = cfg["onionstack:sites"]
    cfg["onionstack:masterKeys"] = {s["name"]: demo_master_key(s["name"]) for s in sites}
    cfg["onionstack:sshPublicKey"] = public
    cfg["onionstack:sshPrivateKey"] = private
    for key, value in overrides.items():
        cfg[f"onionstack:{key}"] = value
    return cfg


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in value) and value:
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@functools.lru_cache(maxsize=32)
def _cached(frozen: tuple, stack: str) -> ProgramResult:
    return mockrun.run_program(_thaw(frozen), stack=stack)


def run(config: dict[str, Any], stack: str = "prod") -> ProgramResult:
    """Run the real program once per distinct config (results are cached per session)."""
    return _cached(_freeze(config), stack)


def tags_of(r) -> dict:
    return reveal(r.inputs.get("tags") or {})


@functools.lru_cache(maxsize=None)
def is_taggable(type_token: str) -> bool:
    """Whether the pulumi-aws resource behind `type_token` accepts `tags`.

    `aws:ec2/vpc:Vpc` -> pulumi_aws.ec2.Vpc; looked up in the SDK so a new resource type
    in the program is checked without anyone updating a list here.
    """
    pkg, module_path, cls = type_token.split(":")
    if pkg != "aws":
        return False
    module = module_path.split("/")[0]
    mod = importlib.import_module("pulumi_aws" if module == "index" else f"pulumi_aws.{module}")
    klass = getattr(mod, cls)
    return "tags" in inspect.signature(klass._internal_init).parameters


def provider_region(result: ProgramResult, resource) -> str | None:
    """The region of the explicit provider `resource` was created with, or None for the
    stack's default provider (whose region is `aws:region`)."""
    ref = getattr(resource, "provider", "")
    if not ref:
        return None
    urn = ref.rsplit("::", 1)[0]
    return result.by_urn(urn).input("region")
