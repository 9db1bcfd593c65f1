"""Events posted in the background, identical ones aggregated, as client-go's EventRecorder posts them.

A reconcile that has something to say should not wait for the API server to store it: the worker hands the
event to a bounded queue and goes on, and one thread posts. Identical events (same object, type, reason and
message) within AGGREGATE_WINDOW are one Event whose count and lastTimestamp grow, as client-go's
EventCorrelator does: a PATCH of the Event already posted instead of a new object for every repetition. When
the API server cannot keep up, events beyond the queue's capacity are dropped and logged (client-go's
broadcaster drops too), never blocking a reconcile. Posting is best effort, as kopf's own: an event that
cannot be posted (its namespace is being deleted, the API server is away, this replica no longer leads) is
logged, and the reconcile that produced it stands.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from tandem.controller.kube import Kube, NotLeading

log = logging.getLogger(__name__)

AGGREGATE_WINDOW = 600.0
"""Seconds during which a repeated event counts on the Event already posted (client-go: 10 minutes)."""
REMEMBERED = 4096
"""Posted events remembered for aggregation, least recently used forgotten first (client-go's LRU size)."""
CAPACITY = 1000
"""Events waiting to be posted before new ones are dropped."""


@dataclass(frozen=True)
class _Record:
    involved: Mapping[str, Any]
    type: str
    reason: str
    message: str

    def key(self) -> tuple[str, str, str, str]:
        meta = self.involved.get("metadata") or {}
        return str(meta.get("uid") or meta.get("name")), self.type, self.reason, self.message


@dataclass
class _Posted:
    namespace: str
    name: str
    count: int
    first: float


class EventRecorder:
    """A queue of events and the thread that posts them through `kube()` (fenced like every write)."""

    def __init__(
        self,
        kube: Callable[[], Kube],
        capacity: int = CAPACITY,
        window: float = AGGREGATE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._queue: queue.Queue[_Record | None] = queue.Queue(maxsize=capacity)
        self._window = window
        self._clock = clock
        self._posted: OrderedDict[tuple[str, str, str, str], _Posted] = OrderedDict()
        self._thread: threading.Thread | None = None

    def record(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Queue an event about `involved` (a resource body); never blocks."""
        try:
            self._queue.put_nowait(_Record(reference(involved), type, reason, message))
        except queue.Full:
            meta = involved.get("metadata") or {}
            log.warning("event %s for %s/%s dropped: too many waiting", reason, meta.get("namespace"), meta.get("name"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tandem-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Post what is queued (within `timeout`), then end the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            try:
                self.post(record)
            except (ApiException, urllib3.exceptions.HTTPError, NotLeading) as exc:
                meta = record.involved.get("metadata") or {}
                log.warning(
                    "event %s for %s/%s not posted: %s", record.reason, meta.get("namespace"), meta.get("name"), exc
                )
            except Exception:  # the poster must outlive any surprise: events are best effort
                log.exception("posting event %s failed unexpectedly", record.reason)


    def post(self, record: _Record) -> None:
        """Post one event, or count it on the identical one posted within the window."""
        key = record.key()
        now = self._clock()
        posted = self._posted.get(key)
        if posted is not None and now - posted.first < self._window:
            self._posted.move_to_end(key)
            try:
                self._kube().count_event(posted.namespace, posted.name, posted.count + 1)
                posted.count += 1
                return
            except ApiException as exc:
                if exc.status != 404:  # 404: the Event expired (the API server's event TTL); post a new one
                    raise
        stored = self._kube().post_event(dict(record.involved), record.type, record.reason, record.message)
        meta = stored.get("metadata") or {}
        self._posted[key] = _Posted(str(meta.get("namespace")), str(meta.get("name")), 1, now)
        self._posted.move_to_end(key)
        while len(self._posted) > REMEMBERED:
            self._posted.popitem(last=False)


def reference(involved: Mapping[str, Any]) -> dict[str, Any]:
    """What an Event names of its object: a waiting event keeps this, not the object's whole body."""
    meta = involved.get("metadata") or {}
    return {
        "apiVersion": involved.get("apiVersion"),
        "kind": involved.get("kind"),
        "metadata": {key: meta.get(key) for key in ("name", "namespace", "uid")},
    }
