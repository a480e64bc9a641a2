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
import sysconfig
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


def _repack(dist_name: str, index: Path) -> tuple[str, Path]:
    """A wheel of `dist_name` as installed in this venv (its RECORD's files, __pycache__ and
    the installer's marks left out): the lock's setuptools (>= 70.1, bdist_wheel built in),
    which the balancer builds the package with, where ensurepip bundles an older one."""
    from importlib.metadata import distribution

    dist = distribution(dist_name)
    version = dist.version
    info = f"{dist_name}-{version}.dist-info"
    out = index / f"{dist_name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(dist.files, key=str):
            name = str(f)
            if "__pycache__" in name or name.startswith("..") or name in (
                    f"{info}/RECORD", f"{info}/INSTALLER", f"{info}/REQUESTED", f"{info}/direct_url.json"):
                continue
            data = Path(f.locate()).read_bytes()
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        z.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    return version, out


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
        for wheel in bundled.glob("pip-*.whl"):
            name, version = wheel.name.split("-")[:2]
            shutil.copy(wheel, self.index)
            self.entries[name] = (version, _sha(self.index / wheel.name))
        version, wheel = _repack("setuptools", self.index)
        self.entries["setuptools"] = (version, _sha(wheel))
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
        self.command = tmp_path / "usr-local-bin" / "onion"  # where /usr/local/bin/onion would be
        self.command.parent.mkdir()

    def deploy(self, lock_text: str) -> subprocess.CompletedProcess:
        """The step as it runs on the balancer: the package (with `lock_text` as its lock)
        copied as base64, then the rendered script."""
        package = self.root / "pkg" / "onion"
        shutil.rmtree(package.parent, ignore_errors=True)
        shutil.copytree(ONION_PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
        (package.parent / ONION_LOCK).write_text(lock_text)
        copied = self.root / "onionstack-onion.tar.gz.b64"
        copied.write_text(onion_package_tarball(package))
        script = package_script(str(copied), venv=str(self.venv), package_lib=str(self.lib), imports=("onion",),
                                command_link=str(self.command))
        return subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=600,
                              cwd=self.root)

    def python(self, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], env=self.env, capture_output=True,
                              text=True, timeout=60, cwd=self.root)  # not the repo: its onion/ would win

    def installed(self) -> set[str]:
        # (`pip list`: freeze names a package installed from a file "name @ file://...")
        out = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze",
                              "--disable-pip-version-check"], env=self.env,
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
    # exactly the locked set, and the package itself, installed by pip from its pyproject.toml
    import onion

    assert machine.installed() == ({f"{n}=={v}" for n, (v, _) in machine.entries.items()}
                                   | {f"onionstack-onion=={onion.__version__}"})
    check = machine.python("import alpha, beta, onion, sysconfig; "
                           "print(onion.__file__.startswith(sysconfig.get_paths()['purelib']))")
    assert check.returncode == 0 and check.stdout.strip() == "True", check.stderr
    # the `onion` command, in the venv and linked where root's PATH finds it
    assert os.readlink(machine.command) == str(machine.venv / "bin" / "onion")
    # (its dependencies here are this venv's: the scratch lock holds stand-ins, not stem & co.;
    # `onion` itself still comes from the scratch venv, which the first line checks)
    shared = {**machine.env, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    where = subprocess.run([str(machine.venv / "bin" / "python"), "-c", "import onion; print(onion.__file__)"],
                           env=shared, capture_output=True, text=True, timeout=60, cwd=machine.root)
    assert Path(where.stdout.strip()).resolve().is_relative_to(machine.venv.resolve()), where
    version = subprocess.run([str(machine.command), "--version"], env=shared, capture_output=True, text=True,
                             timeout=60, cwd=machine.root)
    assert version.returncode == 0 and version.stdout.strip() == f"onion {onion.__version__}", version.stderr
    # the package tree went live as copied: no build leftovers in it
    assert not list(machine.lib.glob("*.egg-info")) and not (machine.lib / "build").exists()
    assert (machine.lib / "onion" / "__init__.py").is_file() and (machine.lib / "pyproject.toml").is_file()
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


def test_the_balancers_pyproject_is_the_checkouts_less_the_dependencies():
    """What the balancer builds the package from (nodes/templates/balancer/pyproject.toml.j2)
    and `pip install .` in a checkout make the same distribution: name, version, command,
    packages, data, Python and build backend; only the dependencies are the lock's there."""
    import tomllib

    import onion
    from nodes.payload import onion_pyproject

    ours = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    theirs = tomllib.loads(onion_pyproject())
    assert theirs["build-system"] == ours["build-system"]
    for key in ("name", "description", "requires-python", "scripts"):
        assert theirs["project"][key] == ours["project"][key], key
    assert theirs["project"]["version"] == onion.__version__ and theirs["project"]["dependencies"] == []
    assert theirs["tool"]["setuptools"]["packages"] == ours["tool"]["setuptools"]["packages"]
    assert theirs["tool"]["setuptools"]["package-data"] == ours["tool"]["setuptools"]["package-data"]
