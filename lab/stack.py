"""The lab as a whole: the same parts that `__main__.py` composes on AWS, on 127.0.0.1.

Order (as in the softmap runbook): private Tor network -> origin -> frontend key -> workers
(tor instances + nginx, from the worker templates) -> balancer (its tor + the balancer
core, or OnionBalance 0.2.4 as the baseline). Everything lives under one state directory;
`lab.json` there records what `status` and `down` need.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lab import origin as origin_mod
from lab.ports import PortAllocator, wait_for_port
from lab.procs import ProcessRegistry
from lab.tornet import TorNetwork

Progress = Callable[[str], None]

# Subdirectories `up` may clear from an earlier run; anything else (ob-venv) is kept.
RUN_SUBDIRS = ("net", "pids", "logs", "origin", "workers", "balancer", "keys")


@dataclass
class Lab:
    state_dir: Path
    procs: ProcessRegistry
    ports: PortAllocator
    voting_interval: int = 20
    progress: Progress = print
    net: TorNetwork | None = None
    info: dict = field(default_factory=dict)  # persisted as lab.json

    @classmethod
    def create(cls, state_dir: Path, *, tie_to_parent: bool = False, voting_interval: int = 20,
               progress: Progress = print) -> "Lab":
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        procs = ProcessRegistry(state_dir, tie_to_parent=tie_to_parent)
        if any(procs.is_running(n) for n in procs.names()):
            raise RuntimeError(f"a lab is already running in {state_dir}: "
                               f"run `python -m lab down --state-dir {state_dir}` first")
        for sub in RUN_SUBDIRS:
            shutil.rmtree(state_dir / sub, ignore_errors=True)
        (state_dir / "lab.json").unlink(missing_ok=True)
        lab = cls(state_dir=state_dir, procs=procs, ports=PortAllocator(),
                  voting_interval=voting_interval, progress=progress)
        lab.info = {"state_dir": str(state_dir), "voting_interval": voting_interval}
        lab.tie_to_parent = tie_to_parent
        return lab

    @classmethod
    def load(cls, state_dir: Path) -> "Lab":
        state_dir = Path(state_dir).resolve()
        path = state_dir / "lab.json"
        if not path.exists():
            raise FileNotFoundError(f"no lab in {state_dir} (no lab.json): run `python -m lab up`")
        lab = cls(state_dir=state_dir, procs=ProcessRegistry(state_dir), ports=PortAllocator())
        lab.info = json.loads(path.read_text())
        lab.voting_interval = lab.info["voting_interval"]
        if (state_dir / "network.json").exists():
            lab.net = TorNetwork.load(state_dir)
        return lab

    def save(self) -> None:
        (self.state_dir / "lab.json").write_text(json.dumps(self.info, indent=2) + "\n")

    # ---------------------------------------------------------------- steps
    def start_network(self) -> None:
        owner = self.procs.start_anchor() if getattr(self, "tie_to_parent", False) else None
        self.net = TorNetwork.create(self.state_dir, self.ports,
                                     voting_interval=self.voting_interval, owner_pid=owner)
        self.info["socks_port"] = self.net.client.socks_port
        self.save()
        took = self.net.start(self.procs, self.progress)
        self.info["network_seconds"] = round(took, 1)
        self.save()

    def start_origin(self, listeners: int, domain: str = origin_mod.DEFAULT_DOMAIN) -> None:
        files = origin_mod.make_test_ca(self.state_dir, domain)
        ports = [self.ports.take() for _ in range(listeners)]
        self.procs.start("origin", [
            os.environ.get("LAB_PYTHON", _python()), "-m", "lab.origin",
            "--state-dir", str(self.state_dir), "--domain", domain,
            "--ports", ",".join(map(str, ports))], cwd=_repo_root())
        for port in ports:
            wait_for_port(port, 15, "origin")
        self.info["origin"] = {"domain": domain, "ports": ports, "ca": str(files["ca"])}
        self.save()
        self.progress(f"origin: https://{domain} on 127.0.0.1 ports {ports} (test CA {files['ca']})")

    # ---------------------------------------------------------------- teardown / status
    def down(self) -> list[str]:
        stopped = self.procs.stop_all()
        self.info["stopped_at"] = time.time()
        if (self.state_dir / "lab.json").exists():
            self.save()
        return stopped

    def status_lines(self) -> list[str]:
        lines = [f"state dir: {self.state_dir}"]
        running = [n for n in self.procs.names() if self.procs.is_running(n)]
        stopped = [n for n in self.procs.names() if n not in running]
        lines.append(f"processes running: {len(running)}" +
                     (f" (not running: {', '.join(stopped)})" if stopped else ""))
        if self.net:
            for node, state in self.net.status(self.procs):
                lines.append(f"  tor {node.nickname:10} {node.role:9} control 127.0.0.1:"
                             f"{node.control_port}  {state}")
        if "origin" in self.info:
            o = self.info["origin"]
            lines.append(f"origin: https://{o['domain']} ports {o['ports']} "
                         f"({'running' if self.procs.is_running('origin') else 'stopped'})")
        if "frontend" in self.info:
            lines.append(f"frontend: {self.info['frontend']}")
            lines.append(f"try: {self.curl_line()}")
        return lines

    def curl_line(self) -> str:
        return (f"curl --socks5-hostname 127.0.0.1:{self.info['socks_port']} "
                f"http://{self.info['frontend']}/")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _python() -> str:
    import sys

    return sys.executable
