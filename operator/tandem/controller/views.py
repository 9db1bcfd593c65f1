"""Which view of an object a reconcile works from, and the one object store the watches keep.

The rule, for a Tandem object (TrainingJob, InferenceService, ComputePool) reconciled under its key's lock
(tandem.controller.exclusive):

1. the newest body its watch delivered (`Views.kept`), kept for every object as an informer's store keeps it,
   so that a reconcile costs no read;
2. but read from the API server instead when the operator's own latest write to the object has not come back
   through the watch yet (tandem.controller.own_writes): the kept body predates that write, and a status computed
   from it would be refused;
3. and never from a body older than one already acted on (`Views.current`): a body whose metadata.generation is
   below the newest generation a reconcile of the same object (same uid) acted on is read again. A resync's
   list is therefore never a view: it only names keys;
4. a write that answers 409 (someone wrote after the view was taken) reads the object again and reconciles
   once more (tandem.controller.controller.Controller.reconcile_object); status is always written conditionally
   on the view's resourceVersion, so a stale view can cost a retry, never a lost update.

Children (Jobs, Deployments, ...) are read from their child watch's store (tandem.controller.children) once it has
listed, through tandem.controller.kube.Kube.read, and from the API server before. A child store that lags is
safe for the same reason as rule 4: children are created, adopted or applied idempotently.

The two kinds of records behind the rule live in their own modules and say nothing about views: own_writes
(which writes await their echo, with its expiry) and exclusive (the object's lock and the newest generation
acted on). This module is where they are combined.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

from tandem.controller.exclusive import Exclusive, Key
from tandem.controller.own_writes import OwnWrites

K = TypeVar("K", bound=Hashable)


class ObjectStore(Generic[K]):
    """Objects by key as compact JSON, decoded when read; safe to share between threads.

    A Job kept as compact JSON takes about 1.5 KiB where the decoded dict took 9 KiB; a Tandem object a few KiB.
    What to keep of an object (no managedFields, no pod template) is the caller's choice: the store keeps what it
    is given.
    """

    def __init__(self) -> None:
        self._objects: dict[K, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: K, obj: Mapping[str, Any]) -> None:
        packed = json.dumps(obj, separators=(",", ":")).encode()
        with self._lock:
            self._objects[key] = packed

    def get(self, key: K) -> dict[str, Any] | None:
        with self._lock:
            packed = self._objects.get(key)
        return None if packed is None else cast(dict[str, Any], json.loads(packed))

    def discard(self, key: K) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as kept: metadata.managedFields, which no reconcile reads, left out."""
    meta = {name: value for name, value in (body.get("metadata") or {}).items() if name != "managedFields"}
    return {**body, "metadata": meta}


def identity(body: Mapping[str, Any]) -> tuple[str, int]:
    """(uid, generation): what rule 3 compares."""
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or ""), int(meta.get("generation") or 0)


class Views:
    """The views of the Tandem objects one operator reconciles: their kept bodies, the operator's own writes
    awaiting their echo, and per object its lock and the newest generation acted on."""

    def __init__(self, own_writes: OwnWrites, exclusive: Exclusive | None = None) -> None:
        self.bodies: ObjectStore[Key] = ObjectStore()
        self.own_writes = own_writes
        self.exclusive = exclusive or Exclusive()

    def keep(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep the body a watch event delivered; it is also the echo of the operator's write of that version."""
        kept = without_managed_fields(body)
        self.bodies.put(key, kept)
        version = str(kept["metadata"].get("resourceVersion") or "")
        self.own_writes.echo(key, version, wait=0)  # never block kopf's event loop

    def kept(self, key: Key) -> dict[str, Any] | None:
        """Rules 1 and 2: the body to reconcile from without a read; None when none was delivered, or when the
        operator's own latest write to the object has not come back through the watch yet."""
        if self.own_writes.awaiting(key):
            return None
        return self.bodies.get(key)

    @contextmanager
    def hold(self, key: Key) -> Iterator[None]:
        """The object's lock: one reconcile of it at a time, whichever thread asks."""
        with self.exclusive.hold(key):
            yield

    def current(
        self, key: Key, body: Mapping[str, Any] | None, read: Callable[[], dict[str, Any] | None]
    ) -> Mapping[str, Any] | None:
        """Rule 3 (call while holding the key): `body`, unless there is none or it is older than a body already
        acted on; then what `read()` returns (None: the object is gone)."""
        if body is None or self.exclusive.behind(key, *identity(body)):
            return read()
        return body

    def acting_on(self, key: Key, body: Mapping[str, Any]) -> None:
        """Record that a reconcile acts on this body (call while holding the key)."""
        self.exclusive.acted(key, *identity(body))

    def forget(self, key: Key) -> None:
        """The object is gone: its kept body and the generation acted on go."""
        self.exclusive.forget(key)
        self.bodies.discard(key)
