"""`pip install .` of the `onion` package (pyproject.toml) into a fresh venv, the way the
balancer installs it: from a directory holding only pyproject.toml and onion/ (what the
balancer is shipped), `--no-deps` (its dependencies come from the locked set),
`--no-build-isolation --no-index` (nothing fetched: the locked setuptools is already in the
venv). Here the fresh venv reaches the shared venv's packages (the dependencies, pip and
setuptools) through a .pth file, so the test needs no network; what it runs is the
installed `onion` command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import onion

REPO = Path(__file__).resolve().parent.parent


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def normalized(reqs) -> set[str]:
    return {str(Requirement(r)).lower() for r in reqs}


def test_version_and_dependencies_have_one_source_each():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["dynamic"] == ["version", "dependencies"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]
    assert dynamic == {"version": {"attr": "onion.__version__"},
                       "dependencies": {"file": ["onion/requirements.txt"]}}
    assert project["scripts"] == {"onion": "onion.__main__:main"}


def test_the_build_backend_is_the_locked_one():
    """The balancer (and the offline install below) builds with --no-build-isolation, using
    the setuptools both lock files pin from requirements-build.txt."""
    backend = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    locked = normalized(requirement_lines(REPO / "requirements-build.txt"))
    assert normalized(backend) <= locked


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the package installed from the checkout; returns its bin/."""
    root = tmp_path_factory.mktemp("pkg")
    # The source as the balancer gets it: pyproject.toml and onion/ (setuptools writes its
    # build/ and *.egg-info there, not into the checkout).
    src = root / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "onion", src / "onion", ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    # Without pip of its own: ensurepip would also bring an old setuptools that shadows the
    # locked one; pip and setuptools come from the shared venv like the dependencies.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "shared-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                             "--no-build-isolation", "--no-index", "--quiet", "."],
                            cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def run_installed(bindir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bindir}:{env.get('PATH', '')}"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_installed_onion_command_works_outside_the_checkout(installed, tmp_path):
    r = run_installed(installed, "onion", "--version", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, f"onion {onion.__version__}"), r.stderr
    # the command runs the installed copy, not the checkout's
    r = run_installed(installed, "python", "-c", "import onion; print(onion.__file__)", cwd=tmp_path)
    assert r.stdout.strip().startswith(str(installed.parent)), r.stdout

    r = run_installed(installed, "onion", "keygen", "--out", "keys/news", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hostname = r.stdout.strip()
    assert hostname.endswith(".onion") and (tmp_path / "keys/news/hostname").read_text().strip() == hostname
    r = run_installed(installed, "onion", "address", "keys/news", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, hostname), r.stderr

    r = run_installed(installed, "onion", "run", "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: onion run") and "examples:" in r.stdout


def test_installed_package_ships_the_config_schema(installed, tmp_path):
    r = run_installed(installed, "onion", "schema", "--path", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path.is_file() and path.is_relative_to(installed.parent)
    assert path.read_text() == (REPO / "onion" / "schema" / "balancer.schema.json").read_text()


def test_installed_metadata_names_no_pulumi(installed, tmp_path):
    r = run_installed(installed, "python", "-c",
                      "import importlib.metadata as m; d = m.distribution('onionstack-onion');"
                      "print(d.version); print('\\n'.join(d.requires or []))", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    version, *requires = r.stdout.strip().splitlines()
    assert version == onion.__version__
    assert normalized(requires) == normalized(requirement_lines(REPO / "onion" / "requirements.txt"))
