"""Standby takeover: a second balancer that does everything but upload, until the primary's
descriptors are missing or stale on the HSDirs for `standby.takeover_after` seconds; then it
uploads, and it stops again when the primary is back.

What the standby sees is what readers see: read-back (onion/readback.py) of the frontend's
current descriptor from each responsible HSDir. A served descriptor is *fresh* when it
verifies, its revision counter says it was built within `standby.stale_after` (the counter
is tor's OPE of the seconds since the SRV run began, under a key derived from the blinded
key: anyone holding the master key can read the build time back from it), and every intro
point it lists belongs to an instance that is up now (a valid descriptor and passing
probes). The primary is failing while fewer than half of the HSDirs read back serve a
fresh descriptor; after `takeover_after` seconds of that, the standby takes over.

While it publishes, a read-back that finds a revision above the standby's own upload to
that HSDir, which the standby did not make, is the primary publishing again: the standby
goes back to standing by (its descriptors stay until the primary's replace them).

Revision counters keep the two from fighting: both compute tor's OPE counter from the same
blinded key and the wall clock (onion.descriptor.revision_counter), so whichever uploads
later has the higher revision and the HSDir keeps it; neither's uploads are refused for
long (at most the clock difference between the machines).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

log = logging.getLogger("onion.standby")

STANDING_BY, FAILING, ACTIVE = "standing by", "primary failing", "active"


@dataclass
class StandbyState:
    state: str = STANDING_BY
    since: float | None = None        # monotonic: when the current state began
    reason: str = ""
    takeovers: int = 0


def judge(served: Iterable, usable_keys: frozenset, wall_now: float, stale_after: float) -> tuple[int, int, str]:
    """(fresh, read back, why not) over the read-back records of the current descriptor's
    HSDirs (onion.readback.Served)."""
    checked = fresh = 0
    missing = stale = dead = 0
    for rec in served:
        if rec.checked_at is None or rec.state == "failed":
            continue
        checked += 1
        if rec.revision is None:
            missing += 1
        elif rec.built_at is not None and wall_now - rec.built_at > stale_after:
            stale += 1
        elif usable_keys and not rec.intro_keys <= usable_keys:
            dead += 1
        else:
            fresh += 1
    why = ", ".join(f"{n} {what}" for n, what in ((missing, "serve none"), (stale, "serve a stale one"),
                                                  (dead, "list intro points of instances that are down or gone"))
                    if n)
    return fresh, checked, why


def step(st: StandbyState, name: str, fresh: int, checked: int, why: str, primary_back: bool,
         now: float, takeover_after: float) -> bool:
    """Advance the state; True when it changed."""
    if st.state == ACTIVE:
        if primary_back:
            log.warning("frontend %s: the primary publishes again (HSDirs serve its newer revision): "
                        "standing by", name)
            st.state, st.since, st.reason = STANDING_BY, now, "primary back"
            return True
        return False
    failing = checked > 0 and fresh * 2 < checked
    if not failing:
        if st.state == FAILING:
            log.info("frontend %s: the primary's descriptors are fresh again", name)
            st.state, st.since, st.reason = STANDING_BY, now, ""
            return True
        return False
    reason = f"{checked - fresh} of {checked} HSDirs read back {why or 'serve nothing fresh'}"
    if st.state == STANDING_BY:
        st.state, st.since, st.reason = FAILING, now, reason
        log.warning("frontend %s: primary failing? %s; taking over in %.0f s if it lasts", name, reason,
                    takeover_after)
        return True
    st.reason = reason
    if now - (st.since or now) >= takeover_after:
        st.state, st.since = ACTIVE, now
        st.takeovers += 1
        log.error("frontend %s: taking over from the primary: %s for %.0f s", name, reason, takeover_after)
        return True
    return False
