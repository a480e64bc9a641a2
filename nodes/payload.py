"""What a remote step sends: its files as one reproducible tarball, and digests for triggers.

A role's rendered files (and, for the balancer and the database, the secret files) go to
the machine as ONE deterministic tar.gz, base64, on the step's stdin. stdin is the only
channel that keeps secrets (master keys, the database password) out of command lines and
process listings; it is also atomic (the whole file set or nothing) and byte-for-byte the
same on every run, so a second `pulumi up` with the same config sees no change.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nodes.render import RenderedFile

ONION_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "onion"
# What of onion/ the balancer gets: the sources, their data (the config's JSON Schema) and
# what pins their dependencies (the lock its venv is built from).
ONION_PACKAGE_SUFFIXES = (".py", ".json")
ONION_PACKAGE_FILES = ("requirements.txt", "requirements.lock")
# The `onion` distribution as the balancer builds and installs it into its locked venv
# (pyproject.toml beside onion/ in the copy, from nodes/templates/balancer/pyproject.toml.j2):
# the checkout's pyproject.toml less the dependencies, which the lock governs there.
# tests/test_balancer_package_step.py keeps these in step with that file.
ONION_DISTRIBUTION: dict = {
    "name": "onionstack-onion",
    "description": "Load-balanced v3 onion services: onionstack's balancer core (an OnionBalance v3 replacement) "
                   "and its operator CLI",
    "requires_python": ">=3.11",
    "scripts": {"onion": "onion.__main__:main"},
    "packages": ("onion", "onion.schema"),
    "package_data": {"onion.schema": ("*.json",)},
}
_VERSION_RE = re.compile(r'^__version__ = "([^"]+)"$', re.M)


@dataclass(frozen=True)
class BinaryFile:
    """A file whose content is bytes (tor's binary key format); same fields as RenderedFile."""

    content: bytes
    mode: int = 0o600
    owner: str = "root"


def _tar_gz_base64(members: Mapping[str, tuple[bytes, int, str]]) -> str:
    """base64 of a tar.gz of `members` ({path: (data, mode, owner)}): sorted names, mtime 0,
    numeric ids 0 with the owner's *name* recorded (GNU tar running as root restores owners
    by name, so `debian-tor` or `postgres` get their files once the package has created the
    user), gzip mtime 0: the same members give the same bytes on every machine."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(members):
            data, mode, owner = members[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = owner
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)).decode("ascii")


def payload(files: Mapping[str, "RenderedFile | BinaryFile"]) -> str:
    """`files` ({path relative to /: RenderedFile or BinaryFile}) as base64 of a
    reproducible tar.gz. Directories are not listed: tar creates parents, and their modes
    are the apply script's business (e.g. tor's DataDirectory must be 0700 debian-tor)."""
    members = {}
    for path, f in files.items():
        _check_relpath(path)
        data = f.content if isinstance(f.content, bytes) else f.content.encode("utf-8")
        members[path] = (data, f.mode, f.owner)
    return _tar_gz_base64(members)


def unpack(encoded: str) -> dict[str, RenderedFile]:
    """The inverse of `payload` (tests and mocks read what a step would install)."""
    out: dict[str, RenderedFile] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded))), mode="r") as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            try:
                content = data.decode("utf-8")
            except UnicodeDecodeError:
                content = data  # binary (tor key files)
            out[info.name] = RenderedFile(content, info.mode, info.uname)
    return out


def _check_relpath(path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or not path or ".." in parts or "" in parts:
        raise ValueError(f"payload path {path!r}: use a normalised path relative to / (no '..', no leading '/')")


def digest(*parts: str) -> str:
    """sha256 over length-prefixed parts: for `triggers` of inputs that are not files."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def onion_pyproject(package_dir: Path = ONION_PACKAGE_DIR) -> str:
    """The pyproject.toml the balancer builds the package from (its version: the package's own)."""
    from nodes.render import render_template

    found = _VERSION_RE.search((package_dir / "__init__.py").read_text())
    if not found:
        raise ValueError(f"{package_dir / '__init__.py'} has no __version__ = \"...\" line")
    return render_template("balancer/pyproject.toml.j2", version=found.group(1), dist=ONION_DISTRIBUTION)


def onion_package_tarball(package_dir: Path = ONION_PACKAGE_DIR) -> str:
    """base64 of a reproducible tar.gz of the `onion` package (sources, schema, requirements
    and lock) and the pyproject.toml it is built from on the balancer.

    Built from the tracked file kinds only, so __pycache__ or editor files on the deploying
    machine never change it (a change would re-run the balancer's install step).
    """
    members = {"pyproject.toml": (onion_pyproject(package_dir).encode(), 0o644, "root")}
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        if path.suffix not in ONION_PACKAGE_SUFFIXES and path.name not in ONION_PACKAGE_FILES:
            continue
        members[path.relative_to(package_dir.parent).as_posix()] = (path.read_bytes(), 0o644, "root")
    return _tar_gz_base64(members)
