"""The balancer core: keeps each frontend's master descriptors on the HSDirs, built from the
introduction points of its live instances.

Threading: one thread owns all state. stem's event thread, the probe threads and signal
handlers only *enqueue* messages (or set a flag); `Balancer.run_forever` takes them off the
queue one at a time. So nothing here needs a lock.

Event-driven: HS_DESC_CONTENT (an instance descriptor arrived), HS_DESC (upload confirmed or
failed, fetch failed), NEWCONSENSUS (hash ring / time period changed), probe results.
Timers are the backstop: periodic refetch, periodic republish, retries with backoff,
upload timeouts, reconnects.

Time periods: a tor instance rotates its descriptors at the SRV change (mid-period): its
descriptor for period n becomes current and the intro points of period n-1 close; its
period n+1 descriptor gets new intro points. HSFETCH only ever returns the instances'
current-period descriptor, so our period n+1 master descriptor, first uploaded at that SRV
change, can only carry the instances' period-n intro points, which close at the NEXT SRV
change. It must therefore be rebuilt from the instances' n+1 descriptors as soon as period
n+1 begins, before clients switch to it and cache it until period n+2: at a period change
we fetch the instances' new descriptors, wait (briefly) for them, then republish; and the
balancer's tor fetches each consensus as early as a directory cache does (see
docs/investigations/srv-window.md). OnionBalance 0.2.4 republished late and failed between
SRV changes and period starts.

Clocks: every schedule (republish, retries, probes, holds, reconnects, staleness) runs on a
monotonic clock, so a wall clock stepped back or forth (NTP, a VM resumed) neither delays
nor rushes anything; the wall clock is used only where tor's protocol needs it (certificate
expiry, time periods come from the consensus, revision counters) and to show times in the
status. Nothing that happens in one instance, one command or one reload stops the loop:
failures are handled where they happen (see "What the balancer survives" in
docs/balancer.md).
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from onion import publisher
from onion.config import BalancerConfig, ConfigError, load_config, load_keys
from onion.control import (CommandRejected, ControlError, DescContent, DescEvent,
                           Disconnected, NewConsensus)
from onion.errors import DescriptorTooLargeError
from onion.instances import InstanceState
from onion.load import LoadReading, queue_depth, read_metrics, weigh
from onion.probe import ProbeResult, SocksEndpoint, parse_socks_listeners
from onion.publisher import UploadBook, fair_windows
from onion import readback as rb
from onion import standby as sb
from onion.e2e import FrontendProbeResult
from onion.status import iso, write_status

log = logging.getLogger("onion.balancer")

PERIOD_HOLD = 20.0            # after a period change: wait this long for new instance descriptors
RING_RETRY = 15.0              # re-read the consensus this often while it is unusable/incomplete
STARTUP_HOLD = 10.0           # at start: wait this long for every instance's first descriptor
AWAIT_REFETCH = 4.0           # ... refetching those still missing this often
FETCH_INTERVAL = 300.0        # backstop refetch of every instance (shorter on fast test networks)
PROBE_RETRY = 4.0             # after a failed probe, probe again this soon
RECONNECT_MAX = 10.0          # a local tor restarting: retry at least this often
STATUS_MIN_INTERVAL = 1.0
STATUS_HEARTBEAT = 10.0       # rewrite the status (and the metrics snapshot) at least this often:
                              # `onion status --check` calls an old file a dead balancer
STATUS_ERROR_LOG_INTERVAL = 600.0  # a status file that cannot be written: say so this often
FETCH_REFUSED_MAX = 300.0     # a refused HSFETCH backs that instance off, up to this


# ----------------------------------------------------------------------------- interfaces

@dataclass(frozen=True)
class Slot:
    """One of the descriptors a service keeps published (tor's first/second descriptor)."""
    period: int
    hsdirs: tuple[str, ...]
    role: str = ""  # "current" / "next", for the status only


@dataclass(frozen=True)
class RingInfo:
    valid_after: float          # consensus valid-after (unix time)
    current_period: int         # the time period clients use now (what HSFETCH fetches)
    period_length: int          # minutes
    voting_interval: float      # seconds
    complete: bool = True       # False: some HSDirs lack microdescriptors (ed25519 ids) yet
    hsdirs: int = 0             # HSDirs in the ring
    hsdirs_without_ed25519: int = 0  # HSDirs left out of it for want of an ed25519 id
    skipped_malformed: int = 0       # router entries left out as unreadable


class ControlPort(Protocol):
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def fetch_descriptor(self, address: str, servers: Sequence[str] = ()) -> None: ...
    def post_descriptor(self, text: str, address: str, server: str) -> None: ...
    def signal_active(self) -> None: ...
    def get_info(self, key: str) -> str: ...


class OnionProtocol(Protocol):
    """Crypto + hash ring, over `onion.descriptor` / `onion.hashring` (see onion/frontend.py)."""
    def refresh(self, control: Any) -> RingInfo: ...
    def slots(self, identity: Any, now: float) -> list[Slot]: ...
    def decode(self, text: str, address: str, periods: Sequence[int], now: float): ...
    def build(self, identity: Any, period: int, intro_points: Sequence[Any], now: float) -> tuple[str, int]: ...
    def fetch_hsdirs(self, address: str, now: float) -> list[str]: ...


class Prober(Protocol):
    def start(self, address: str) -> bool: ...   # False: not started (one still running, ...)
    def close(self) -> None: ...
    # optional: set_socks(endpoint) and resize(instances), see onion/probe.py


# ----------------------------------------------------------------------------- state

@dataclass
class FrontendState:
    name: str
    identity: Any
    address: str
    instances: list[str]                      # instance addresses in config order
    max_intro_points: int = publisher.MAX_INTRO_POINTS
    slots: list[Slot] = field(default_factory=list)
    selected: list[Any] = field(default_factory=list)     # intro points in the descriptors
    selected_from: dict[bytes, str] = field(default_factory=dict)  # auth key -> instance
    note: str = ""
    last_publish_at: float | None = None                  # monotonic
    # intro points left out of the last built descriptors because they came out too large
    left_out: dict[bytes, str] = field(default_factory=dict)  # auth key -> instance
    size_note: str = ""       # says so (and names the instances) while it lasts
    size_error: str = ""
    # the end-to-end probe of the frontend (onion/e2e.py) and the standby state (onion/standby.py)
    reach: dict = field(default_factory=dict)
    e2e_next_at: float = 0.0
    e2e_in_flight: bool = False
    standby: sb.StandbyState = field(default_factory=sb.StandbyState)


class Balancer:
    def __init__(self, cfg: BalancerConfig, keys: dict[str, Any], control: ControlPort,
                 protocol: OnionProtocol, prober: Prober | None, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 write_status_files: bool = True,
                 load_overrides: dict[str, Any] | None = None,
                 metrics: Any = None, frontend_prober: Any = None):
        self.cfg = cfg
        # command-line overrides (control endpoint, state dir) that a reload must keep
        self.load_overrides = dict(load_overrides or {})
        self.control = control
        self.protocol = protocol
        self.prober = prober
        self.clock = clock          # wall clock: certificates, revision counters, status times
        self.mono = monotonic       # every schedule
        self.write_status_files = write_status_files
        self.metrics = metrics          # onion.metrics.MetricsServer, or None
        self.frontend_prober = frontend_prober  # onion.e2e.FrontendProber, or None
        self.readback = rb.Readback(cfg.readback.interval)
        self.readback_logged: dict[tuple[str, str], str] = {}  # (frontend, hsdir) -> last state logged
        self.queue: "queue.Queue[object]" = queue.Queue()
        self.book = UploadBook()
        self.instances: dict[str, InstanceState] = {}
        self.frontends: list[FrontendState] = []
        self.by_address: dict[str, FrontendState] = {}
        self.ring: RingInfo | None = None
        self.connected = False
        self.reconnect_failures = 0
        self.next_connect_at = 0.0
        self.last_error = ""
        self.period_hold_until = 0.0
        self.next_ring_refresh_at = float("inf")
        self.next_fetch_all_at = 0.0
        self.status_dirty = True
        self.last_status_at = float("-inf")
        self.status_error = ""          # why the status file cannot be written, while it cannot
        self.status_error_count = 0
        self.status_error_logged_at = float("-inf")
        self.stop_requested = False
        self.reload_requested = False
        # The probe path: where tor's SocksPort is, and whether probes can run through it.
        self.socks: SocksEndpoint | None = None
        self.probe_path_error = ""      # every probe fails the same local way: this
        self.probe_path_error_since: float | None = None
        self.all_down_logged: set[str] = set()  # frontends whose every instance fails probes
        self.first_needed: dict[tuple[str, int], float] = {}  # (frontend, period) -> monotonic
        self._apply_config(cfg, keys)

    # -- configuration --------------------------------------------------------
    def _apply_config(self, cfg: BalancerConfig, keys: dict[str, Any]) -> None:
        """Switch to `cfg`. Everything is computed before anything is replaced, so a failure
        here leaves the previous configuration in place."""
        old = {fe.address: fe for fe in self.frontends}
        frontends = []
        wanted: dict[str, str | None] = {}
        for fc in cfg.frontends:
            identity = keys[fc.name]
            fe = FrontendState(name=fc.name, identity=identity, address=identity.address,
                               instances=[i.address for i in fc.instances],
                               max_intro_points=fc.max_intro_points)
            if fe.address in old:
                fe.slots, fe.last_publish_at = old[fe.address].slots, old[fe.address].last_publish_at
                fe.reach, fe.e2e_next_at, fe.standby = old[fe.address].reach, old[fe.address].e2e_next_at, \
                    old[fe.address].standby
            frontends.append(fe)
            for inst in fc.instances:
                wanted[inst.address] = inst.name
        instances = {a: self.instances.get(a) or InstanceState(address=a, name=n) for a, n in wanted.items()}
        workers = {i.address: i.worker for fc in cfg.frontends for i in fc.instances}
        for a, inst in instances.items():
            inst.name, inst.worker = wanted[a], workers.get(a)
        self.cfg = cfg
        if hasattr(self, "readback"):
            self.readback.interval = cfg.readback.interval
        self.instances = instances
        self.frontends = frontends
        self.by_address = {fe.address: fe for fe in frontends}
        if self.socks is None and cfg.socks_port is not None:
            self.socks = SocksEndpoint(port=cfg.socks_port)
        resize = getattr(self.prober, "resize", None)
        if resize is not None:
            resize(len(instances))
        self.status_dirty = True

    def reload(self) -> None:
        """SIGHUP: re-read the config. Whatever goes wrong, the daemon keeps running: an
        unusable new config leaves the old one in place, and the reason is logged once."""
        try:
            cfg = load_config(self.cfg.path, **self.load_overrides)
            keys = load_keys(cfg)
        except Exception as exc:  # noqa: BLE001 - ConfigError, or anything a loader lets out
            why = str(exc) if isinstance(exc, (ConfigError, OSError)) else f"{type(exc).__name__}: {exc}"
            self.last_error = f"reload failed, old config kept: {why}"
            log.error("%s", self.last_error)
            self.status_dirty = True
            return
        old_cfg = self.cfg
        try:
            self._apply_config(cfg, keys)
        except Exception as exc:  # noqa: BLE001 - a bug: the old config stays
            self.last_error = f"reload failed, old config kept: {type(exc).__name__}: {exc}"
            log.exception("%s", self.last_error)
            self.status_dirty = True
            return
        log.info("config reloaded: %d frontends, %d instances, publish=%s", len(self.frontends),
                 len(self.instances), cfg.publish)
        if old_cfg.socks_port != cfg.socks_port:
            self.socks = SocksEndpoint(port=cfg.socks_port) if cfg.socks_port is not None else None
            self._set_prober_socks()
            if self.socks is None and self.connected and cfg.probe.enabled:
                self._find_socks()
        if cfg.metrics != old_cfg.metrics:
            log.warning("metrics.listen changed: restart the balancer to apply it (the old "
                        "listener stays)")
        if cfg.control != old_cfg.control:
            self._disconnected("control endpoint changed by reload")
            return
        if not self.connected:
            return
        now = self.mono()
        try:
            self._refresh_ring(now)
            for inst in self.instances.values():
                if inst.current is None:
                    self._fetch(inst, now)
        except ControlError as exc:
            self._disconnected(str(exc))
        except Exception:  # noqa: BLE001 - a bug must not stop the balancer
            log.exception("internal error after a reload")

    # -- message intake (any thread) -----------------------------------------
    def submit(self, message: object) -> None:
        self.queue.put(message)

    # -- main loop ------------------------------------------------------------
    def run_forever(self) -> int:
        def on_hup(_sig, _frame):
            self.reload_requested = True  # a flag, not a queue put: no lock in a signal handler

        def on_term(_sig, _frame):
            self.stop_requested = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        log.info("balancer starting: %d frontends, publish=%s", len(self.frontends), self.cfg.publish)
        try:
            while not self.stop_requested:
                self.step(timeout=1.0)
        finally:
            self.control.close()
            if self.prober is not None:
                self.prober.close()
            if self.frontend_prober is not None:
                self.frontend_prober.close()
            self._write_status(force=True, stopping=True)
            if self.metrics is not None:
                self.metrics.close()
        return 0

    def step(self, timeout: float = 0.0) -> None:
        """Handle everything queued (waiting up to `timeout` for the first), then timers."""
        try:
            message = self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            message = None
        while message is not None:
            self.handle(message)
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                message = None
        if self.reload_requested:
            self.reload_requested = False
            try:
                self.reload()
            except Exception:  # noqa: BLE001 - reload handles its errors; this is the last net
                log.exception("internal error in a reload; old config kept")
        self.tick()

    def handle(self, message: object) -> None:
        now = self.mono()
        try:
            if isinstance(message, DescContent):
                self._on_content(message, now)
            elif isinstance(message, DescEvent):
                self._on_desc_event(message, now)
            elif isinstance(message, NewConsensus):
                self._refresh_ring(now)
            elif isinstance(message, ProbeResult):
                self._on_probe(message, now)
            elif isinstance(message, FrontendProbeResult):
                self._on_frontend_probe(message, now)
            elif isinstance(message, LoadReading):
                self._on_load(message, now)
            elif isinstance(message, Disconnected):
                self._disconnected(message.reason or "control connection closed")
            else:
                log.debug("ignoring message %r", message)
        except ControlError as exc:
            self._disconnected(str(exc))
        except Exception:  # a bug handling one message must not stop the balancer
            log.exception("internal error handling %s", type(message).__name__)
        self.status_dirty = True

    def tick(self) -> None:
        now = self.mono()
        if self.metrics is not None:
            try:
                self.metrics.ensure_running()
            except Exception:  # noqa: BLE001 - metrics never stop publishing
                log.exception("metrics: cannot start the HTTP server")
        try:
            if not self.connected:
                if now >= self.next_connect_at:
                    self._connect(now)
                if not self.connected:
                    self._write_status()
                    return
            if now >= self.next_ring_refresh_at:
                self._refresh_ring(now)
            for frontend, hsdir in self.book.expire(now):
                log.warning("upload of %s.onion to %s: no answer from tor, will retry", frontend, hsdir)
                self.status_dirty = True
            # Each stage on its own: a bug in one (say, fetching) must not stop the others
            # (probing, publishing a due republish).
            for stage in (self._fetch_due, self._probe_due, self._metrics_due, self._standby_due,
                          self._publish_all, self._readback_due, self._frontend_probe_due):
                try:
                    stage(now)
                except ControlError:
                    raise
                except Exception:  # noqa: BLE001 - the next tick tries again
                    log.exception("internal error in the balancer loop (%s)", stage.__name__)
        except ControlError as exc:
            self._disconnected(str(exc))
        except Exception:  # a bug must not stop the balancer; the next tick tries again
            log.exception("internal error in the balancer loop")
        self._write_status()

    # -- connection -----------------------------------------------------------
    def _connect(self, now: float) -> None:
        try:
            self.control.connect()
        except ControlError as exc:
            self.reconnect_failures += 1
            delay = min(RECONNECT_MAX, 2 ** min(self.reconnect_failures - 1, 10))
            self.next_connect_at = now + delay
            if self.last_error != str(exc):
                log.warning("%s; retrying in %.0f s", exc, delay)
            self.last_error = str(exc)
            self.status_dirty = True
            return
        self.connected = True
        self.reconnect_failures = 0
        self.last_error = ""
        self.control.signal_active()
        if self.cfg.socks_port is None and self.cfg.probe.enabled:
            self._find_socks()
        self._refresh_ring(now)
        for inst in self.instances.values():
            inst.next_fetch_at = 0.0  # fetch everything now
            inst.probe.next_at = min(inst.probe.next_at, now)
            if inst.current is None:
                # First start: give every instance a moment to answer, so the first upload
                # carries them all instead of one re-upload per arriving descriptor.
                inst.awaiting_period = 0
        if any(inst.awaiting_period is not None for inst in self.instances.values()):
            self.period_hold_until = max(self.period_hold_until, now + STARTUP_HOLD)
        self.status_dirty = True

    def _find_socks(self) -> None:
        """The config names no SocksPort (OnionBalance's never does): ask tor where it
        listens, on every (re)connect, since a restarted tor may listen elsewhere."""
        try:
            listeners = parse_socks_listeners(self.control.get_info("net/listeners/socks") or "")
        except CommandRejected as exc:  # a tor too old for the key, or it refused
            listeners, why = [], f"tor did not say where its SocksPort is ({exc})"
        else:
            why = "tor has no SocksPort (GETINFO net/listeners/socks is empty)"
        found = listeners[0] if listeners else None
        if found != self.socks and found is not None:
            log.info("liveness probes go through tor's SocksPort %s (from tor)", found.describe())
        self.socks = found
        if found is not None and self.probe_path_error:
            self.probe_path_error, self.probe_path_error_since = "", None  # probes will tell
        if found is None:
            self._probe_path_broken(why + "; add a SocksPort on 127.0.0.1 to tor's torrc or "
                                    "socks_port to the balancer's config", self.mono())
        self._set_prober_socks()

    def _set_prober_socks(self) -> None:
        setter = getattr(self.prober, "set_socks", None)
        if setter is not None:
            setter(self.socks)

    def _disconnected(self, reason: str) -> None:
        if not self.connected:
            return  # already handled (a failed command and stem's CLOSED event both report it)
        log.warning("tor control: %s; reconnecting", reason)
        self.connected = False
        self.last_error = reason
        self.control.close()
        now = self.mono()
        # Uploads in flight are lost with the connection: count them failed, retry later.
        for frontend, hsdir in list(self.book.inflight):
            self.book.fail(frontend, hsdir, "control connection lost", now)
        for inst in self.instances.values():
            inst.fetch_requested_at = None
        self.next_connect_at = now + min(RECONNECT_MAX, 2 ** min(self.reconnect_failures, 10))
        self.reconnect_failures += 1
        self.status_dirty = True

    # -- consensus / time period ----------------------------------------------
    def _refresh_ring(self, now: float) -> None:
        # NEWCONSENSUS drives this; the retry covers a tor that has no consensus or lacks
        # microdescriptors yet (they arrive without an event; the next consensus may be an
        # hour away on the real network).
        self.next_ring_refresh_at = now + RING_RETRY
        try:
            ring = self.protocol.refresh(self.control)
        except ControlError:
            raise
        except ValueError as exc:  # ConsensusError: no usable consensus yet
            self.last_error = f"hash ring unavailable: {exc}"
            log.info("%s", self.last_error)
            return
        if ring.complete:
            self.next_ring_refresh_at = float("inf")
        old = self.ring
        if not ring.complete and (old is None or old.complete or old.hsdirs != ring.hsdirs):
            log.info("hash ring: %d HSDirs; %d more have no microdescriptor (ed25519 id) in tor yet, "
                     "re-reading in %.0f s", ring.hsdirs, ring.hsdirs_without_ed25519, RING_RETRY)
        self.ring = ring
        self.last_error = "" if self.last_error.startswith("hash ring") else self.last_error
        for fe in self.frontends:
            try:
                fe.slots = self.protocol.slots(fe.identity, self.clock())
            except ValueError as exc:
                fe.note = f"cannot compute responsible HSDirs: {exc}"
                fe.slots = []
            self.book.forget_periods(fe.address, [s.period for s in fe.slots])
        if old is not None and ring.current_period != old.current_period:
            self._period_changed(ring.current_period, now)
        self.status_dirty = True

    def _period_changed(self, period: int, now: float) -> None:
        """New time period: the instances rotate their descriptors and the intro points of
        the old ones close. Fetch the new ones first; publish when they are in (or after
        PERIOD_HOLD), so we never re-advertise dying intro points."""
        log.info("time period %d began: fetching instances' new descriptors before republishing", period)
        self.period_hold_until = now + PERIOD_HOLD
        for inst in self.instances.values():
            inst.awaiting_period = period
            inst.fetch_failures = 0
            self._fetch(inst, now)

    def _fetch_interval(self) -> float:
        if self.ring is None:
            return FETCH_INTERVAL
        # On a test network periods are minutes long: refetch a few times per period.
        return max(10.0, min(FETCH_INTERVAL, self.ring.period_length * 60 / 8))

    # -- instance descriptors -------------------------------------------------
    def _fetch(self, inst: InstanceState, now: float) -> None:
        """HSFETCH one instance. tor refusing the command (e.g. `552 Unknown SERVER` for an
        HSDir it has dropped) fails this instance's fetch only: it backs off, the others
        and the rest of the tick go on. A lost connection (ControlError) is everybody's."""
        servers: list[str] = []
        if self.ring is not None and inst.fetch_failures % 2 == 0:
            # Ask responsible HSDirs directly: tor otherwise skips HSDirs it asked in the
            # last 15 minutes, which needs NEWNYM (rate-limited) to undo. Every other
            # attempt after a failure lets tor choose, in case our ring view is off.
            try:
                servers = self.protocol.fetch_hsdirs(inst.address, now)[:2]
            except ValueError:
                servers = []
        try:
            self.control.fetch_descriptor(inst.address, servers)
        except CommandRejected as exc:
            inst.fetch_failures += 1
            retry = min(FETCH_REFUSED_MAX, 2.0 * 2 ** min(inst.fetch_failures, 8))
            inst.next_fetch_at = now + retry
            reason = f"HSFETCH refused by tor: {exc}"
            if inst.last_error != reason:
                log.warning("instance %s.onion: %s; retrying it in %.0f s", inst.address, exc, retry)
            inst.last_error, inst.last_error_at = reason, now
            self.status_dirty = True
            return
        inst.fetch_requested_at = now
        inst.next_fetch_at = now + self._fetch_interval()

    def _fetch_due(self, now: float) -> None:
        for inst in list(self.instances.values()):
            # waiting for a new period's descriptor: ask again soon (unless fetches fail,
            # then the backoff below applies)
            awaiting = (inst.awaiting_period is not None and now < self.period_hold_until
                        and inst.fetch_failures == 0)
            if awaiting and inst.fetch_requested_at is not None and now - inst.fetch_requested_at >= AWAIT_REFETCH:
                self._fetch(inst, now)
            elif now >= inst.next_fetch_at:
                self._fetch(inst, now)

    def _periods_for_decode(self) -> list[int]:
        if self.ring is None:
            return []
        p = self.ring.current_period
        return [p, p + 1, p - 1]

    def _on_content(self, msg: DescContent, now: float) -> None:
        fe = self.by_address.get(msg.address)
        if fe is not None:
            self._on_readback(fe, msg, now)
            return
        inst = self.instances.get(msg.address)
        if inst is None:
            return  # not ours (or our own frontend's descriptor)
        rejected = inst.rejected
        offer = inst.offer(msg.text, msg.hsdir, now, self.protocol.decode, self._periods_for_decode(),
                           wall=self.clock())
        if inst.rejected > rejected and inst.awaiting_period is not None:
            # It answered, with a descriptor we refuse: waiting longer for it would only
            # hold the others' publication up (start-up or period hold).
            inst.awaiting_period = None
        if offer.accepted:
            inst.fetch_failures = 0
        if offer.accepted and offer.changed:
            log.info("instance %s.onion: %s (%d intro points)", inst.address, offer.reason,
                     len(inst.current.decoded.intro_points))
        if not offer.accepted and msg.text.strip():
            inst.next_fetch_at = min(inst.next_fetch_at, now + 30.0)  # maybe another HSDir has a good one

    def _on_desc_event(self, msg: DescEvent, now: float) -> None:
        action = msg.action.upper()
        fe = self.by_address.get(msg.address)
        if fe is not None and msg.hsdir:
            if (action == "FAILED" and self.readback.pending(fe.address, msg.hsdir)
                    and (fe.address, msg.hsdir) not in self.book.inflight and msg.reason != "UPLOAD_REJECTED"):
                self._readback_failed(fe, msg.hsdir, msg.reason or "UNKNOWN", now)
                return
            if action == "UPLOADED":
                rec = self.book.confirm(fe.address, msg.hsdir, now)
                if rec is not None:
                    log.info("frontend %s: descriptor for period stored on %s", fe.name, msg.hsdir)
                    if self.ring is not None and self.ring.current_period in {
                            p for (a, p, h) in self.book.records if a == fe.address and h == msg.hsdir}:
                        self.readback.confirmed_upload(fe.address, msg.hsdir, self.ring.current_period, now)
            elif action == "FAILED":
                rec = self.book.fail(fe.address, msg.hsdir, msg.reason or "UNKNOWN", now)
                if rec is not None:
                    log.warning("frontend %s: upload to %s failed (%s); retry in %.0f s", fe.name, msg.hsdir,
                                msg.reason, rec.next_retry_at - now)
            return
        inst = self.instances.get(msg.address)
        if inst is not None and action == "FAILED":
            # Fetch failed at one HSDir (NOT_FOUND, …). Others may still answer; the retry
            # below is the backstop when none does. Count one failure per fetch, not per HSDir.
            if inst.fetch_failed_for != inst.fetch_requested_at:
                inst.fetch_failed_for = inst.fetch_requested_at
                inst.fetch_failures += 1
            retry = min(60.0, 2.0 * 2 ** min(inst.fetch_failures, 5))
            inst.next_fetch_at = min(inst.next_fetch_at, now + retry)

    # -- liveness probes ------------------------------------------------------
    def _probe_due(self, now: float) -> None:
        if self.prober is None or not self.cfg.probe.enabled or self.ring is None:
            return
        for inst in self.instances.values():
            p = inst.probe
            if p.in_flight_since is not None:
                if now - p.in_flight_since < self.cfg.probe.timeout + 30:
                    continue
                p.in_flight_since = None  # lost result (should not happen): probe again
            if inst.current is None or now < p.next_at:
                continue
            if self.prober.start(inst.address) is not False:  # False: one still runs
                p.in_flight_since = now

    def _probe_path_broken(self, why: str, now: float) -> None:
        if self.probe_path_error != why:
            log.error("liveness probes cannot reach any instance: %s. Instances keep their "
                      "last known state (not marked down); failover is off until this is fixed",
                      why)
            self.probe_path_error_since = now
        self.probe_path_error = why
        self.status_dirty = True

    def _on_probe(self, msg: ProbeResult, now: float) -> None:
        inst = self.instances.get(msg.address)
        if inst is None:
            return
        settings = self.cfg.probe
        if getattr(msg, "local", False):
            # The probe never reached tor's onion-service code: our own SocksPort (or the
            # path to it) failed. Not the instance's fault: keep its state, say so loudly.
            inst.probe.in_flight_since = None
            inst.probe.next_at = now + min(settings.interval, PROBE_RETRY * 4)
            inst.probe.last_at, inst.probe.last_result = now, f"not probed: {msg.detail}"
            self._probe_path_broken(msg.detail, now)
            if self.cfg.socks_port is None and self.connected:
                self._find_socks()  # tor may listen elsewhere since it restarted
            return
        if self.probe_path_error:
            log.warning("liveness probes work again (%s.onion: %s)", inst.address, msg.detail)
            self.probe_path_error, self.probe_path_error_since = "", None
        changed = inst.probe_result(msg.ok, msg.detail, now, settings.failures)
        inst.probe.last_ok, inst.probe.last_seconds = msg.ok, round(msg.seconds, 3)
        inst.probe.next_at = now + (settings.interval if msg.ok else min(settings.interval, PROBE_RETRY))
        if not msg.ok and inst.probe.consecutive_failures == 1:
            # Failures come in groups (a worker runs several instances): probe the others
            # soon instead of waiting out their interval.
            for other in self.instances.values():
                if other is not inst and other.probe.in_flight_since is None:
                    other.probe.next_at = min(other.probe.next_at, now + PROBE_RETRY)
        if changed:
            state = "down" if inst.probe_down(settings.failures) else "up"
            log.warning("instance %s.onion is %s (probe: %s); republishing", inst.address, state, msg.detail)
        elif not msg.ok and inst.probe.consecutive_failures < settings.failures:
            # on the way down (not every probe of a dead one): shows what detection takes
            log.info("instance %s.onion: probe failed after %.1f s (%d of %d before it counts as "
                     "down): %s", inst.address, msg.seconds, inst.probe.consecutive_failures,
                     settings.failures, msg.detail)

    # -- publishing -----------------------------------------------------------
    def _usable(self, fe: FrontendState, now: float) -> tuple[list[InstanceState], str]:
        wall = self.clock()
        valid = [self.instances[a] for a in sorted(fe.instances)
                 if a in self.instances and self.instances[a].has_valid_descriptor(now, wall)]
        alive = [i for i in valid if not i.probe_down(self.cfg.probe.failures)] if self.cfg.probe.enabled else valid
        if valid and not alive:
            # Every probe fails: more likely our own tor is in trouble than every worker
            # dead. Keep advertising them all rather than nothing - and say so loudly.
            note = (f"every instance fails its probes ({valid[0].probe.last_result or '?'}): "
                    "publishing all of them, failover is off until one passes; check the "
                    "balancer's tor and the workers")
            if fe.address not in self.all_down_logged:
                log.error("frontend %s: %s", fe.name, note)
                self.all_down_logged.add(fe.address)
            return valid, note
        if fe.address in self.all_down_logged:
            log.warning("frontend %s: instances pass their probes again", fe.name)
            self.all_down_logged.discard(fe.address)
        return alive, ""

    def select(self, fe: FrontendState, now: float) -> list[list[Any]]:
        """The intro point groups of the usable instances, in address order, each trimmed to
        what its load allows (onion.load: fewer slots for an overloaded instance)."""
        usable, note = self._usable(fe, now)
        if self.probe_path_error and self.cfg.probe.enabled:
            note = (f"liveness probes cannot run ({self.probe_path_error}): instances keep their "
                    "last known state, failover is off") + (f"; {note}" if note else "")
        fe.note = note
        fe.selected_from = {ip.auth_key: inst.address for inst in usable for ip in inst.current.decoded.intro_points}
        groups = [list(inst.current.decoded.intro_points) for inst in usable]
        return weigh(groups, [inst.load for inst in usable],
                     [inst.current.decoded.pow_effort for inst in usable],
                     [now - inst.current.received_at for inst in usable], self.cfg.load, now)

    # -- load (MetricsPort readings) -------------------------------------------
    def _metrics_due(self, now: float) -> None:
        """Read the MetricsPort of every instance that has one configured, each every
        load.metrics_interval s, one reading in flight per instance (a thread each)."""
        policy = self.cfg.load
        if not policy.enabled:
            return
        urls = {i.address: i.metrics for fc in self.cfg.frontends for i in fc.instances if i.metrics}
        for address, url in urls.items():
            inst = self.instances.get(address)
            if inst is None or inst.load.metrics_in_flight or now < inst.load.next_metrics_at:
                continue
            inst.load.metrics_in_flight = True
            inst.load.next_metrics_at = now + policy.metrics_interval
            threading.Thread(target=self._read_load, args=(address, url), daemon=True,
                             name=f"metrics-{address[:8]}").start()

    def _read_load(self, address: str, url: str) -> None:
        """Thread: one MetricsPort reading, posted back as a LoadReading (never raises)."""
        try:
            self.submit(LoadReading(address, queue_depth(read_metrics(url), address)))
        except Exception as exc:  # noqa: BLE001 - any failure is a reading error, never a crash
            self.submit(LoadReading(address, None, f"{type(exc).__name__}: {exc}"[:200]))

    def _on_load(self, msg: LoadReading, now: float) -> None:
        inst = self.instances.get(msg.address)
        if inst is None:
            return
        inst.load.metrics_in_flight = False
        if msg.error or msg.queue is None:
            error = msg.error or "its MetricsPort lists no such service"
            if error != inst.load.metrics_error:
                log.warning("instance %s.onion: no load reading: %s", inst.address, error)
            inst.load.metrics_error = error
            return
        inst.load.metrics_error = ""
        inst.load.queue, inst.load.queue_at = msg.queue, now

    def _holding(self, fe: FrontendState, now: float) -> bool:
        """True while a new period's descriptor is still missing from a live instance
        (one that failed its probes cannot hold the others up)."""
        if now >= self.period_hold_until:
            return False
        failures = self.cfg.probe.failures
        return any(self.instances[a].awaiting_period is not None and not self.instances[a].probe_down(failures)
                   for a in fe.instances if a in self.instances)

    def _publish_all(self, now: float) -> None:
        if self.ring is None:
            return
        for fe in self.frontends:
            if not fe.slots:
                continue
            if self._holding(fe, now):
                fe.note = "new time period: waiting for the instances' new descriptors"
                continue
            groups = self.select(fe, now)
            if not any(groups):
                fe.selected = []
                fe.note = fe.note or "no instance with a valid descriptor yet: nothing to publish"
                continue
            self._publish(fe, groups, now)

    def _publish(self, fe: FrontendState, groups: list[list[Any]], now: float) -> None:
        built: dict[tuple[int, frozenset], tuple[str, int, frozenset] | None] = {}
        provenance: dict[tuple[int, frozenset], str] = {}
        selected: dict[bytes, Any] = {}
        left_out: dict[bytes, str] = {}
        for slot in fe.slots:
            windows = fair_windows(groups, slot.hsdirs, fe.max_intro_points)
            for window in windows.values():
                for ip in window:
                    selected.setdefault(ip.auth_key, ip)
            for hsdir, window in windows.items():
                content = frozenset(ip.auth_key for ip in window)
                reason = self.book.needs_upload(fe.address, slot.period, hsdir, content, now,
                                                publishing=self._publishing(fe))
                if reason is None:
                    continue
                key = (slot.period, content)
                if key not in built:
                    built[key] = self._build(fe, slot.period, window, left_out)
                    provenance[key] = self._provenance(fe, window)
                if built[key] is None:
                    continue  # cannot be built (said in the note and log); other slots go on
                text, revision, in_descriptor = built[key]
                count = len(in_descriptor)
                if not self._publishing(fe):
                    self.book.standby(fe.address, slot.period, hsdir, content, now, revision, in_descriptor)
                    continue
                self.book.sent(fe.address, slot.period, hsdir, content, now, revision, in_descriptor)
                try:
                    self.control.post_descriptor(text, fe.address, hsdir)
                except CommandRejected as exc:
                    self.book.fail(fe.address, hsdir, f"HSPOST refused: {exc}", now)
                log.info("frontend %s: upload period %d to %s (%s, %d intro points from %s, rev %d)",
                         fe.name, slot.period, hsdir, reason, count, provenance[key], revision)
                fe.last_publish_at = now
                self.status_dirty = True
        fe.selected = list(selected.values())
        if built:  # something was (re)built: these are the intro points left out now
            # (left out of every descriptor: one dropped from one window may fit in another)
            placed = {k for entry in built.values() if entry is not None for k in entry[2]}
            left_out = {k: a for k, a in left_out.items() if k not in placed}
            fe.left_out = left_out
            note = ""
            if left_out:
                culprits: dict[str, int] = {}
                for address in left_out.values():
                    culprits[address] = culprits.get(address, 0) + 1
                note = (f"descriptors too large for tor ({fe.size_error}): left out "
                        + ", ".join(f"{n} intro point(s) of {a}.onion" for a, n in
                                    sorted(culprits.items(), key=lambda kv: (-kv[1], kv[0]))))
                log.warning("frontend %s: %s", fe.name, note)
            fe.size_note = note

    def _build(self, fe: FrontendState, period: int, window: Sequence[Any],
               left_out: dict[bytes, str]) -> tuple[str, int, frozenset] | None:
        """Build one descriptor; if it comes out larger than tor accepts, leave out intro
        points and build again rather than publish nothing. Each round drops the largest
        intro point of the instance with the largest intro point (then the most bytes in
        the descriptor), so the instance whose intro points are oversized pays, and the log and status name it.
        (tor, making its own descriptor too large, logs "We just made an HS descriptor
        that's too big" and publishes nothing: hs_descriptor.c hs_desc_encode_descriptor;
        its own intro points are never that large, an instance's may be.)"""
        points = list(window)
        dropped: list[Any] = []
        first_error = ""
        wall = self.clock()
        while True:
            try:
                text, revision = self.protocol.build(fe.identity, period, points, wall)
                break
            except DescriptorTooLargeError as exc:
                if len(points) <= 1:
                    fe.note = f"cannot build a descriptor for period {period}: {exc}"
                    log.error("frontend %s: %s", fe.name, fe.note)
                    return None
                # Rank instances by their single largest intro point first, then by their
                # bytes in total: fair windows give some instances one slot fewer than
                # others, so by total bytes alone an honest instance with 3 ordinary
                # points could outweigh the one with 2 oversized points and pay for it.
                by_instance: dict[str, tuple[int, int]] = {}
                for ip in points:
                    src = fe.selected_from.get(ip.auth_key, "?")
                    largest, total = by_instance.get(src, (0, 0))
                    size = publisher.wire_size(ip)
                    by_instance[src] = (max(largest, size), total + size)
                worst = max(by_instance, key=lambda a: (by_instance[a], a))
                victim = max((ip for ip in points if fe.selected_from.get(ip.auth_key, "?") == worst),
                             key=publisher.wire_size)
                points.remove(victim)
                dropped.append(victim)
                first_error = first_error or str(exc)
            except ValueError as exc:  # DescriptorError, ConsensusError: never a crash
                fe.note = f"cannot build a descriptor for period {period}: {exc}"
                log.error("frontend %s: %s", fe.name, fe.note)
                return None
        for ip in dropped:
            left_out[ip.auth_key] = fe.selected_from.get(ip.auth_key, "?")
        if dropped:
            fe.size_error = first_error
        return text, revision, frozenset(ip.auth_key for ip in points)

    def _provenance(self, fe: FrontendState, window: Sequence[Any]) -> str:
        """Which instance descriptors (time periods) an upload's intro points come from, and
        a short hash of the set: lets the log show which copy a client may have cached."""
        keys = [publisher.auth_key_of(ip) for ip in window]
        periods = set()
        for key in keys:
            inst = self.instances.get(fe.selected_from.get(key, ""))
            if inst is not None and inst.current is not None and inst.current.decoded.period is not None:
                periods.add(inst.current.decoded.period)
        digest = hashlib.sha256(b"".join(sorted(keys))).hexdigest()[:8]
        return f"instance period {','.join(map(str, sorted(periods))) or '?'}, set {digest}"

    # -- publishing, standby --------------------------------------------------
    def _publishing(self, fe: FrontendState) -> bool:
        """Whether this balancer uploads fe's descriptors now: `publish: true`, and for a
        standby only while it has taken over."""
        if not self.cfg.publish:
            return False
        return not self.cfg.standby.enabled or fe.standby.state == sb.ACTIVE

    def _current_slot(self, fe: FrontendState) -> Slot | None:
        if self.ring is None:
            return None
        return next((s for s in fe.slots if s.period == self.ring.current_period), None)

    def _standby_due(self, now: float) -> None:
        """A standby: judge what the HSDirs serve; take over or stand by again."""
        if not self.cfg.standby.enabled or not self.cfg.publish:
            return
        wall = self.clock()
        for fe in self.frontends:
            slot = self._current_slot(fe)
            if slot is None:
                continue
            usable, _ = self._usable(fe, now)
            keys = frozenset(ip.auth_key for inst in usable for ip in inst.current.decoded.intro_points)
            records = [self.readback.records.get((fe.address, h)) for h in slot.hsdirs]
            records = [r for r in records if r is not None and r.period == slot.period]
            fresh, checked, why = sb.judge(records, keys, wall, self.cfg.standby.stale_after)
            primary_back = False
            if fe.standby.state == sb.ACTIVE:
                # A revision above our own confirmed upload to that HSDir, read back after we
                # took over: someone else with the key uploads again, the primary.
                for r in records:
                    if r.state != "newer" or r.checked_at is None or (fe.standby.since or 0) > r.checked_at:
                        continue
                    up = self.book.records.get((fe.address, slot.period, r.hsdir))
                    primary_back = primary_back or (up is not None and up.state == "uploaded")
            if sb.step(fe.standby, fe.name, fresh, checked, why, primary_back, now,
                       self.cfg.standby.takeover_after):
                self.status_dirty = True

    # -- read-back --------------------------------------------------------------
    def _readback_due(self, now: float) -> None:
        if not self.cfg.readback.enabled and not self.cfg.standby.enabled:
            return
        if not self.connected:
            return
        for fe in self.frontends:
            slot = self._current_slot(fe)
            if slot is None:
                continue
            self.readback.forget(fe.address, set(slot.hsdirs))
            budget = rb.MAX_IN_FLIGHT - self.readback.in_flight(fe.address)
            for hsdir in slot.hsdirs:
                if budget <= 0:
                    break
                if (fe.address, hsdir) in self.book.inflight:
                    continue  # tor's events would not tell the fetch from the upload
                if not self.readback.due(fe.address, hsdir, slot.period, now):
                    continue
                up = self.book.records.get((fe.address, slot.period, hsdir))
                if self._publishing(fe) and (up is None or up.state != "uploaded"):
                    continue  # nothing of ours there yet: the upload comes first
                try:
                    self.control.fetch_descriptor(fe.address, [hsdir])
                except CommandRejected as exc:
                    self.readback.result(fe.address, hsdir, "failed", now, detail=f"HSFETCH refused: {exc}")
                    continue
                self.readback.requested(fe.address, hsdir, slot.period, now)
                budget -= 1

    def _on_readback(self, fe: FrontendState, msg: DescContent, now: float) -> None:
        if not msg.hsdir or not self.readback.pending(fe.address, msg.hsdir):
            return
        rec = self.readback.records[(fe.address, msg.hsdir)]
        if not msg.text.strip():
            self._readback_failed(fe, msg.hsdir, "NOT_FOUND", now)
            return
        try:
            decoded = self.protocol.decode(msg.text, fe.address, [rec.period], self.clock())
        except ValueError as exc:
            self._readback_done(fe, msg.hsdir, rec.period, "unreadable", now, detail=str(exc)[:200])
            return
        up = self.book.records.get((fe.address, rec.period, msg.hsdir))
        state = rb.compare(decoded, up) if self._publishing(fe) or (up is not None and up.state == "uploaded") \
            else "newer"
        built = None
        built_at = getattr(self.protocol, "built_at", None)
        if built_at is not None:
            try:
                built = built_at(fe.identity, rec.period, decoded.revision, self.clock())
            except Exception:  # noqa: BLE001 - a helper for the standby; never fatal
                built = None
        if not self._publishing(fe) and state == "newer":
            state = "serving" if self.cfg.standby.enabled else "other"
        self._readback_done(fe, msg.hsdir, rec.period, state, now, revision=decoded.revision,
                            intro_keys=frozenset(ip.auth_key for ip in decoded.intro_points), built_at=built)

    def _readback_failed(self, fe: FrontendState, hsdir: str, reason: str, now: float) -> None:
        rec = self.readback.records.get((fe.address, hsdir))
        period = rec.period if rec is not None else -1
        state = "missing" if reason == "NOT_FOUND" else "failed"
        self._readback_done(fe, hsdir, period, state, now, detail=reason)

    def _readback_done(self, fe: FrontendState, hsdir: str, period: int, state: str, now: float,
                       **kw) -> None:
        served = self.readback.result(fe.address, hsdir, state, now, **kw)
        self.status_dirty = True
        key = (fe.address, hsdir)
        if self.readback_logged.get(key) != state:
            level = logging.INFO if state in ("serving", "newer", "other") else logging.WARNING
            log.log(level, "frontend %s: read-back from %s: %s%s", fe.name, hsdir, state,
                    f" (rev {served.revision})" if served.revision is not None else
                    f" ({served.detail})" if served.detail else "")
            self.readback_logged[key] = state
        if state in rb.REUPLOAD_STATES and self._publishing(fe):
            if self.book.invalidate(fe.address, period, hsdir, state, now):
                log.warning("frontend %s: %s does not serve our descriptor (%s): uploading again", fe.name,
                            hsdir, state)

    # -- end-to-end probe ---------------------------------------------------------
    def _frontend_probe_due(self, now: float) -> None:
        settings = self.cfg.frontend_probe
        if self.frontend_prober is None or not settings.enabled or self.socks is None or self.ring is None:
            return
        for fe in self.frontends:
            if fe.e2e_in_flight or now < fe.e2e_next_at:
                continue
            if self.frontend_prober.start(self.socks, fe.address, settings.port, settings.path, settings.timeout):
                fe.e2e_in_flight = True
                fe.e2e_next_at = now + settings.interval

    def _on_frontend_probe(self, msg: FrontendProbeResult, now: float) -> None:
        fe = self.by_address.get(msg.address)
        if fe is None:
            return
        fe.e2e_in_flight = False
        if msg.local:
            fe.reach = dict(fe.reach, error=f"not probed: {msg.detail}")
            return
        was = fe.reach.get("ok")
        fe.reach = {"ok": msg.ok, "at": now, "latency_seconds": round(msg.seconds, 3) if msg.ok else None,
                    "error": None if msg.ok else msg.detail, "status_code": msg.status_code,
                    "socks_error": msg.socks_error, "port": self.cfg.frontend_probe.port,
                    "path": self.cfg.frontend_probe.path,
                    "last_ok_at": now if msg.ok else fe.reach.get("last_ok_at"),
                    "failures": 0 if msg.ok else fe.reach.get("failures", 0) + 1}
        if not msg.ok:
            # probe again soon: one failure may be a bad circuit
            fe.e2e_next_at = min(fe.e2e_next_at, now + min(self.cfg.frontend_probe.interval, 15.0))
        if was is not msg.ok:
            (log.info if msg.ok else log.error)("frontend %s: end-to-end probe %s: %s (%.1f s)", fe.name,
                                                "succeeds" if msg.ok else "FAILS", msg.detail, msg.seconds)

    # -- status ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = self.mono()
        wall_now = self.clock()

        def wall(t: float | None) -> float | None:
            return None if t is None else wall_now - (now - t)

        out_frontends = []
        for fe in self.frontends:
            def served_of(period: int, hsdir: str, fe=fe) -> dict | None:
                rec = self.readback.records.get((fe.address, hsdir))
                return rb.as_status(rec, wall) if rec is not None and rec.period == period else None

            instances = []
            for addr in fe.instances:
                inst = self.instances.get(addr)
                if inst is None:
                    continue
                desc = None
                if inst.current is not None:
                    d = inst.current.decoded
                    desc = {
                        "received_at": wall(inst.current.received_at),
                        "age_seconds": round(now - inst.current.received_at, 1),
                        "revision": d.revision, "time_period": d.period,
                        "signing_key_expiry": iso(d.signing_key_expiry),
                        "from_hsdir": inst.current.hsdir,
                        "intro_points": [ip.auth_key.hex() for ip in d.intro_points],
                    }
                p = inst.probe
                instances.append({
                    "address": addr, "name": inst.name, "worker": inst.worker, "healthy": p.healthy,
                    "rejected_by_reason": dict(inst.rejected_by_reason),
                    "in_use": any(fe.selected_from.get(ip.auth_key) == addr for ip in fe.selected),
                    "descriptor": desc, "rejected_descriptors": inst.rejected,
                    "last_error": inst.last_error or None, "last_error_at": wall(inst.last_error_at),
                    "awaiting_new_period": inst.awaiting_period,
                    "intro_points_left_out": sum(1 for a in fe.left_out.values() if a == addr),
                    "load": {"pow_effort": inst.current.decoded.pow_effort if inst.current else None,
                             "pow_queue": inst.load.queue, "pow_queue_at": wall(inst.load.queue_at),
                             "metrics_error": inst.load.metrics_error or None,
                             "intro_points_allowed": inst.load.slots, "why": inst.load.reason or None},
                    "probe": {"consecutive_failures": p.consecutive_failures, "last_at": wall(p.last_at),
                              "last_ok_at": wall(p.last_ok_at), "last_result": p.last_result or None,
                              "last_ok": p.last_ok, "last_seconds": p.last_seconds},
                })
            descriptors = []
            published: dict[bytes, str] = {}
            for slot in fe.slots:
                ups = []
                window_of: dict[frozenset, int] = {}  # distinct descriptors, in HSDir order
                for hsdir in slot.hsdirs:
                    rec = self.book.records.get((fe.address, slot.period, hsdir))
                    if rec is None:
                        ups.append({"hsdir": hsdir, "state": "not yet", "served": served_of(slot.period, hsdir)})
                        continue
                    window = window_of.setdefault(rec.content, len(window_of))
                    ups.append({"hsdir": hsdir, "state": rec.state, "result": rec.result or None,
                                "window": window, "served": served_of(slot.period, hsdir),
                                "attempted_at": wall(rec.attempted_at), "confirmed_at": wall(rec.confirmed_at),
                                "failures": rec.failures, "revision": rec.revision,
                                "next_retry_at": wall(rec.next_retry_at) if rec.state == "failed" else None,
                                "intro_points": len(rec.intro_keys)})
                    if rec.state in ("uploaded", "standby"):
                        for k in rec.intro_keys:
                            published.setdefault(k, fe.selected_from.get(k, "?"))
                descriptors.append({"time_period": slot.period, "role": slot.role, "hsdirs": ups,
                                    "first_needed_at": wall(self._first_needed(fe.address, slot.period, now))})
            next_at = self.book.next_due(fe.address, [s.period for s in fe.slots],
                                         {s.period: s.hsdirs for s in fe.slots})
            if self._holding(fe, now):
                next_at = self.period_hold_until
            out_frontends.append({
                "name": fe.name, "address": fe.address, "instances": instances,
                "publishing": self._publishing(fe),
                "reachability": dict(fe.reach, at=wall(fe.reach.get("at")), last_ok_at=wall(fe.reach.get("last_ok_at")))
                if fe.reach else None,
                "standby": ({"state": fe.standby.state, "since": wall(fe.standby.since),
                             "reason": fe.standby.reason or None, "takeovers": fe.standby.takeovers,
                             "takeover_after": self.cfg.standby.takeover_after}
                            if self.cfg.standby.enabled else None),
                "published_intro_points": [{"auth_key": k.hex(), "instance": v} for k, v in published.items()],
                "descriptors": descriptors, "next_publish_at": wall(next_at),
                "last_publish_at": wall(fe.last_publish_at),
                "note": "; ".join(n for n in (fe.note, fe.size_note) if n) or None,
            })
        ring = self.ring
        return {
            "version": 1, "pid": os.getpid(), "written_at": wall_now, "publish": self.cfg.publish,
            "status_interval": STATUS_HEARTBEAT,
            "metrics": self.metrics.describe() if self.metrics is not None else None,
            "config": self.cfg.path,
            "tor": {"connected": self.connected, "control": self.cfg.control.describe(),
                    "time_period": ring.current_period if ring else None,
                    "period_length_minutes": ring.period_length if ring else None,
                    "consensus_valid_after": iso(ring.valid_after) if ring else None,
                    "hsdirs": ring.hsdirs if ring else None,
                    "hsdirs_without_ed25519_id": ring.hsdirs_without_ed25519 if ring else None,
                    "consensus_entries_unreadable": ring.skipped_malformed if ring else None,
                    "last_error": self.last_error or None},
            "probes": {"enabled": self.cfg.probe.enabled, "interval": self.cfg.probe.interval,
                       "socks": self.socks.describe() if self.socks else None,
                       "working": not self.probe_path_error,
                       "error": self.probe_path_error or None,
                       "error_since": wall(self.probe_path_error_since)},
            "frontends": out_frontends,
        }

    def _first_needed(self, frontend: str, period: int, now: float) -> float:
        """When this balancer first had a descriptor of `period` to publish (monotonic)."""
        key = (frontend, period)
        if key not in self.first_needed:
            if len(self.first_needed) > 64:
                self.first_needed = {k: v for k, v in self.first_needed.items() if k[1] >= period - 2}
            self.first_needed[key] = now
        return self.first_needed[key]

    def _write_status(self, force: bool = False, stopping: bool = False) -> None:
        if not self.write_status_files and self.metrics is None:
            return
        now = self.mono()
        if not force and now - self.last_status_at < STATUS_HEARTBEAT and (
                not self.status_dirty or now - self.last_status_at < STATUS_MIN_INTERVAL):
            return
        try:
            data = self.status()
        except Exception:  # a status bug must never stop publishing
            log.exception("cannot compute status")
            self.last_status_at = now
            return
        if stopping:
            data["tor"]["connected"] = False
            data["tor"]["last_error"] = "balancer stopped"
        if self.metrics is not None:
            self.metrics.update(data)
        if not self.write_status_files:
            self.status_dirty = False
            self.last_status_at = now
            return
        try:
            write_status(self.cfg.state_dir, data)
        except OSError as exc:
            # A full disk fails every write, once a second: say it when it starts, then at
            # most every STATUS_ERROR_LOG_INTERVAL with how many failed meanwhile.
            self.status_error_count += 1
            why = str(exc)
            if why != self.status_error or now - self.status_error_logged_at >= STATUS_ERROR_LOG_INTERVAL:
                more = (f" ({self.status_error_count - 1} more failed writes since the last message)"
                        if self.status_error == why and self.status_error_count > 1 else "")
                log.error("cannot write status file in %s: %s%s; publishing goes on, next "
                          "message in %.0f min if it persists", self.cfg.state_dir, exc, more,
                          STATUS_ERROR_LOG_INTERVAL / 60)
                self.status_error_logged_at = now
                self.status_error_count = 1
            self.status_error = why
        else:
            if self.status_error:
                log.warning("status file in %s written again", self.cfg.state_dir)
                self.status_error, self.status_error_count = "", 0
                self.status_error_logged_at = float("-inf")
        self.status_dirty = False
        self.last_status_at = now
