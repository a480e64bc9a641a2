"""A progress line every so often during a wait that would otherwise be silent.

`lab up` waits up to minutes for tor to bootstrap and for the frontend to answer; a
newcomer watching a terminal that says nothing for a minute assumes it hangs. A Heartbeat
is told the state of the wait on every poll and passes a line on at most every `every`
seconds (never on the first poll: short waits stay quiet)."""
from __future__ import annotations

import time
from typing import Callable

HEARTBEAT_SECONDS = 15.0


class Heartbeat:
    def __init__(self, progress: Callable[[str], None] | None, what: str, *,
                 every: float = HEARTBEAT_SECONDS, clock: Callable[[], float] | None = None) -> None:
        self.progress = progress
        self.what = what
        self.every = every
        self.clock = clock or time.monotonic
        self.start = self.clock()
        self.last = self.start

    def beat(self, state: str) -> None:
        """Called on every poll of the wait; `state` says where it stands now."""
        if self.progress is None:
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.progress(f"{self.what}: still waiting ({now - self.start:.0f} s): {state}")

    def spoke(self) -> None:
        """Another line was just shown: the next heartbeat is `every` seconds from now."""
        self.last = self.clock()
