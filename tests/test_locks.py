"""The lock files: exact versions and PyPI's hashes for the program and for the balancer.

`bash scripts/lock` writes them from the human-edited inputs (requirements.txt,
onion/requirements.txt, requirements-build.txt); `scripts/install-lock` installs one with
every file hash-checked. These tests check, offline, that each lock still matches its
inputs, that the venv the tests run in is the locked one, and that the installer refuses
what it must refuse (run for real on a local index of throwaway packages). Each
consistency check is also run against a broken lock or input to show it catches what it
is for. CI installs requirements.lock with --require-hashes through scripts/setup for
real (.ci/run -> scripts/test -> scripts/setup).
"""
from __future__ import annotations

import hashlib
import ensurepip
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
BUILD_INPUT = REPO / "requirements-build.txt"
LOCKS = {
    # lock -> its inputs and the Python it is for
    "program": (REPO / "requirements.lock", [REPO / "requirements.txt", BUILD_INPUT], "3.11"),
    "onion": (REPO / "onion" / "requirements.lock",
              [REPO / "onion" / "requirements.txt", BUILD_INPUT], "3.12"),
}
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class Pin:
    name: str              # canonical
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Requirement-file lines with backslash continuations joined and comments dropped."""
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        buf = ""
    return out


def parse_lock(text: str) -> tuple[list[Pin], list[str]]:
    """The pins of a lock file, and what is wrong with it (every pin exact and hashed)."""
    pins, problems = [], []
    for n, line in logical_lines(text):
        spec, *opts = [part.strip() for part in re.split(r"\s+(?=--)", line)]
        try:
            req = Requirement(spec)
        except Exception as e:               # noqa: BLE001 -- reported, not raised
            problems.append(f"line {n}: not a requirement: {spec!r} ({e})")
            continue
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"line {n}: {req.name} is not pinned to one exact version ({req.specifier})")
            continue
        hashes = []
        for o in opts:
            m = HASH.match(o)
            if m:
                hashes.append(m.group(1))
            else:
                problems.append(f"line {n}: {req.name}: unexpected option {o!r}")
        if not hashes:
            problems.append(f"line {n}: {req.name}=={specs[0].version} has no sha256 hash")
        pins.append(Pin(canonicalize_name(req.name), specs[0].version, req.marker, tuple(hashes)))
    return pins, problems


def inputs(paths: list[Path]) -> list[Requirement]:
    return [Requirement(line) for p in paths for _, line in logical_lines(p.read_text())]


def env_for(python: str) -> dict:
    return {"python_version": python, "python_full_version": f"{python}.0",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython"}


def active(pins: list[Pin], python: str) -> dict[str, Pin]:
    env = env_for(python)
    return {p.name: p for p in pins if p.marker is None or p.marker.evaluate(env)}


def input_problems(lock_text: str, reqs: list[Requirement], python: str) -> list[str]:
    """Every input requirement pinned in the lock, at a version its range allows."""
    pins, problems = parse_lock(lock_text)
    locked = active(pins, python)
    env = env_for(python)
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pin = locked.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} ({req}) is not in the lock: run bash scripts/lock")
        elif not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{req.name}=={pin.version} in the lock is outside {req.specifier}: run bash scripts/lock")
    return problems


PIN_START = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def wanted_by(text: str) -> dict[str, set[str]]:
    """Each pin's `# via` annotations: input files (`-r FILE`) and the packages needing it
    (constraint files, `-c FILE`, left out: they allow a version, they add nothing)."""
    via: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        m = PIN_START.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            via.setdefault(current, set())
            continue
        c = re.match(r"^\s+#\s+(?:via\s+)?(\S.*?)\s*$", line)
        if current and c and c.group(1) != "via" and not c.group(1).startswith("-c "):
            via[current].add(c.group(1))
    return via


def stale_pins(lock_text: str, reqs: list[Requirement]) -> list[str]:
    """Pins that only an input file wanted, which no input names any more."""
    names = {canonicalize_name(r.name) for r in reqs}
    return sorted(f"{name} is locked but nothing needs it any more: run bash scripts/lock"
                  for name, why in wanted_by(lock_text).items()
                  if name not in names and all(w.startswith("-r ") for w in why))


def read(name: str) -> tuple[str, list[Requirement], str]:
    lock, paths, python = LOCKS[name]
    return lock.read_text(), inputs(paths), python


# ---- the real files --------------------------------------------------------------------

@pytest.mark.parametrize("name", LOCKS)
def test_lock_pins_every_input_exactly_with_hashes(name):
    text, reqs, python = read(name)
    assert input_problems(text, reqs, python) == []
    assert stale_pins(text, reqs) == []
    pins, _ = parse_lock(text)
    assert set(wanted_by(text)) == {p.name for p in pins}
    assert len(pins) >= len(reqs)
    assert "bash scripts/lock" in text.splitlines()[1]        # says how it was made
    assert f"bash scripts/install-lock VENV {LOCKS[name][0].relative_to(REPO)}" in text


def test_onion_lock_takes_the_program_locks_versions():
    """The tests run the versions the balancer runs, and the balancer gets no pulumi."""
    program = active(parse_lock(read("program")[0])[0], "3.11")
    onion = active(parse_lock(read("onion")[0])[0], "3.12")
    assert {n: p.version for n, p in onion.items()} == {n: program[n].version for n in onion}
    assert not any(n.startswith("pulumi") or n in {"boto3", "moto", "pytest"} for n in onion)


def test_the_test_venv_is_the_locked_one():
    """What the tests import is what the lock says (CI installs it with --require-hashes;
    here a mismatch means the venv or the lock is stale: bash scripts/setup)."""
    pins = active(parse_lock(read("program")[0])[0], f"{sys.version_info[0]}.{sys.version_info[1]}")
    wrong = {}
    for name, pin in pins.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or Version(have) != Version(pin.version):
            wrong[name] = (pin.version, have)
    assert wrong == {}


def test_setup_installs_the_lock_with_hashes():
    setup = (REPO / "scripts" / "setup").read_text()
    assert "bash scripts/install-lock .venv requirements.lock" in setup
    assert "pip install" not in setup                        # no other road into the venv
    install = (REPO / "scripts" / "install-lock").read_text()
    pip_lines = [l for l in install.splitlines() if '"${pip[@]}" install' in l]
    assert len(pip_lines) == 2 and all("--require-hashes" in l for l in pip_lines)
    assert "--no-build-isolation" in pip_lines[1]


# ---- the checks catch what they are for ---------------------------------------------------

def test_consistency_checks_reject_broken_locks():
    text, reqs, python = read("program")
    # an input nobody locked
    assert input_problems(text, reqs + [Requirement("leftpad>=1")], python) == [
        "leftpad (leftpad>=1) is not in the lock: run bash scripts/lock"]
    # an input whose range moved past the locked version
    assert any("outside >=99" in p for p in input_problems(text, [Requirement("stem>=99")], python))
    # a pin left behind after its input line was removed (requirements.txt minus jinja2)
    assert stale_pins(text, [r for r in reqs if r.name.lower() != "jinja2"]) == [
        "jinja2 is locked but nothing needs it any more: run bash scripts/lock"]
    # a pin without hashes, a range instead of a pin, a stray option
    broken = "stem==1.8.2\nnumpy>=2 \\\n    --hash=sha256:" + "0" * 64 + "\npyyaml==6.0.4 --no-binary x\n"
    _, problems = parse_lock(broken)
    assert problems == ["line 1: stem==1.8.2 has no sha256 hash",
                        "line 2: numpy is not pinned to one exact version (>=2)",
                        "line 4: pyyaml: unexpected option '--no-binary x'",
                        "line 4: pyyaml==6.0.4 has no sha256 hash"]


# ---- scripts/install-lock, run for real on a local index ----------------------------------

def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


BACKEND = '''
"""A build backend that needs setuptools importable in the environment it builds in."""
import base64, hashlib, os, zipfile
import setuptools

NAME, VERSION = "lockdemo", "1.0"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{NAME}.py": f"BUILT_WITH_SETUPTOOLS = {setuptools.__version__!r}\\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\\nGenerator: lockdemo\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\\n".join(record) + "\\n"
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return name
'''


def make_sdist(where: Path) -> Path:
    """lockdemo-1.0.tar.gz: a source-only package whose build needs setuptools."""
    src = where / "src" / "lockdemo-1.0"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools"]
        build-backend = "lockdemo_backend"
        backend-path = ["."]
        [project]
        name = "lockdemo"
        version = "1.0"
        """))
    (src / "lockdemo_backend.py").write_text(BACKEND)
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: lockdemo\nVersion: 1.0\n")
    out = where / "index" / "lockdemo-1.0.tar.gz"
    with tarfile.open(out, "w:gz") as t:
        t.add(src, arcname="lockdemo-1.0")
    return out


