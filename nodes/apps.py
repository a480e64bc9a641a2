"""App sites on the workers (docs/apps.md): what the app step installs, rendered from
nodes/templates/app/, and the balancer-side drain scripts of a rolling switch.

Plain jinja2 (no pulumi), like nodes/render.py, so the tests and the lab render the same
bytes as the Pulumi program:

- `render_app_host(spec)`: the public files every worker gets: the database CA
  (`/etc/onionstack/database-ca.pem`, what `sslmode=verify-full` clients verify against), one
  systemd unit per app site (podman, the image pinned by digest), the registry credential
  helper's config for ECR images, and the step's own install/apply scripts;
- `app_secret_files(spec, urls)`: each app's environment file (its config env plus
  DATABASE_URL with the generated password): 0600 root, only in the step's secret stdin;
- `drain_switch_script` / `undrain_script`: run on the balancer around a worker's switch.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence
from urllib.parse import quote

from nodes.render import (APP_NEXT_PORT_OFFSET, Directory, Layout, RenderError, RenderedFile, _script_files,
                          app_database_name, render_template)

APP_PACKAGES = ("podman", "curl", "amazon-ecr-credential-helper")
CA_FILE_REL = "etc/onionstack/database-ca.pem"
APP_SCRIPT_DIR = "usr/local/lib/onionstack/apps"
HEALTH_WAIT_SECONDS = 120
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9.:-]*/[a-z0-9._/-]+(:[A-Za-z0-9_.-]+)?@sha256:[0-9a-f]{64}$")


def _fail(field_name: str, value: object, fix: str) -> None:
    raise RenderError(f"{field_name}: {value!r} is invalid: {fix}")


@dataclass(frozen=True)
class AppRelease:
    """One app site as a worker runs it. `image` is a full reference pinned by digest;
    `registry` the ECR registry host when the stack's repository holds it (podman then
    gets credentials from the instance role through the ECR credential helper).
    Two slots, each its own unit and loopback port (`slots`): a switch starts the new
    release on the idle slot beside the running one and stops the old once the new is
    healthy; nginx sends to whichever answers."""

    site: str
    image: str
    port: int
    host_port: int
    health_path: str = "/healthz"
    env: tuple[tuple[str, str], ...] = ()
    migrate: tuple[str, ...] = ()
    registry: str | None = None

    def __post_init__(self) -> None:
        if not IMAGE_RE.match(self.image):
            _fail(f"apps[{self.site}].image", self.image, "use <registry>/<repository>@sha256:<64 hex>")
        for name, value in self.env:
            if "\n" in value or not re.match(r"^[A-Z_][A-Z0-9_]*$", name):
                _fail(f"apps[{self.site}].env", name, "one-line values, names ^[A-Z_][A-Z0-9_]*$")

    @property
    def next_port(self) -> int:
        return self.host_port + APP_NEXT_PORT_OFFSET

    @property
    def slots(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(slot, loopback port) of the two units."""
        return (("a", self.host_port), ("b", self.next_port))

    def container(self, slot: str) -> str:
        return f"onionstack-app-{self.site}-{slot}"

    def unit(self, slot: str) -> str:
        return f"{self.container(slot)}.service"

    @property
    def units(self) -> tuple[str, str]:
        return tuple(self.unit(slot) for slot, _ in self.slots)

    @property
    def image_name(self) -> str:
        return self.image.split("@", 1)[0]


@dataclass(frozen=True)
class AppHostSpec:
    """Every app site of the stack, the database CA, and where things land."""

    apps: tuple[AppRelease, ...]
    ca_pem: str
    layout: Layout = field(default_factory=Layout)
    podman: str = "/usr/bin/podman"

    def __post_init__(self) -> None:
        if "BEGIN CERTIFICATE" not in (self.ca_pem or ""):
            _fail("ca_pem", "<not PEM>", "give the database CA's certificate (PEM)")
        ports = [p for a in self.apps for _, p in a.slots]
        if len(set(ports)) != len(ports):
            _fail("apps[].host_port", ports, "each app needs its own loopback port")

    @property
    def ca_file(self) -> str:
        return posixpath.join(self.layout.root, CA_FILE_REL)

    def env_file(self, app: AppRelease) -> str:
        return self.layout.path("etc_dir", "apps", f"{app.site}.env")

    @property
    def auth_file(self) -> str:
        return self.layout.path("etc_dir", "apps", "registries.json")


def database_url(site: str, password: str, host: str, port: int, ca_file: str) -> str:
    """The app's DATABASE_URL: its own role and database, TLS verified against the
    stack's CA and the database's address (sslmode=verify-full)."""
    name = app_database_name(site)
    return (f"postgresql://{name}:{quote(password, safe='')}@{host}:{port}/{name}"
            f"?sslmode=verify-full&sslrootcert={quote(ca_file, safe='/')}")


