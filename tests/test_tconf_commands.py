"""`onion import-tconf --print-commands` prints a `sh` script; run here against a fake
`pulumi` that records every call (its arguments and what it read on stdin). A key that
cannot be read must stop the script before anything is set: a plain
`onion import DIR | pulumi config set --secret ...` pipeline hands pulumi an empty stdin
when the import fails, and pulumi stores that as the key."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onion import tconf
from onion.__main__ import build_parser
from onion.keys import IdentityKey

REPO = Path(__file__).resolve().parent.parent

FAKE_PULUMI = """#!/bin/sh
# Records one call per line: the arguments, then what came on stdin (hex, so newlines show).
{ printf 'argv'; for a in "$@"; do printf ' %s' "$a"; done
  printf ' | stdin '; od -An -v -tx1 | tr -d ' \\n'; printf '\\n'; } >> "$PULUMI_LOG"
"""


@pytest.fixture
def script(tmp_path):
    """(the printed script, the keys dir, a runner of the script with a fake pulumi)."""
    conf = tmp_path / "site.tconf"
    conf.write_text("set project news\nhardmap %NEW_V3_ONION% example.com\nhardmap %NEW_V3_ONION% example.org\n")
    keys = tmp_path / "keys"
    args = build_parser().parse_args(["import-tconf", str(conf), "--keys-dir", str(keys), "--stack", "prod",
                                      "--print-commands"])
    out, err = io.StringIO(), io.StringIO()
    assert tconf.run(args, out=out, err=err) == 0
    path = tmp_path / "import.sh"
    path.write_text(out.getvalue())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pulumi").write_text(FAKE_PULUMI)
    (bindir / "pulumi").chmod(0o755)
    (bindir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')   # the script's `python -m onion import`
    (bindir / "python").chmod(0o755)
    log = tmp_path / "pulumi.log"

    def run() -> tuple[subprocess.CompletedProcess, list[str]]:
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
               "PULUMI_LOG": str(log)}
        done = subprocess.run(["sh", str(path)], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        calls = log.read_text().splitlines() if log.exists() else []
        return done, calls

    return path.read_text(), keys, run


def stdin_of(call: str) -> bytes:
    return bytes.fromhex(call.split(" | stdin ", 1)[1])


def test_the_script_stores_each_master_key_through_stdin(script):
    text, keys, run = script
    done, calls = run()
    assert done.returncode == 0, done.stderr
    stored = {c.split("--path ", 1)[1].split(" |")[0]: stdin_of(c) for c in calls if "--secret" in c}
    assert stored == {f"masterKeys.{site}": IdentityKey.from_hs_dir(keys / site).to_config_string().encode() + b"\n"
                      for site in ("example-com", "example-org")}
    assert any(c.startswith("argv config set --stack prod onionstack:sites ") for c in calls)
    assert "ED25519-V3" not in text   # the keys are read when it runs, never written into it


def test_a_key_that_cannot_be_read_stops_the_script_before_anything_is_set(script):
    text, keys, run = script
    (keys / "example-org" / "hs_ed25519_secret_key").write_bytes(b"== ed25519v1-secret: type0 ==\x00\x00\x00")
    done, calls = run()
    assert done.returncode != 0
    assert "example-org" in done.stderr     # onion import says which key
    assert calls == []                      # no pulumi call at all: the stack is unchanged
