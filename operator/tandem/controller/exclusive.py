"""One reconcile per object at a time, and none from a view older than one already acted on.

kopf serialises the handlers of one object, but a TrainingJob is also reconciled from its child Job's events
(another object's worker) and from the periodic resync (another thread). Every path takes the object's lock
here first, as controller-runtime's work queue guarantees that a key is never processed twice at once.

Holding the lock is not enough when the body in hand is old: a resync pass works from a list, a watch event
may have waited in a queue. `Exclusive` remembers the newest metadata.generation it let act on each object (a
number the API server only ever increases, on every spec change), so a caller can tell that its body predates
a spec someone already applied and read the object again instead of applying the older spec.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

Key = tuple[str, str, str]
"""(kind, namespace, name); namespace is empty for cluster-scoped kinds."""


@dataclass
class _Slot:
    lock: threading.Lock
    users: int = 0


class Exclusive:
    """Per-object locks (created on demand, dropped when unused) and the newest generation acted on."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._slots: dict[Key, _Slot] = {}
        self._acted: dict[Key, tuple[str, int]] = {}

    @contextmanager
    def hold(self, key: Key) -> Iterator[None]:
        """Block until no one else reconciles `key`, then hold it for the body of the with-block."""
        with self._guard:
            slot = self._slots.setdefault(key, _Slot(threading.Lock()))
            slot.users += 1
        try:
            with slot.lock:
                yield
        finally:
            with self._guard:
                slot.users -= 1
                if slot.users == 0:
                    del self._slots[key]

    def behind(self, key: Key, uid: str, generation: int) -> bool:
        """Whether a body of this uid and generation is older than one already acted on.

        A new uid (the object was deleted and created again under the same name) is never behind.
        """
        acted = self._acted.get(key)
        return acted is not None and acted[0] == uid and generation < acted[1]

    def acted(self, key: Key, uid: str, generation: int) -> None:
        """Record that a reconcile of this generation ran (call while holding the key)."""
        known = self._acted.get(key)
        if known is None or known[0] != uid or generation > known[1]:
            self._acted[key] = (uid, generation)

    def forget(self, key: Key) -> None:
        """The object is gone: drop what is remembered of it."""
        self._acted.pop(key, None)

    def waiting(self, key: Key) -> int:
        """How many reconciles of `key` wait for the one that holds it."""
        with self._guard:
            slot = self._slots.get(key)
            return max(0, slot.users - 1) if slot is not None else 0

    def busy(self) -> int:
        """Keys held or waited for right now (for tests and metrics)."""
        with self._guard:
            return len(self._slots)
