"""A work queue of object keys, as client-go's workqueue: the per-key path every trigger goes through.

Triggers (watch events, the periodic resync, retries) only add a key; workers take keys and reconcile. The
queue guarantees what controller-runtime guarantees:

* a key waits in the queue at most once: ten events for one object before a worker gets to it are one
  reconcile (which reads the object fresh, so it sees what all ten announced);
* a key is processed by at most one worker at a time: added while being processed, it is queued again
  and taken only after the running reconcile ends;
* a failed key comes back after a delay (`add(key, delay)`), the caller's backoff; a key waits for at most one
  delay, the earliest asked (client-go's delaying queue), so rechecks asked at every look do not multiply;
* an urgent key (`add(key, urgent=True)`: an object that is new or whose spec changed) is taken before every
  other waiting key, as controller-runtime's priority queue puts fresh events before its resyncs. Under a
  burst the work that creates children is not queued behind the status updates that follow earlier ones, so
  the time from a create to its children stays short whatever the backlog of follow-ups.

Watch handlers never wait for a reconcile, so a slow API server does not back up kopf's event streams.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, process: Callable[[Hashable, int], float | None], workers: int = 8, name: str = "work") -> None:
        """`process(key, attempt)` reconciles one key; it returns a delay to retry after, or None when done."""
        self._process = process
        self._workers = workers
        self._name = name
        self._urgent: deque[Hashable] = deque()
        self._ready: deque[Hashable] = deque()
        self._dirty: dict[Hashable, bool] = {}
        """Keys waiting to be taken, and whether each is urgent. The deques may hold stale entries (a key
        promoted to urgent stays in `_ready` too); _take skips those, so neither deque is ever searched."""
        self._processing: set[Hashable] = set()
        self._attempts: dict[Hashable, int] = {}
        self._later: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        """When each delayed key is due: the one entry of `_later` that counts for it (others are stale)."""
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def add(self, key: Hashable, delay: float = 0.0, urgent: bool = False) -> None:
        """Queue `key` now, or after `delay` seconds; a key already waiting is not queued twice, but an urgent
        add moves it ahead."""
        with self._cond:
            if self._stopped:
                return
            if delay > 0:
                due = time.monotonic() + delay
                if self._due.get(key, due) < due:
                    return  # due sooner already
                self._due[key] = due
                heapq.heappush(self._later, (due, next(self._order), key))
            else:
                self._mark(key, urgent)
            self._cond.notify()

    def _mark(self, key: Hashable, urgent: bool) -> None:
        """Make `key` wait (once), in the urgent line if asked; a key being processed waits for _done."""
        waiting = key in self._dirty
        if waiting and (self._dirty[key] or not urgent):
            return
        self._dirty[key] = urgent
        if key not in self._processing:
            (self._urgent if urgent else self._ready).append(key)

    def __len__(self) -> int:
        with self._cond:
            return len(self._dirty) + len(self._due)

    def idle(self) -> bool:
        """Nothing queued, delayed or being processed."""
        with self._cond:
            return not (self._dirty or self._due or self._processing)

    def quiet(self) -> bool:
        """Nothing queued or being processed; rechecks may wait their delay (a canary on trial always has one)."""
        with self._cond:
            return not (self._dirty or self._processing)

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"tandem-{self._name}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking keys; workers finish the reconcile they are in (each API call has a deadline)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _promote_due(self) -> float | None:
        """Move delayed keys whose time has come to the ready queue; seconds until the next one, if any."""
        now = time.monotonic()
        while self._later and self._later[0][0] <= now:
            due, _, key = heapq.heappop(self._later)
            if self._due.get(key) == due:
                del self._due[key]
                self._mark(key, urgent=False)
        return self._later[0][0] - now if self._later else None

    def _take(self) -> Hashable | None:
        with self._cond:
            while not self._stopped:
                wait = self._promote_due()
                line = self._urgent or self._ready
                if not line:
                    self._cond.wait(wait)
                    continue
                key = line.popleft()
                if key not in self._dirty or key in self._processing:
                    continue  # stale: taken already from the other line, or waiting for its worker to finish
                del self._dirty[key]
                self._processing.add(key)
                return key
            return None

    def _done(self, key: Hashable) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:  # added again while it was being processed
                (self._urgent if self._dirty[key] else self._ready).append(key)
                self._cond.notify()

    def _work(self) -> None:
        while (key := self._take()) is not None:
            attempt = self._attempts.get(key, 0)
            try:
                retry = self._process(key, attempt)
            except Exception:
                log.exception("processing %s failed unexpectedly", key)
                retry = None
            with self._cond:
                if retry is None:
                    self._attempts.pop(key, None)
                else:
                    self._attempts[key] = attempt + 1
            self._done(key)
            if retry is not None:
                self.add(key, retry)
