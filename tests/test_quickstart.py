"""README's AWS Quickstart, as far as it runs without the Pulumi CLI: every command of its
block is run or emulated in order (`onion keygen` / `onion import` for real, in a scratch
directory; `pulumi config set [--path] [--secret]` into a config as the CLI would store it),
and the program then declares the stack from that config under Pulumi's mocks. A renamed key,
a wrong path or an `onion` option that does not exist fails here."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import mockrun

ROOT = Path(__file__).resolve().parent.parent


def quickstart_aws_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 5)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    (aws,) = [b for b in blocks if "pulumi up" in b]
    return [line.split("  #")[0].strip() for line in aws.splitlines() if line.strip()]


def set_path(config: dict, key: str, value: Any) -> None:
    """`pulumi config set --path KEY VALUE`: `a.b`, `a[0]`, `a[0].b` (lists grow as the CLI's do)."""
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt = parts[i + 1] if not last else None
        empty = [] if nxt is not None and nxt.startswith("[") else {}
        if part.startswith("["):
            index = int(part[1:-1])
            while len(node) <= index:
                node.append(None)
            if last:
                node[index] = value
            else:
                node[index] = node[index] if node[index] is not None else empty
                node = node[index]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, empty)


def test_the_readme_quickstart_makes_a_stack_the_program_declares(tmp_path):
    config: dict[str, Any] = {}
    secrets: set[str] = set()
    ran = []
    for line in quickstart_aws_block():
        for command in line.split(" && "):
            producer, _, consumer = command.partition(" | ")
            argv = shlex.split(consumer or producer)
            stdin = None
            if consumer:  # `.venv/bin/python -m onion import DIR | pulumi config set ...`
                p = shlex.split(producer)
                assert p[:3] == [".venv/bin/python", "-m", "onion"], producer
                out = subprocess.run([sys.executable, "-m", "onion", *p[3:]], cwd=tmp_path, capture_output=True,
                                     text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
                assert out.returncode == 0, out.stderr
                stdin = out.stdout.strip()
            if argv[:3] == [".venv/bin/python", "-m", "onion"]:
                out = subprocess.run([sys.executable, "-m", "onion", *argv[3:]], cwd=tmp_path, capture_output=True,
                                     text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
                assert out.returncode == 0, out.stderr
                ran.append(argv[3])
            elif argv[:3] == ["pulumi", "config", "set"]:
                args = argv[3:]
                path, secret = "--path" in args, "--secret" in args
                rest = [a for a in args if a not in ("--path", "--secret")]
                key, value = rest[0], (rest[1] if len(rest) > 1 else stdin)
                assert value, command
                full = key if ":" in key.split(".")[0].split("[")[0] else f"onionstack:{key}"
                if path:
                    set_path(config, full, value)
                else:
                    config[full] = value
                if secret:
                    secrets.add(full.split(".")[0].split("[")[0])
            else:
                assert argv[0] in ("bash", "pulumi"), command  # setup, stack init, up: not here
    assert ran == ["keygen"]
    assert config["onionstack:sites"] == [{"name": "news", "domain": "example.com"}]
    result = mockrun.run_program(config, secret_keys=sorted(secrets))
    address = (tmp_path / "keys" / "news" / "hostname").read_text().strip()
    assert result.outputs["sites"]["news"]["onionAddress"] == address
    (rule,) = [r for r in result.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
               if r.input("cidrIpv4") == "198.51.100.7/32"]
    assert rule.input("fromPort") == 22
