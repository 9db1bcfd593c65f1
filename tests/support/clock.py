"""A clock for code that takes one to call (`clock=time.monotonic` by default), so that tests move time by hand
instead of sleeping through it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clock:
    """Reads `now`, which the test sets or advances; it starts well clear of zero, as a monotonic clock does."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now
