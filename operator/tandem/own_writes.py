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
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Identity = tuple[str, str, str]
"""(kind, namespace, name); namespace is empty for cluster-scoped kinds."""


class OwnWrites:
    """resourceVersions of the operator's latest writes to objects of the given kinds, awaiting their echo."""

    def __init__(self, kinds: Iterable[str], ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.kinds = frozenset(kinds)
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._written: dict[Identity, tuple[str, float]] = {}
        self._next_prune = clock() + ttl

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """Record an object as a write returned it (kinds not watched are ignored)."""
        meta = obj.get("metadata") or {}
        kind, version = str(obj.get("kind") or ""), str(meta.get("resourceVersion") or "")
        if kind not in self.kinds or not version:
            return
        now = self._clock()
        with self._lock:
            self._written[(kind, str(meta.get("namespace") or ""), str(meta.get("name")))] = (version, now)
            if now >= self._next_prune:
                self._written = {key: entry for key, entry in self._written.items() if now - entry[1] < self.ttl}
                self._next_prune = now + self.ttl

    def echo(self, identity: Identity, resource_version: str) -> bool:
        """Whether a watch event with this resourceVersion is the echo of the operator's latest write."""
        with self._lock:
            entry = self._written.get(identity)
            if entry is None or entry[0] != resource_version:
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
