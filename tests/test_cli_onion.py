"""The `onion` command line as a user meets it: --version, every command's --help (a
description and examples), OnionBalance's short options on `run`, and import-tconf's two
outputs (a new stack file, never an existing one overwritten; or `pulumi config set` lines)."""
from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import onion
from onion.__main__ import build_parser, main
from onion.keys import IdentityKey

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "eotk"
COMMANDS = ["run", "status", "ship-metrics", "maps", "schema", "keygen", "address", "import", "import-tconf", "drained"]


def onion_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onion", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_version():
    r = onion_cli("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"onion {onion.__version__}")


def test_every_command_is_listed_with_its_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS
    r = onion_cli("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert f"\n    {name}" in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_a_description_and_examples(command):
    r = onion_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    usage, _, rest = r.stdout.partition("\n\n")
    assert usage.startswith(f"usage: python -m onion {command}")
    description = rest.split("\n\n", 1)[0]
    assert len(description.split()) >= 8 and not description.startswith(("positional", "options")), description
    assert "\nexamples:\n" in r.stdout
    examples = r.stdout.split("\nexamples:\n", 1)[1].splitlines()
    assert any(line.strip().startswith(f"onion {command} ") for line in examples), examples


def test_example_lines_parse(tmp_path):
    """Every example line of every --help is a command line the parser accepts."""
    parser = build_parser()
    for command in COMMANDS:
        r = onion_cli(command, "--help")
        for line in r.stdout.split("\nexamples:\n", 1)[1].splitlines():
            line = line.split("  #", 1)[0].strip()
            if not line.startswith("onion "):
                continue
            words = shlex.split(line.split("|")[0].split(">")[0])
            parser.parse_args(words[1:])  # SystemExit (exit 2) on a bad example


def test_run_takes_onionbalances_short_options():
    args = build_parser().parse_args(["run", "-c", "config.yaml", "-p", "9051", "-v", "warning"])
    assert (args.config, args.control_port, args.log_level) == ("config.yaml", 9051, "warning")
    args = build_parser().parse_args(["run", "-c", "config.yaml", "-s", "/run/tor/control"])
    assert args.control_socket == "/run/tor/control"
    args = build_parser().parse_args(["maps", "-c", "b.yaml"])
    assert args.config == "b.yaml"


def test_run_dash_c_reads_an_onionbalance_config_yaml(tmp_path, capsys):
    """`onion run -c config.yaml` goes through the same loader as --config: a key readable by
    others is refused with the loader's one-line message before anything starts."""
    key = IdentityKey.generate()
    key.write_pem(tmp_path / "site.key")
    (tmp_path / "site.key").chmod(0o644)
    inst = IdentityKey.generate().hostname
    (tmp_path / "config.yaml").write_text(f"services:\n- key: site.key\n  instances:\n  - address: {inst}\n")
    assert main(["run", "-c", str(tmp_path / "config.yaml"), "-p", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("onion run: frontend 'site'") and "chmod 600" in err
    (tmp_path / "site.key").chmod(0o600)
    assert main(["maps", "-c", str(tmp_path / "config.yaml")]) == 0
    assert capsys.readouterr().out.strip() == f"site {key.hostname} {inst}"


# ---------------------------------------------------------------- import-tconf outputs

def test_import_tconf_writes_a_new_stack_file_named_after_the_stack(tmp_path):
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", "--stack", "eotk",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    written = tmp_path / "Pulumi.eotk.yaml"
    config = yaml.safe_load(written.read_text())["config"]
    assert config["onionstack:sites"] == [{"name": "torproject-org", "domain": "torproject.org", "https": "selfSigned"}]
    assert f"wrote {written.name} (a new stack file)" in r.stderr
    assert "python -m onion import keys/torproject-org | pulumi config set --stack eotk" in r.stderr


def test_import_tconf_never_overwrites_an_existing_stack_file(tmp_path):
    existing = tmp_path / "Pulumi.prod.yaml"
    existing.write_text("secretsprovider: awskms://alias/x\nencryptedkey: abc\nconfig: {}\n")
    before = existing.read_bytes()
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", "--stack", "prod",
                  cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("onion import-tconf: Pulumi.prod.yaml already exists: refusing to overwrite it")
    assert "--print-commands" in r.stderr
    assert existing.read_bytes() == before
    assert not (tmp_path / "keys").exists()  # refused before anything was written
    # the same through --out, and through a symlink to the file
    (tmp_path / "link.yaml").symlink_to(existing)
    for out in (existing, tmp_path / "link.yaml"):
        r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", "--out", str(out),
                      cwd=tmp_path)
        assert r.returncode == 2 and f"{out} already exists" in r.stderr
    assert existing.read_bytes() == before


def test_import_tconf_asks_where_the_config_goes(tmp_path):
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", cwd=tmp_path)
    assert r.returncode == 2
    assert "--stack NAME writes a new Pulumi.NAME.yaml here, --out FILE" in r.stderr
    assert "--print-commands" in r.stderr and list(tmp_path.iterdir()) == []
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", "--out",
                  str(tmp_path / "no" / "such" / "Pulumi.x.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--stack", "a b", cwd=tmp_path)
    assert r.returncode == 2 and "a stack name has letters" in r.stderr


def test_import_tconf_fully_qualified_stack_writes_the_stack_files_name(tmp_path):
    r = onion_cli("import-tconf", str(FIXTURES / "tpo.tconf"), "--keys-dir", "keys", "--stack",
                  "acme/onionstack/eotk", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "Pulumi.eotk.yaml").is_file()


FAKE_PULUMI = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": "" if sys.stdin.isatty() else sys.stdin.read()}}) + "\\n")
"""


def test_import_tconf_print_commands_set_what_the_stack_file_would_hold(tmp_path):
    """The printed lines, run by a real shell against a `pulumi` that records its arguments,
    set the same config the stack file holds and store each site's key through a pipe."""
    from infra.config import decode_raw

    r = onion_cli("import-tconf", str(FIXTURES / "wikipedia.tconf"), "--keys-dir", "keys", "--out",
                  str(tmp_path / "Pulumi.file.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    expected = yaml.safe_load((tmp_path / "Pulumi.file.yaml").read_text())["config"]

    r = onion_cli("import-tconf", str(FIXTURES / "wikipedia.tconf"), "--keys-dir", "keys", "--stack", "prod",
                  "--print-commands", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "Pulumi.prod.yaml").exists()
    script = tmp_path / "import.sh"
    script.write_text(r.stdout)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pulumi.log"
    (bindir / "pulumi").write_text(FAKE_PULUMI.format(python=sys.executable, log=str(log)))
    (bindir / "pulumi").chmod(0o755)
    (bindir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bindir / "python").chmod(0o755)
    run = subprocess.run(["sh", "-eu", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    plain = {c["argv"][4]: decode_raw(c["argv"][4].split(":", 1)[1], c["argv"][5])
             for c in calls if "--secret" not in c["argv"]}
    assert all(c["argv"][:4] == ["config", "set", "--stack", "prod"] for c in calls)
    assert plain == expected
    secrets = {c["argv"][-1]: c["stdin"].strip() for c in calls if "--secret" in c["argv"]}
    sites = [s["name"] for s in expected["onionstack:sites"]]
    assert sorted(secrets) == sorted(f"masterKeys.{s}" for s in sites)
    for s in sites:
        key = IdentityKey.from_config_string(secrets[f"masterKeys.{s}"])
        assert key.address == IdentityKey.from_hs_dir(tmp_path / "keys" / s).address
        assert key.to_config_string().split(":", 1)[1] not in r.stdout + r.stderr  # only through pipes
    assert stat.S_IMODE((tmp_path / "keys" / sites[0]).stat().st_mode) == 0o700
