"""The balancer's package step for real on this machine (scratch paths, a local package
index of throwaway wheels plus the bundled pip and setuptools, a lock over them): it builds
the venv from exactly the package's lock with hashes, checks on the machine that the venv
holds exactly the locked set, and switches nothing live when any of that fails."""
from __future__ import annotations

import base64
import ensurepip
import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from nodes.payload import ONION_PACKAGE_DIR, onion_package_tarball
from nodes.scripts import ONION_LOCK, package_script


def _wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel `name` (one module, `VERSION`) that requires `requires`."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    out = index / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lock(entries: dict[str, tuple[str, str]]) -> str:
    """A lock as bash scripts/lock writes it: NAME==VERSION, --hash lines, # via comments."""
    return "# test lock\n" + "".join(f"{n}=={v} \\\n    --hash=sha256:{h}\n    # via test\n"
                                     for n, (v, h) in sorted(entries.items()))


class Machine:
    """Scratch paths for /opt/onionstack, stand-ins for cloud-init and systemctl, and pip
    pointed at the local index only."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path
        self.index = tmp_path / "index"
        self.index.mkdir()
        bundled = Path(ensurepip.__file__).parent / "_bundled"
        self.entries = {}
        for wheel in bundled.glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            if name in ("pip", "setuptools"):
                shutil.copy(wheel, self.index)
                self.entries[name] = (version, _sha(self.index / wheel.name))
        assert set(self.entries) == {"pip", "setuptools"}
        self.entries["alpha"] = ("1.0", _sha(_wheel(self.index, "alpha", "1.0", ("beta",))))
        self.entries["beta"] = ("2.0", _sha(_wheel(self.index, "beta", "2.0")))
        self.gamma = _wheel(self.index, "gamma", "1.0")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "cloud-init").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'systemctl.log'}\n"
                                           "[ \"$1\" = is-active ] && exit 3\nexit 0\n")
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        self.env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
                        PIP_FIND_LINKS=str(self.index), PIP_NO_CACHE_DIR="1")
        self.venv = tmp_path / "opt" / "venv"
        self.lib = tmp_path / "opt" / "lib"

    def deploy(self, lock_text: str) -> subprocess.CompletedProcess:
        """The step as it runs on the balancer: the package (with `lock_text` as its lock)
        copied as base64, then the rendered script."""
        package = self.root / "pkg" / "onion"
        shutil.rmtree(package.parent, ignore_errors=True)
        shutil.copytree(ONION_PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
        (package.parent / ONION_LOCK).write_text(lock_text)
        copied = self.root / "onionstack-onion.tar.gz.b64"
        copied.write_text(onion_package_tarball(package))
        script = package_script(str(copied), venv=str(self.venv), package_lib=str(self.lib), imports=("onion",))
        return subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=600,
                              cwd=self.root)

    def python(self, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], env=self.env, capture_output=True,
                              text=True, timeout=60, cwd=self.root)  # not the repo: its onion/ would win

    def installed(self) -> set[str]:
        out = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "freeze", "--all"], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return {line.lower() for line in out.split()}


@pytest.fixture
def machine(tmp_path):
    return Machine(tmp_path)


@pytest.mark.tools
def test_the_venv_is_built_from_exactly_the_lock_and_checked_again_on_every_run(machine):
    lock = _lock(machine.entries)
    proc = machine.deploy(lock)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the venv path is a link to the venv of this lock, holding exactly the locked set
    target = Path(os.readlink(machine.venv))
    assert target.parent == machine.venv.with_name("venvs")
    assert target.name == hashlib.sha256(lock.encode()).hexdigest()[:16]
    assert machine.installed() == {f"{n}=={v}" for n, (v, _) in machine.entries.items()}
    # the package from the same copy is live and found by the venv's python
    check = machine.python("import alpha, beta, onion; print(onion.__file__)")
    assert check.returncode == 0 and check.stdout.strip() == str(machine.lib / "onion" / "__init__.py")
    # Same lock again: the venv is kept (not rebuilt) and checked again.
    inode = target.stat().st_ino
    proc = machine.deploy(lock)
    assert proc.returncode == 0, proc.stderr
    assert Path(os.readlink(machine.venv)).stat().st_ino == inode


@pytest.mark.tools
def test_a_package_the_lock_does_not_name_fails_the_step_naming_it(machine):
    lock = _lock(machine.entries)
    assert machine.deploy(lock).returncode == 0
    # something installed into the live venv behind the deploy's back
    subprocess.run([str(machine.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    str(machine.gamma)], env=machine.env, check=True, timeout=120)
    proc = machine.deploy(lock)
    assert proc.returncode == 1
    assert "does not hold exactly onion/requirements.lock" in proc.stderr
    assert "installed, not locked: gamma==1.0" in proc.stderr


@pytest.mark.tools
def test_a_file_whose_hash_differs_is_refused_and_the_live_venv_stays(machine):
    lock = _lock(machine.entries)
    assert machine.deploy(lock).returncode == 0
    live = os.readlink(machine.venv)
    before = (machine.lib / "onion" / "requirements.lock").read_text()
    alpha2 = _wheel(machine.index, "alpha", "1.1", ("beta",))
    tampered = dict(machine.entries, alpha=("1.1", "0" * 64))
    assert _sha(alpha2) != "0" * 64
    proc = machine.deploy(_lock(tampered))
    assert proc.returncode != 0 and "DO NOT MATCH THE HASHES" in proc.stderr
    assert os.readlink(machine.venv) == live
    assert (machine.lib / "onion" / "requirements.lock").read_text() == before  # old package still live


@pytest.mark.tools
def test_a_lock_missing_a_dependency_fails_pip_check_and_switches_nothing(machine):
    """--no-deps installs only what the lock names: a lock without one of alpha's
    dependencies installs fine, and the check on the machine refuses it."""
    complete = _lock(machine.entries)
    assert machine.deploy(complete).returncode == 0
    live = os.readlink(machine.venv)
    partial = {n: e for n, e in machine.entries.items() if n != "beta"}
    proc = machine.deploy(_lock(partial))
    assert proc.returncode == 1
    assert "venv" in proc.stderr and "is incomplete" in proc.stderr and "alpha 1.0 requires beta" in proc.stderr
    assert os.readlink(machine.venv) == live
