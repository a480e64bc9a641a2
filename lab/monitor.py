"""A real Prometheus (Debian's `prometheus` binary) scraping the lab's balancers and tors on
127.0.0.1 with the shipped alert rules (monitoring/onionstack.rules.yml): the lab proof of
the metrics and alerts, and what bench/lab.py times detection with.

Jobs as the rules expect them: `onion-balancer` (the cores' /metrics), `tor-balancer` (the
balancer tors' MetricsPorts), `tor-worker` (every worker tor's MetricsPort). Storage in the
lab's state dir; the process is one of the lab's (stopped with it).
"""
from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parent.parent / "monitoring" / "onionstack.rules.yml"


@dataclass
class Prometheus:
    port: int
    name: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            return json.loads(resp.read())

    def query(self, expr: str) -> list[dict]:
        return self._get("/api/v1/query", query=expr)["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def firing(self, alertname: str) -> list[dict]:
        alerts = self._get("/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"].get("alertname") == alertname and a["state"] == "firing"]

    def targets_up(self) -> dict[str, bool]:
        data = self._get("/api/v1/targets")["data"]["activeTargets"]
        return {f"{t['labels']['job']} {t['labels']['instance']}": t["health"] == "up" for t in data}


def start_prometheus(lab, *, balancers: list[int], balancer_tors: list[int], worker_tors: list[int],
                     interval: float = 5.0, name: str = "prometheus") -> Prometheus:
    """Prometheus on a free 127.0.0.1 port scraping the given ports every `interval` s and
    evaluating the shipped rules as often."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus not installed (Debian package prometheus; bash scripts/setup)")
    root = lab.state_dir / name
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(RULES, root / RULES.name)

    def job(job_name: str, ports: list[int]) -> dict:
        return {"job_name": job_name, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}

    config = {"global": {"scrape_interval": f"{interval:g}s", "evaluation_interval": f"{interval:g}s",
                         "scrape_timeout": f"{min(interval, 4):g}s"},
              "rule_files": [RULES.name],
              "scrape_configs": [job("onion-balancer", balancers), job("tor-balancer", balancer_tors),
                                 job("tor-worker", worker_tors)]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = lab.ports.take()
    lab.procs.start(name, [binary, f"--config.file={root / 'prometheus.yml'}",
                           f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                           "--storage.tsdb.retention.time=2h", "--log.level=warn"], cwd=root)
    prom = Prometheus(port=port, name=name)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as resp:
                if resp.status == 200:
                    return prom
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"prometheus not ready within 60 s; see {lab.procs.log_path(name)}")
        time.sleep(0.5)


def wait_for(what: str, check, timeout: float, interval: float = 2.0):
    """Poll `check()` until it returns something truthy; returns (value, seconds waited)."""
    t0 = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def wait_status(lab, record: dict, timeout: float = 60.0) -> dict:
    """The status file of a balancer core just started (`lab.start_balancer` returns once
    the process is spawned; the daemon writes status.json on its first loop, a moment
    later). Raises with the end of its log if the process exits first."""
    from onion.status import read_status

    deadline = time.monotonic() + timeout
    while True:
        try:
            return read_status(record["state_dir"])
        except (FileNotFoundError, ValueError):
            pass
        if not lab.procs.is_running(record["process"]):
            log = lab.procs.log_path(record["process"])
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            raise RuntimeError(f"balancer {record['process']} exited before writing its status; "
                               f"end of {log}:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise TimeoutError(f"balancer {record['process']}: no status file in {record['state_dir']} "
                               f"within {timeout:.0f} s; see {lab.procs.log_path(record['process'])}")
        time.sleep(0.5)
