"""Adaptive intra-op parallelism: a run that starts while the server is idle gets every core.

One intra-op thread a run and one run per CPU is the fastest configuration under load, but a lone request then
leaves the other cores idle, while a thread per CPU for every run oversubscribes the cores under load
(benchmarks/results/serve-defaults.md has the figures). So the model keeps two onnxruntime sessions of the
same bytes: a narrow one (one thread, shared by concurrent runs) and a wide one (a thread per CPU). A run takes
the wide session when it starts with no other run in progress, no other infer request admitted (none decoded
or waiting for a run) and no request's run in the last `HOLD_S` having found either; every other run takes the
narrow one.

The admitted requests matter as much as the runs: a server bound by request parsing often has no run in
progress between two even under load, while the next requests are already admitted. Over gRPC even that is
not enough: calls waiting inside grpcio are invisible until it hands them to Python one at a time, so some runs
under load still found the server looking idle. So a run is alone only when, besides, no request run in the
last `HOLD_S` found company: a server under load never looks idle for that long, while at concurrency 1 every
run is alone. The choice is made once, at a run's start, so a run that began alone keeps its threads when a
second request arrives; while they overlap the cores are oversubscribed by one thread.

CPU provider only: a GPU model keeps one session (its device memory, its own parallelism). The cost is memory:
the wide session holds its own copy of the weights and of their prepacked form (sharing the initializers
through SessionOptions.add_initializer saved nothing). The server opens it only where its memory budget holds
it (`budget.WIDE_SESSION_SHARE`, logged when not); a pod that cannot afford it otherwise sets --threads, which
opens one session for every run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HOLD_S = 0.1
"""After a request's run found another run or request, how long runs stay narrow: at a few hundred requests a
second and more, far longer than the gaps between calls, and short enough that a lone client gets every core
again at once."""


class LoneRunSessions:
    """Hands out the session a run should use: `wide` when the server is idle at its start, else `narrow`."""

    def __init__(
        self,
        narrow: Any,
        wide: Any | None = None,
        admitted: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.narrow = narrow
        """The session of the configured intra-op threads; also the one to read signature and provider from."""
        self.wide = wide
        """The session with a thread per CPU, or None when every run uses `narrow` (explicit threads, GPU)."""
        self.admitted = admitted
        """Infer requests admitted and not yet answered, this run's own included (DataPlane.in_flight)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._crowded_at = -math.inf
        """When a request's run last started beside another run or request."""

    @property
    def running(self) -> int:
        """Runs in progress now."""
        return self._running

    @contextmanager
    def session(self) -> Iterator[Any]:
        """The session for one run, counted as in progress until the block ends; thread-safe."""
        with self._lock:
            admitted, now = self.admitted(), self._clock()
            crowded = self._running > 0 or admitted > 1
            if crowded and admitted > 0:  # a run outside any request (the load-time warm-up) is not traffic
                self._crowded_at = now
            alone = not crowded and now - self._crowded_at >= HOLD_S
            self._running += 1
        try:
            yield self.wide if alone and self.wide is not None else self.narrow
        finally:
            with self._lock:
                self._running -= 1
