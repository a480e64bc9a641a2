"""Shared helpers for the stack tests: configs, cached mock runs, resource queries."""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import hashlib
import re

import mockrun
from mockrun import ProgramResult, demo_master_key, demo_ssh_key_pair, reveal

ANYWHERE = "0.0.0.0/0"
WORKER_STEP_RE = re.compile(r"^worker-\d+-tor-nginx$")
OB_CONFIG_RE = re.compile(r"/tor/(?P<daemon>[^/]+)/hs/(?P<site>[^/]+)/ob_config$")


def mock_instance_address(step_name: str, daemon: str, site: str) -> str:
    """The instance address the emulated tor of `step_name` creates for (daemon, site):
    derived from the names, so the same program gets the same addresses every run."""
    from onion.keys import onion_address

    return onion_address(hashlib.sha256(f"{step_name}|{daemon}|{site}".encode()).digest())


def mock_password(name: str) -> str:
    return hashlib.sha256(f"password|{name}".encode()).hexdigest()[:32]


class BootstrapMocks(mockrun.StackMocks):
    """StackMocks plus what the remote steps' providers would return:

    - a worker's tor-nginx step prints one `onionstack-instance SITE DAEMON ADDRESS` line
      per ob_config in its stdin payload (what its script prints after tor created the
      instance keys);
    - `random.RandomPassword` yields a deterministic `result`.
    """

    def new_resource(self, args):
        id_, state = super().new_resource(args)
        if args.typ == "command:remote:Command":
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
            if WORKER_STEP_RE.match(args.name):
                from nodes.bootstrap import ADDRESS_LINE
                from nodes.steps import unpack

                files = unpack(reveal(args.inputs["stdin"]))
                lines = []
                for path in sorted(files):
                    m = OB_CONFIG_RE.search(path)
                    if m:
                        addr = mock_instance_address(args.name, m["daemon"], m["site"])
                        lines.append(f"{ADDRESS_LINE} {m['site']} {m['daemon']} {addr}")
                state["stdout"] = "packages: installed\n" + "\n".join(lines) + "\n"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = mock_password(args.name)
        return id_, state


class OptionRecordingMonitor(mockrun.RecordingMonitor):
    """Also records the options the stack tests of the remote steps check."""

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        record = self.recorded[-1]
        record.additional_secret_outputs = tuple(request.additionalSecretOutputs)
        record.replace_on_changes = tuple(request.replaceOnChanges)
        record.delete_before_replace = bool(request.deleteBeforeReplace)
        record.custom_timeouts = {k: getattr(request.customTimeouts, k) for k in ("create", "update", "delete")}
        return response


# Every mocked run in the test session (the stack tests' and mockrun's own) emulates the
# remote steps' outputs and records their options.
mockrun.StackMocks = BootstrapMocks
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
