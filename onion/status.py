"""The balancer's status file: written atomically by the daemon, read by `python -m onion status`.

`<state_dir>/status.json`, mode 0644: only public facts (addresses, intro point auth keys,
HSDir fingerprints, times, results), never key material. Written to a temporary file in the
same directory and renamed over the old one, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime, timezone
from typing import Any

STATUS_FILE = "status.json"
SCHEMA_VERSION = 1


def status_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATUS_FILE)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):  # out of datetime's range: show the number
        return str(ts)


def write_status(state_dir: str, data: dict[str, Any]) -> str:
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    path = status_path(state_dir)
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # readable by monitoring users: it holds no secrets
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_status(state_dir: str) -> dict[str, Any]:
    path = status_path(state_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no status file at {path}; is `python -m onion run` running with state_dir {state_dir}?"
        ) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"status file {path} is not valid JSON ({exc}); the daemon rewrites it shortly") from None
    if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
        raise ValueError(f"status file {path} has an unknown format; use the same onionstack version as the daemon")
    return data


def clients_descriptor(fe: dict[str, Any], data: dict[str, Any]) -> dict[str, Any] | None:
    """The frontend's descriptor of the time period clients use now (`tor.time_period`, from
    the consensus): the one readers fetch and read-back checks. Between a time period's
    start and the next shared random value tor's service side calls it the second ("next")
    descriptor, the rest of the time the first ("current"). None when there is none."""
    descs = [d for d in fe.get("descriptors") or [] if isinstance(d, dict)]
    period = (data.get("tor") or {}).get("time_period")
    return next((d for d in descs if period is not None and d.get("time_period") == period),
                next((d for d in descs if d.get("role") == "current"), None))


def human_seconds(secs: float) -> str:
    """A duration as people say it: "1.2 s", "40 s", "3 min", "2 h 5 min", "3 days"."""
    secs = abs(secs)
    if secs < 10:
        return f"{secs:.1f} s"
    if secs < 90:
        return f"{secs:.0f} s"
    if secs < 90 * 60:
        return f"{secs / 60:.0f} min"
    if secs < 48 * 3600:
        hours, minutes = divmod(int(secs // 60), 60)
        return f"{hours} h" + (f" {minutes} min" if minutes and hours < 10 else "")
    return f"{secs / 86400:.0f} days"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _age(ts: float | None, now: float) -> str:
    """A wall time relative to now: "12 s ago", "in 30 min", "-" when unknown."""
    if ts is None:
        return "-"
    delta = now - ts
    return f"in {human_seconds(delta)}" if delta < -0.05 else f"{human_seconds(delta)} ago"


def format_status(data: dict[str, Any], now: float | None = None) -> str:
    """Human-readable status, one block per frontend."""
    now = time.time() if now is None else now
    lines = []
    tor = data.get("tor", {})
    written = data.get("written_at")
    lines.append(f"balancer pid {data.get('pid')}  status written {_age(written, now)}  "
                 f"publish: {'yes' if data.get('publish') else 'NO (standby)'}")
    lines.append(f"tor: {'connected' if tor.get('connected') else 'DISCONNECTED'} ({tor.get('control')})  "
                 f"time period {tor.get('time_period')}  consensus {tor.get('consensus_valid_after') or '-'}"
                 + (f"  hash ring: {tor['hsdirs']} HSDirs" if tor.get("hsdirs") is not None else "")
                 + (f" (+{tor['hsdirs_without_ed25519_id']} without a microdescriptor yet)"
                    if tor.get("hsdirs_without_ed25519_id") else "")
                 + (f"  error: {tor['last_error']}" if tor.get("last_error") else ""))
    if tor.get("consensus_entries_unreadable"):
        lines.append(f"consensus: {tor['consensus_entries_unreadable']} router entries unreadable, "
                     "left out of the hash ring")
    probes = data.get("probes") or {}
    if probes.get("enabled") and not probes.get("working", True):
        lines.append(f"PROBES NOT WORKING since {_age(probes.get('error_since'), now)}: {probes.get('error')} "
                     "(instances keep their last known state; failover is off)")
    elif probes.get("enabled") and probes.get("socks"):
        lines.append(f"probes: through tor's SocksPort {probes['socks']}")
    for fe in data.get("frontends", []):
        lines.append("")
        lines.append(f"frontend {fe['name']}  {fe['address']}.onion")
        lines.append("  instances:")
        for inst in fe.get("instances", []):
            desc = inst.get("descriptor")
            health = {True: "up", False: "DOWN", None: "unprobed"}[inst.get("healthy")]
            if desc:
                d = (f"descriptor {_age(desc.get('received_at'), now)} rev {desc.get('revision')} "
                     f"{len(desc.get('intro_points', []))} intro points")
            else:
                d = "no descriptor"
            used = "in use" if inst.get("in_use") else "not used"
            if inst.get("intro_points_left_out"):
                used += f" ({inst['intro_points_left_out']} intro points left out: too large)"
            label = " ".join(x for x in (inst.get("name"), f"({inst['worker']})" if inst.get("worker") else "") if x)
            lines.append(f"    {label + '  ' if label else ''}{inst['address']}.onion  {health}  {d}  {used}")
            if inst.get("last_error"):
                lines.append(f"      last error: {inst['last_error']}")
            load = inst.get("load") or {}
            if load.get("why") or load.get("metrics_error"):
                # load-aware intro selection (onion.load): why it has fewer intro points now
                lines.append(f"      load: {load.get('why') or 'normal'}  (suggested PoW effort "
                             f"{_dash(load.get('pow_effort'))}, PoW queue {_dash(load.get('pow_queue'))}"
                             + (f"; MetricsPort: {load['metrics_error']}" if load.get("metrics_error") else "")
                             + ")")
            probe = inst.get("probe") or {}
            if probe.get("last_result"):
                lines.append(f"      probe: {probe['last_result']} ({_age(probe.get('last_at'), now)}, "
                             f"{probe.get('consecutive_failures', 0)} consecutive failures)")
        reach = fe.get("reachability") or {}
        if reach.get("ok") is not None:
            lines.append(f"  end-to-end probe: {'reachable' if reach['ok'] else 'UNREACHABLE'} "
                         f"({_age(reach.get('at'), now)}"
                         + (f", {reach['latency_seconds']:.1f} s" if reach.get("latency_seconds") is not None else "")
                         + (f": {reach['error']}" if reach.get("error") else "") + ")"
                         + (f"; last reachable {_age(reach.get('last_ok_at'), now)}" if not reach["ok"] else ""))
        standby = fe.get("standby") or {}
        if standby:
            lines.append(f"  standby: {standby.get('state', '-')}"
                         + (f" ({standby['reason']})" if standby.get("reason") else ""))
        lines.append(f"  published intro points: {len(fe.get('published_intro_points', []))}")
        for ip in fe.get("published_intro_points", []):
            lines.append(f"    {ip['auth_key']}  from {ip['instance']}.onion")
        fetched = clients_descriptor(fe, data)
        for desc in fe.get("descriptors", []):
            lines.append(f"  time period {desc['time_period']} ({desc.get('role', '')}"
                         + (", the one clients fetch now" if desc is fetched else "") + "): uploads")
            for up in desc.get("hsdirs", []):
                served = up.get("served") or {}
                seen = (f"  served: {served.get('state')} (rev {served.get('revision') or '-'}, checked "
                        f"{_age(served.get('checked_at'), now)})") if served.get("checked_at") else "  served: not read back yet"
                lines.append(f"    {up['hsdir']}  {up.get('state', '-'):9s} {up.get('result') or '-'}  "
                             f"{_age(up.get('confirmed_at') or up.get('attempted_at'), now)}  "
                             f"{up.get('intro_points', 0)} intro points  rev {up.get('revision') or '-'}{seen}")
        nxt = fe.get("next_publish_at")
        lines.append(f"  next planned publish: {iso(nxt) + ' (' + _age(nxt, now) + ')' if nxt else '-'}")
        if fe.get("note"):
            lines.append(f"  note: {fe['note']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --check

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
STALE_PROBE_INTERVALS = 3


def check(data: dict[str, Any] | None, now: float | None = None,
          error: str = "") -> tuple[int, list[str]]:
    """Nagios/monitoring-plugins verdict on a status file: (exit code, lines). The first
    line is the one-line summary (`news: OK 6/6 instances up, 8/8 HSDirs serve rev …,
    reachable 1.2 s ago`); the others name every problem."""
    now = time.time() if now is None else now
    if data is None:
        return UNKNOWN, [f"UNKNOWN: {error or 'no status'}"]
    problems: list[tuple[int, str]] = []
    written = data.get("written_at")
    probes = data.get("probes") or {}
    interval = max(float(probes.get("interval") or 20.0), float(data.get("status_interval") or 10.0))
    if not isinstance(written, (int, float)) or now - written > STALE_PROBE_INTERVALS * interval:
        problems.append((CRITICAL, f"status file written {_age(written, now) if written else 'never'}, "
                                   f"more than {STALE_PROBE_INTERVALS} probe intervals ago: balancer not running?"))
    tor = data.get("tor") or {}
    if not tor.get("connected"):
        problems.append((CRITICAL, f"balancer not connected to its tor ({tor.get('last_error') or 'disconnected'})"))
    if probes.get("enabled") and probes.get("working") is False:
        problems.append((WARNING, f"liveness probes not working: {probes.get('error')}"))
    # Problems of the whole balancer (dead, no tor) head every frontend's summary.
    overall = max([OK] + [c for c, _ in problems])
    first = sorted(problems, key=lambda p: -p[0])[0][1] + "; " if problems else ""
    summaries = []
    for fe in data.get("frontends") or []:
        state, summary, fe_problems = _check_frontend(fe, data, now)
        problems += fe_problems
        summaries.append(f"{fe.get('name')}: {STATE_NAMES[max(state, overall)]} {first}{summary}")
    code = max([OK] + [c for c, _ in problems])
    head = "; ".join(summaries) or f"{STATE_NAMES[code]}: {first}no frontends"
    return code, [head] + [f"{STATE_NAMES[c]}: {text}" for c, text in sorted(problems, key=lambda p: -p[0])]


def _check_frontend(fe: dict, data: dict, now: float) -> tuple[int, str, list[tuple[int, str]]]:
    name = fe.get("name")
    problems: list[tuple[int, str]] = []
    instances = fe.get("instances") or []
    up = [i for i in instances if i.get("descriptor") and i.get("healthy") is not False]
    down = [i for i in instances if i not in up]
    total = len(instances)
    if total and len(up) * 2 < total:
        problems.append((CRITICAL, f"{name}: only {len(up)} of {total} instances up"))
    elif down:
        problems.append((WARNING, f"{name}: instance(s) down: " + ", ".join(_instance_label(i) for i in down)))
    parts = [f"{len(up)}/{total} instances up"]
    publishing = fe.get("publishing", data.get("publish"))
    fetched = clients_descriptor(fe, data)
    for desc in fe.get("descriptors") or []:
        role = desc.get("role") or str(desc.get("time_period"))
        ups = desc.get("hsdirs") or []
        served = [u for u in ups if (u.get("served") or {}).get("checked_at") is not None]
        serving = [u for u in served if u["served"].get("state") == "serving"]
        confirmed = [u for u in ups if u.get("state") == "uploaded"]
        if desc is fetched:  # the summary speaks of the descriptor readers fetch now
            revs = sorted({u.get("revision") for u in (serving or confirmed) if u.get("revision")})
            rev = f" rev {revs[-1]}" if revs else ""
            if served:
                parts.append(f"{len(serving)}/{len(ups)} HSDirs serve{rev}")
            else:
                parts.append(f"{len(confirmed)}/{len(ups)} HSDirs confirmed{rev}")
        if publishing:
            if ups and not confirmed:
                since = desc.get("first_needed_at")
                level = CRITICAL if since is not None and now - since > 600 else WARNING
                problems.append((level, f"{name}: no HSDir confirmed the {role} descriptor"
                                 + (f" (needed since {_age(since, now)})" if since is not None else "")))
            not_serving = [u for u in served if u["served"].get("state") != "serving"]
            if not_serving:
                problems.append((WARNING, f"{name}: {len(not_serving)} HSDir(s) do not serve the {role} "
                                 "descriptor: " + ", ".join(f"{u['hsdir'][:8]} ({u['served'].get('state')})"
                                                            for u in not_serving)))
    reach = fe.get("reachability") or {}
    if reach.get("ok") is True:
        parts.append(f"reachable {_age(reach.get('at'), now)}")
    elif reach.get("ok") is False:
        parts.append(f"UNREACHABLE {_age(reach.get('at'), now)}")
        problems.append((CRITICAL, f"{name}: end-to-end probe failed: {reach.get('error') or '?'}"
                         + (f" (last reachable {_age(reach.get('last_ok_at'), now)})" if reach.get("last_ok_at")
                            else " (never reachable since start)")))
    standby = fe.get("standby") or {}
    if standby.get("state"):
        parts.append(f"standby {standby['state']}")
    if fe.get("note"):
        problems.append((WARNING, f"{name}: {fe['note']}"))
    state = max([OK] + [c for c, _ in problems])
    return state, ", ".join(parts), problems


def _instance_label(inst: dict) -> str:
    name = inst.get("name")
    where = f"@{inst['worker']}" if inst.get("worker") else ""
    short = f"{inst.get('address', '')[:12]}…"
    return f"{name}{where} ({short})" if name else f"{short}{where}"
