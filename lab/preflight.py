"""What `python -m lab up` needs on this machine, checked before anything starts.

A newcomer who runs the lab without `bash scripts/setup` gets one message that names every
missing piece, what the lab uses it for, and the command that installs it, instead of a
traceback from the first tor or nginx that fails to start half way through.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

# Where Debian's libnginx-mod-http-subs-filter puts the module the worker template loads
# (nodes/render.py NginxTuning.modules_dir, which the lab keeps).
SUBS_FILTER_MODULE = "/usr/lib/nginx/modules/ngx_http_subs_filter_module.so"
SETUP_HINT = ("Run `bash scripts/setup --demo` (installs what the lab needs; plain `bash scripts/setup` "
              "also installs what the tests need), then start the lab with .venv/bin/python -m lab up")


@dataclass(frozen=True)
class Need:
    name: str          # a command on PATH, an absolute file path, or a Python module
    kind: str          # "command" | "file" | "python"
    package: str       # what provides it (a Debian package, or the venv)
    why: str

    def present(self) -> bool:
        if self.kind == "command":
            return shutil.which(self.name) is not None
        if self.kind == "file":
            return os.path.exists(self.name)
        return importlib.util.find_spec(self.name) is not None


NEEDS: tuple[Need, ...] = (
    Need("tor", "command", "Debian package tor", "every node of the private Tor network"),
    Need("tor-gencert", "command", "Debian package tor", "the directory authorities' keys"),
    Need("nginx", "command", "Debian package nginx", "each worker's rewriting proxy"),
    Need(SUBS_FILTER_MODULE, "file", "Debian package libnginx-mod-http-subs-filter",
         "nginx's subs_filter, which rewrites the origin's names to the onion's"),
    Need("curl", "command", "Debian package curl", "requests through the lab client's SocksPort"),
    *(Need(module, "python", "the project's venv", "the lab's Python code")
      for module in ("stem", "nacl", "cryptography", "numpy", "pybase64", "yaml", "jinja2")),
)


def missing(needs: tuple[Need, ...] = NEEDS) -> list[Need]:
    return [n for n in needs if not n.present()]


def report(absent: list[Need]) -> str:
    """The message for `lab up` when something is missing ('' when nothing is)."""
    if not absent:
        return ""
    what = {"command": "command not found", "file": "file not found", "python": "Python module not found"}
    width = max(len(n.name) for n in absent)
    lines = ["this machine lacks what the lab needs (nothing was started):"]
    for n in absent:
        lines.append(f"  {n.name:{width}}  {what[n.kind]} ({n.package}): {n.why}")
    lines.append(SETUP_HINT)
    return "\n".join(lines)