@pytest.fixture
def local_index(tmp_path):
    """A find-links directory with the bundled pip and setuptools wheels and lockdemo's
    sdist, a lock over them, and a venv without setuptools (as Python 3.12's venvs are)."""
    bundled = Path(ensurepip.__file__).parent / "_bundled"
    wheels = {w.name.split("-")[0]: w for w in bundled.glob("*.whl")}
    assert {"pip", "setuptools"} <= set(wheels), f"ensurepip bundles {sorted(wheels)}"
    index = tmp_path / "index"
    index.mkdir()
    for w in wheels.values():
        (index / w.name).write_bytes(w.read_bytes())
    sdist = make_sdist(tmp_path)
    entries = {n: (w.name.split("-")[1], sha256(index / w.name)) for n, w in wheels.items()
               if n in ("pip", "setuptools")}
    entries["lockdemo"] = ("1.0", sha256(sdist))
    lock = tmp_path / "demo.lock"
    lock.write_text("".join(f"{n}=={v} \\\n    --hash=sha256:{h}\n    # via test\n"
                            for n, (v, h) in sorted(entries.items())))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index),
               PIP_NO_CACHE_DIR="1")
    return {"lock": lock, "venv": env_dir, "py": py, "env": env, "entries": entries}


def install_lock(ix, lock: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "install-lock"), str(ix["venv"]), str(lock)],
                          env=ix["env"], capture_output=True, text=True, timeout=300)


