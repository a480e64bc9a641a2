"""Prometheus metrics of the balancer core, at `http://<metrics.listen>/metrics`.

The names, labels and help are `onion.metric_names` (one definition for the exporter, the
CloudWatch shipper, the alert rules, the dashboard and the stack's alarms).

`StatusCollector` is a prometheus_client custom collector: at each scrape it turns the
balancer's latest status snapshot (the dict `Balancer.status()` returns, which the
balancer's own thread hands over with `MetricsServer.update`) into metric families. The
scrape runs on prometheus_client's HTTP thread and never touches the balancer's state:
it reads an immutable snapshot, replaced whole by the loop. Ages ("seconds since the last
confirmed upload") are computed at scrape time from the wall times in the snapshot, so they
keep growing while nothing happens.

Failures stay here: a listen address that cannot be bound is logged (then at most every
10 minutes) and retried; a snapshot the collector cannot read yields what it can and logs
the error once per 10 minutes. Publishing never depends on metrics.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from onion import metric_names as mn
from onion.status import clients_descriptor

log = logging.getLogger("onion.metrics")

RETRY_BIND = 60.0
ERROR_LOG_INTERVAL = 600.0


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def _onion(address: str | None) -> str:
    return mn.frontend_dimension(address) if address else ""


class StatusCollector:
    """Metric families from a status snapshot (see the module docstring)."""

    def __init__(self, snapshot: Callable[[], dict | None], clock: Callable[[], float] = time.time):
        self._snapshot = snapshot
        self._clock = clock
        self._error_logged_at = float("-inf")

    def describe(self):  # no describe at registration: collect() reads a live snapshot
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for m in mn.ALL:
            if m.counter:
                families[m.name] = CounterMetricFamily(m.name.removesuffix("_total"), m.help, labels=m.labels)
            else:
                families[m.name] = GaugeMetricFamily(m.name, m.help, labels=m.labels)
        data = self._snapshot()
        if data:
            try:
                for name, labels, value in samples(data, self._clock()):
                    families[name].add_metric([_label(labels.get(k)) for k in mn.BY_NAME[name].labels], value)
            except Exception:  # noqa: BLE001 - a status shape we did not expect: say so, rarely
                now = time.monotonic()
                if now - self._error_logged_at >= ERROR_LOG_INTERVAL:
                    log.exception("metrics: cannot read the status snapshot (metrics incomplete)")
                    self._error_logged_at = now
        yield from families.values()


def samples(data: dict, now: float) -> Iterable[tuple[str, dict, float]]:
    """(metric name, labels, value) for every sample a status snapshot gives at wall time
    `now`. Pure: unit-tested on plain dicts."""
    tor = data.get("tor") or {}
    if tor.get("hsdirs") is not None:
        yield mn.RING_HSDIRS.name, {}, float(tor["hsdirs"])
    workers: dict[str, float] = {}
    for fe in data.get("frontends") or []:
        front = {mn.NAME: fe.get("name"), mn.ADDRESS: _onion(fe.get("address"))}
        yield mn.PUBLISHING.name, front, 1.0 if fe.get("publishing", data.get("publish")) else 0.0
        up = 0
        for inst in fe.get("instances") or []:
            worker = inst.get("worker") or ""
            labels = {**front, mn.INSTANCE: _onion(inst.get("address")),
                      mn.INSTANCE_NAME: inst.get("name") or "", mn.WORKER: worker}
            is_up = bool(inst.get("descriptor")) and inst.get("healthy") is not False
            up += is_up
            yield mn.INSTANCE_UP.name, labels, 1.0 if is_up else 0.0
            if worker:
                workers[worker] = workers.get(worker, 0.0) + (1.0 if is_up else 0.0)
            probe = inst.get("probe") or {}
            if probe.get("last_at") is not None and probe.get("last_ok") is not None:
                yield mn.PROBE_SUCCESS.name, labels, 1.0 if probe["last_ok"] else 0.0
                if probe.get("last_seconds") is not None:
                    yield mn.PROBE_LATENCY.name, labels, float(probe["last_seconds"])
            load = inst.get("load") or {}
            if load.get("pow_queue") is not None:
                yield mn.INSTANCE_POW_QUEUE.name, labels, float(load["pow_queue"])
            if inst.get("descriptor"):
                yield mn.INSTANCE_POW_EFFORT.name, labels, float(load.get("pow_effort") or 0)
            if load.get("intro_points_allowed") is not None:
                yield mn.INSTANCE_INTRO_POINTS_ALLOWED.name, labels, float(load["intro_points_allowed"])
            by_reason = inst.get("rejected_by_reason") or {}
            for reason in mn.REJECT_REASONS:
                yield mn.REJECTED_DESCRIPTORS.name, {**labels, mn.REASON: reason}, float(by_reason.get(reason, 0))
        yield mn.INSTANCES_UP.name, front, float(up)

        reach = fe.get("reachability") or {}
        if reach.get("ok") is not None:
            endpoint = {**front, mn.PROTOCOL: "http", mn.PORT: str(reach.get("port", 80)),
                        mn.PATH: reach.get("path", "/")}
            yield mn.SERVICE_REACHABLE.name, endpoint, 1.0 if reach["ok"] else 0.0
            if reach.get("latency_seconds") is not None:
                yield mn.SERVICE_LATENCY.name, endpoint, float(reach["latency_seconds"])

        fetched = clients_descriptor(fe, data)
        for desc in fe.get("descriptors") or []:
            role = desc.get("role") or ""
            per_role = {**front, mn.ROLE: role}
            windows: dict[int, int] = {}
            serving = 0
            read_back = 0
            served_points: set = set()
            last_confirmed = None
            for up_rec in desc.get("hsdirs") or []:
                labels = {**per_role, mn.HSDIR: up_rec.get("hsdir")}
                confirmed = up_rec.get("state") == "uploaded"
                yield mn.UPLOAD_CONFIRMED.name, labels, 1.0 if confirmed else 0.0
                if up_rec.get("confirmed_at") is not None and up_rec.get("state") != "standby":
                    last_confirmed = max(last_confirmed or 0.0, float(up_rec["confirmed_at"]))
                if up_rec.get("window") is not None:
                    windows[int(up_rec["window"])] = int(up_rec.get("intro_points") or 0)
                served = up_rec.get("served") or {}
                if served.get("checked_at") is not None:
                    read_back += 1
                    ok = served.get("state") == "serving"
                    serving += ok
                    yield mn.HSDIR_SERVING.name, labels, 1.0 if ok else 0.0
                    if served.get("intro_points") and desc is fetched:
                        served_points.update(served["intro_points"])
            for index, count in sorted(windows.items()):
                yield mn.DESCRIPTOR_INTRO_POINTS.name, {**per_role, mn.DESCRIPTOR: str(index)}, float(count)
            if read_back:  # only the current period is read back (tor fetches what clients use)
                yield mn.HSDIRS_SERVING.name, per_role, float(serving)
            since = last_confirmed if last_confirmed is not None else desc.get("first_needed_at")
            if since is not None and fe.get("publishing", data.get("publish")):
                yield mn.SECONDS_SINCE_CONFIRMED_UPLOAD.name, per_role, max(0.0, now - float(since))
            if desc is fetched and read_back:  # Onionprobe's view: the descriptor clients fetch now
                yield mn.DESCRIPTOR_REACHABLE.name, front, 1.0 if served_points or serving else 0.0
                yield mn.INTRODUCTION_POINTS.name, front, float(len(served_points))
    for worker, count in sorted(workers.items()):
        yield mn.WORKER_INSTANCES_UP.name, {mn.WORKER: worker}, count


def parse_listen(value: str) -> tuple[str, int]:
    """`127.0.0.1:PORT` or `[::1]:PORT` -> (host, port); anything else is a ValueError
    (metrics listen on loopback only: they name the site's instances and HSDirs)."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or host not in ("127.0.0.1", "::1") or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not 127.0.0.1:PORT or [::1]:PORT")
    return host, int(port)


class MetricsServer:
    """`/metrics` on a loopback address, over prometheus_client's HTTP server (a thread of
    its own). `update(status)` hands a new snapshot over; `ensure_running()` (called from
    the balancer's loop) binds the listener, retrying after a failure."""

    def __init__(self, host: str, port: int, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        self.host, self.port = host, port
        self._snapshot: dict | None = None
        self._mono = monotonic
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(lambda: self._snapshot, clock))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu
        self._server = None
        self._thread: threading.Thread | None = None
        self._next_try = 0.0
        self.error = ""
        self._error_logged_at = float("-inf")

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def update(self, snapshot: dict) -> None:
        self._snapshot = snapshot  # one reference swap: the scrape thread sees old or new

    def ensure_running(self) -> bool:
        if self._server is not None:
            return True
        now = self._mono()
        if now < self._next_try:
            return False
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as exc:
            self._next_try = now + RETRY_BIND
            why = f"cannot listen on {self.host}:{self.port}: {exc}"
            if why != self.error or now - self._error_logged_at >= ERROR_LOG_INTERVAL:
                log.error("metrics: %s; retrying every %.0f s (publishing goes on)", why, RETRY_BIND)
                self._error_logged_at = now
            self.error = why
            return False
        if self.error:
            log.warning("metrics: listening again")
        self.error = ""
        log.info("metrics at %s", self.describe())
        return True

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # noqa: BLE001 - shutting down
                pass
