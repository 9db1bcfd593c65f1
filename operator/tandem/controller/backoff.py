"""How long to wait before retrying an API call that failed for a reason that may pass.

Pure: exponential backoff with full jitter (the AWS architecture blog's "full jitter", which client-go's
workqueue rate limiter approximates), capped, and never shorter than what the API server asked for in a
Retry-After header (429 Too Many Requests, 503 during a restart). Jitter spreads a thousand objects that failed
together, so they do not retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

BASE = 0.5
"""Seconds before the first retry, before jitter."""
CAP = 60.0
"""No retry waits longer than this (unless the API server asks for more)."""


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header in its delta-seconds form; None when absent or unreadable.

    The API server only ever sends delta-seconds; an HTTP-date is ignored rather than guessed.
    """
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def delay(
    attempt: int,
    server_asked: float | None = None,
    base: float = BASE,
    cap: float = CAP,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry).

    Uniform in [0, min(cap, base * 2**attempt)], then raised to `server_asked` when the server asked for more.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    wait = ceiling * rand()
    return max(wait, server_asked) if server_asked is not None else wait