def render_app_host(spec: AppHostSpec) -> dict[str, RenderedFile]:
    """The public files of the app step (every worker the same)."""
    layout = spec.layout
    out: dict[str, RenderedFile] = {layout.key(spec.ca_file): RenderedFile(spec.ca_pem, 0o644, "root")}
    registries = sorted({a.registry for a in spec.apps if a.registry})
    if registries:
        out[layout.key(spec.auth_file)] = RenderedFile(render_template(
            "app/registries.json.j2", registries=registries), 0o644, "root")
    for app in spec.apps:
        for slot, port in app.slots:
            out[layout.key(layout.path("systemd_dir", app.unit(slot)))] = RenderedFile(render_template(
                "app/app.service.j2", app=_UnitView(app, spec, slot, port)), 0o644, "root")
    secret = {layout.key(spec.env_file(a)): RenderedFile("", 0o600, "root") for a in spec.apps}
    dirs = (Directory(layout.path("etc_dir"), 0o755), Directory(layout.path("etc_dir", "apps"), 0o700))
    script_layout = Layout(root=layout.root, script_dir=APP_SCRIPT_DIR)
    out.update(_script_files(script_layout, "apps", "scripts/apply-apps.sh.j2", {**out, **secret}, dirs,
                             APP_PACKAGES if registries else APP_PACKAGES[:2], (), False, spec=spec,
                             health_wait=HEALTH_WAIT_SECONDS))
    return out


@dataclass(frozen=True)
class _UnitView:
    """What app.service.j2 reads."""

    release: AppRelease
    spec: AppHostSpec
    slot: str
    slot_port: int

    @property
    def container(self) -> str:
        return self.release.container(self.slot)

    def __getattr__(self, name: str):
        return getattr(self.release, name)

    @property
    def app(self) -> AppRelease:
        return self.release

    @property
    def podman(self) -> str:
        return self.spec.podman

    @property
    def env_file(self) -> str:
        return self.spec.env_file(self.release)

    @property
    def ca_file(self) -> str:
        return self.spec.ca_file

    @property
    def auth_file(self) -> str | None:
        return self.spec.auth_file if self.release.registry else None


def env_file_content(app: AppRelease, database_url_value: str, ca_file: str) -> str:
    """podman's --env-file: NAME=value lines, taken literally."""
    lines = [f"{k}={v}" for k, v in app.env]
    lines += [f"PORT={app.port}", f"PGSSLROOTCERT={ca_file}", f"DATABASE_URL={database_url_value}"]
    return "\n".join(lines) + "\n"


def app_secret_files(spec: AppHostSpec, urls: Mapping[str, str]) -> dict[str, RenderedFile]:
    """Each app's environment file (DATABASE_URL holds its password): 0600 root, for the
    step's secret stdin only."""
    return {spec.layout.key(spec.env_file(a)): RenderedFile(env_file_content(a, urls[a.site], spec.ca_file),
                                                            0o600, "root") for a in spec.apps}


# ----------------------------------------------------------------- the rolling switch, on the balancer
def drain_switch_script(addresses: Sequence[str], *, config: str, state_dir: str, python: str,
                        package_lib: str | None, wait: int = 900, poll: int = 5, reload: str) -> str:
    """Take `addresses` (one worker's instances) out of the balancer's config, reload it,
    and wait until it publishes without them (`python -m onion drained`)."""
    return render_template("steps/app-drain.sh.j2", addresses=[a.removesuffix(".onion") for a in addresses],
                           config=config, state_dir=state_dir, python=python, package_lib=package_lib,
                           wait=int(wait), poll=int(poll), reload=reload)


def undrain_script(addresses: Sequence[str], *, config: str, state_dir: str, python: str,
                   package_lib: str | None, wait: int = 600, poll: int = 5, reload: str) -> str:
    """Put the balancer's own config back and wait until it publishes the worker's
    instances again (each listed with introduction points in what was uploaded)."""
    return render_template("steps/app-undrain.sh.j2", addresses=[a.removesuffix(".onion") for a in addresses],
                           config=config, state_dir=state_dir, python=python, package_lib=package_lib,
                           wait=int(wait), poll=int(poll), reload=reload)


def migrate_script(app: AppRelease, *, podman: str = "/usr/bin/podman", auth_file: str | None = None) -> str:
    """Pull the new image and run the app's migration with its environment (staged)."""
    return render_template("steps/app-migrate.sh.j2", app=app, podman=podman, auth_file=auth_file,
                           script_dir=APP_SCRIPT_DIR)


__all__ = ["AppHostSpec", "AppRelease", "app_secret_files", "database_url",
           "drain_switch_script", "env_file_content", "migrate_script", "render_app_host", "undrain_script"]