def installed(ix, name: str) -> str | None:
    proc = subprocess.run([ix["py"], "-c", f"import importlib.metadata as m; print(m.version({name!r}))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_install_lock_builds_source_packages_with_the_locked_setuptools(local_index):
    ix = local_index
    proc = install_lock(ix, ix["lock"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # built without isolation (an isolated build would have to fetch setuptools, and there is
    # no index), with the setuptools the lock names
    built = subprocess.run([ix["py"], "-c", "import lockdemo; print(lockdemo.BUILT_WITH_SETUPTOOLS)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert built == ix["entries"]["setuptools"][0] == installed(ix, "setuptools")


def test_install_lock_refuses_a_file_whose_hash_differs(local_index):
    ix = local_index
    tampered = ix["lock"].with_name("tampered.lock")
    tampered.write_text(ix["lock"].read_text().replace(ix["entries"]["lockdemo"][1], "0" * 64))
    proc = install_lock(ix, tampered)
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr
    assert installed(ix, "lockdemo") is None


def test_install_lock_refuses_a_tampered_build_backend(local_index):
    ix = local_index
    tampered = ix["lock"].with_name("tampered.lock")
    tampered.write_text(ix["lock"].read_text().replace(ix["entries"]["setuptools"][1], "0" * 64))
    proc = install_lock(ix, tampered)
    assert proc.returncode != 0 and "DO NOT MATCH THE HASHES" in proc.stderr
    assert installed(ix, "setuptools") is None and installed(ix, "lockdemo") is None


def test_install_lock_refuses_a_lock_without_its_installer(local_index):
    ix = local_index
    version, digest = ix["entries"]["lockdemo"]
    no_tools = ix["lock"].with_name("no-tools.lock")
    no_tools.write_text(f"lockdemo=={version} \\\n    --hash=sha256:{digest}\n")
    proc = install_lock(ix, no_tools)
    assert proc.returncode == 1
    assert "pins no pip or no setuptools (regenerate it: bash scripts/lock)" in proc.stderr
    assert installed(ix, "lockdemo") is None
