"""The operator's own writes, until its watches deliver them back.

Every object the operator writes comes back to it as a watch event carrying the resourceVersion its write
returned. That echo tells nothing new: the reconcile that wrote the object already worked from what the write
returned. Recognising it saves a reconcile of the owner per write (a child Job created, a Deployment applied),
which in a burst of new objects is half the queue's work.

The same record says when the body a watch last delivered for an object is older than the operator's own write
to it (a status patch whose event has not arrived yet): the reconcile then reads the object from the API server
instead of computing from that body and having its conditional write refused.

Only equality of resourceVersions is used, never their order (the API server promises none). An echo that
never comes (a watch that relisted, kopf delivering only the newest of several quick events) expires after
`ttl` seconds: until then the object is read afresh, which is always correct.

A watch event can arrive before the response of the write that caused it. So a write is marked as being sent
(`sending`). A child watch's event for an object with a write in flight waits for the response, at most
`IN_FLIGHT_WAIT` (past that it counts as someone else's change, which costs one reconcile). kopf's event
handlers run on its event loop and must not wait: their early event is remembered, and the write's response,
when it names that version, is taken as already echoed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

Identity = tuple[str, str, str]
"""(kind, namespace, name); namespace is empty for cluster-scoped kinds."""
IN_FLIGHT_WAIT = 1.0
"""Seconds a watch event waits for the response of a write in flight to the same object (normally
milliseconds: the API server answers the write as it sends the event)."""


class OwnWrites:
    """resourceVersions of the operator's latest writes to objects of the given kinds, awaiting their echo."""

    def __init__(self, kinds: Iterable[str], ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kinds = frozenset(kinds)
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._written: dict[Identity, tuple[str, float]] = {}
        self._in_flight: Counter[Identity] = Counter()
        self._early: dict[Identity, str] = {}
        """Versions delivered while a write to the object was in flight and not yet recorded."""
        self._next_prune = clock() + ttl

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """Record an object as a write returned it (kinds not watched are ignored)."""
        meta = obj.get("metadata") or {}
        kind, version = str(obj.get("kind") or ""), str(meta.get("resourceVersion") or "")
        if kind not in self.kinds or not version:
            return
        identity = (kind, str(meta.get("namespace") or ""), str(meta.get("name")))
        now = self._clock()
        with self._lock:
            if self._early.pop(identity, None) == version:
                return  # its echo came first
            self._written[identity] = (version, now)
            if now >= self._next_prune:
                self._written = {key: entry for key, entry in self._written.items() if now - entry[1] < self.ttl}
                self._next_prune = now + self.ttl

    @contextmanager
    def sending(self, identity: Identity) -> Iterator[None]:
        """Mark a write to `identity` as in flight until the block ends (record its result with `wrote` inside)."""
        if identity[0] not in self.kinds:
            yield
            return
        with self._lock:
            self._in_flight[identity] += 1
        try:
            yield
        finally:
            with self._answered:
                self._in_flight[identity] -= 1
                if self._in_flight[identity] <= 0:
                    del self._in_flight[identity]
                    self._early.pop(identity, None)
                self._answered.notify_all()

    def echo(self, identity: Identity, resource_version: str, wait: float = IN_FLIGHT_WAIT) -> bool:
        """Whether a watch event with this resourceVersion is the echo of the operator's latest write; waits up to
        `wait` seconds for the response of a write to the object still in flight."""
        with self._answered:
            if wait > 0:
                self._answered.wait_for(lambda: identity not in self._in_flight, timeout=wait)
            entry = self._written.get(identity)
            if entry is None or entry[0] != resource_version:
                if identity in self._in_flight:
                    self._early[identity] = resource_version
                return False
            del self._written[identity]
            return entry[1] > self._clock() - self.ttl

    def awaiting(self, identity: Identity) -> bool:
        """Whether the operator wrote this object and its watch has not yet delivered that write."""
        with self._lock:
            entry = self._written.get(identity)
            return entry is not None and self._clock() - entry[1] < self.ttl

    def __len__(self) -> int:
        """Writes recorded and not yet echoed or expired (for memory checks)."""
        with self._lock:
            return len(self._written)
