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


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    secs = int(now - ts)
    if secs < 0:
        return f"in {-secs}s"
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


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
            lines.append(f"    {inst['address']}.onion  {health}  {d}  {used}")
            if inst.get("last_error"):
                lines.append(f"      last error: {inst['last_error']}")
            probe = inst.get("probe") or {}
            if probe.get("last_result"):
                lines.append(f"      probe: {probe['last_result']} ({_age(probe.get('last_at'), now)}, "
                             f"{probe.get('consecutive_failures', 0)} consecutive failures)")
        lines.append(f"  published intro points: {len(fe.get('published_intro_points', []))}")
        for ip in fe.get("published_intro_points", []):
            lines.append(f"    {ip['auth_key']}  from {ip['instance']}.onion")
        for desc in fe.get("descriptors", []):
            lines.append(f"  time period {desc['time_period']} ({desc.get('role', '')}): uploads")
            for up in desc.get("hsdirs", []):
                lines.append(f"    {up['hsdir']}  {up.get('state', '-'):9s} {up.get('result') or '-'}  "
                             f"{_age(up.get('confirmed_at') or up.get('attempted_at'), now)}  "
                             f"{up.get('intro_points', 0)} intro points")
        nxt = fe.get("next_publish_at")
        lines.append(f"  next planned publish: {iso(nxt) + ' (' + _age(nxt, now) + ')' if nxt else '-'}")
        if fe.get("note"):
            lines.append(f"  note: {fe['note']}")
    return "\n".join(lines)
