"""The lab's balancer: its own tor on the private network (ControlPort + SocksPort, like the
AWS balancer's) and either onionstack's balancer core (`python -m onion run`) or, as the
baseline, OnionBalance 0.2.4 from PyPI in its own venv (`<repo>/.lab/ob-venv`, never the
project's venv).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from lab.heartbeat import Heartbeat
from lab.ports import PortAllocator
from lab.procs import ProcessRegistry
from lab.tornet import TorNetwork, TorNode, check_alive, consensus_fingerprints, controller, bootstrap_progress

KINDS = ("onion", "onionbalance")
ONIONBALANCE_VERSION = "0.2.4"
# OnionBalance 0.2.4's --is-testnet hard-codes chutney's timing: it works only there.
ONIONBALANCE_VOTING_INTERVAL = 20


def balancer_tor_lines(kind: str, metrics_port: int | None = None) -> list[str]:
    """Extra torrc lines for the balancer's tor: onionstack's come from the same templates
    the AWS balancer's torrc includes (nodes/templates/balancer/consensus-timing.torrc.j2,
    and metrics.torrc.j2 for a MetricsPort on 127.0.0.1); OnionBalance's baseline runs with
    tor's defaults, as its docs set it up."""
    if kind != "onion":
        return []
    from nodes.render import render_template

    text = render_template("balancer/consensus-timing.torrc.j2")
    if metrics_port:
        text += render_template("balancer/metrics.torrc.j2", port=metrics_port)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def wait_balancer_tor_ready(net: TorNetwork, procs: ProcessRegistry, node: TorNode,
                            timeout: float = 120.0, progress=None) -> None:
    """Gate (notes): bootstrapped, and it holds every HSDir relay and its microdescriptor,
    so the balancer's first HSDir computation sees the whole ring. `progress` gets a
    heartbeat line every ~15 s while it waits."""
    want = {n.fingerprint for n in net.relays}
    beat = Heartbeat(progress, "balancer tor")
    deadline = time.monotonic() + timeout
    while True:
        check_alive(procs, [node])
        percent = bootstrap_progress(node)
        listed = consensus_fingerprints(node) & want if percent == 100 else set()
        missing = None
        if percent == 100 and listed == want:
            with controller(node) as ctl:
                missing = [fp for fp in want if not _has_microdesc(ctl, fp)]
            if not missing:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"balancer tor not ready within {timeout:.0f} s; see "
                               f"{procs.log_path(node.process_name)}")
        beat.beat(f"bootstrap {max(percent, 0)} %, {len(listed)}/{len(want)} relays in its consensus"
                  + (f", {len(missing)} microdescriptors missing" if missing else ""))
        time.sleep(0.5)


def _has_microdesc(ctl, fingerprint: str) -> bool:
    try:
        return bool(ctl.get_info(f"md/id/{fingerprint}", ""))
    except Exception:  # noqa: BLE001 - "not found" comes back as an error reply
        return False


def write_onion_config(path: Path, *, control_port: int, socks_port: int, state_dir: Path,
                       key_file: Path, instances: list[str], probe_interval: float = 10.0,
                       probe_timeout: float = 15.0, probe_failures: int = 2,
                       metrics: dict[str, str] | None = None, extra: dict | None = None,
                       workers: dict[str, str] | None = None) -> Path:
    """onionstack's balancer YAML (docs/balancer.md). Probes are tighter than the AWS
    defaults: on 127.0.0.1 a live instance answers within a few seconds, and a dead worker
    should be dropped within 60 s (2 failures x <= 15 s + interval).
    `metrics`: instance address -> its tor's MetricsPort URL (load-aware intro selection)."""
    config = {
        "publish": True,
        "control": {"port": control_port},
        "socks_port": socks_port,
        "state_dir": str(state_dir),
        "probe": {"port": 80, "interval": probe_interval, "timeout": probe_timeout,
                  "failures": probe_failures},
        "frontends": [{"name": "lab", "key_file": str(key_file),
                       "instances": [{"address": f"{a}.onion", **({"metrics": metrics[a]} if a in (metrics or {}) else {}),
                                      **({"worker": workers[a]} if a in (workers or {}) else {})}
                                     for a in instances]}],
    }
    config.update(extra or {})  # metrics, frontend_probe, readback, standby, ... (onion/config.py)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_onionbalance_config(path: Path, *, key_file: Path, instances: list[str]) -> Path:
    config = {"services": [{"key": str(key_file), "instances": [
        {"address": f"{a}.onion", "name": f"instance{i}"} for i, a in enumerate(instances)]}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ensure_onionbalance(venv: Path) -> Path:
    """OnionBalance 0.2.4 in its own venv (created once, then reused); returns its script."""
    script = venv / "bin" / "onionbalance"
    if script.exists():
        return script
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                    f"onionbalance=={ONIONBALANCE_VERSION}"], check=True)
    return script


def onion_command(config: Path, control_port: int) -> list[str]:
    return [sys.executable, "-m", "onion", "run", "--config", str(config),
            "--control-port", str(control_port)]


def onionbalance_command(script: Path, config: Path, control_port: int) -> list[str]:
    return [str(script), "--is-testnet", "-c", str(config), "-i", "127.0.0.1",
            "-p", str(control_port), "-v", "info"]
