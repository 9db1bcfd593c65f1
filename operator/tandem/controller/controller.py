"""The running operator: one `Controller` holds everything it keeps between events, and its one reconcile path.

kopf watches Tandem's own kinds, tandem.controller.children the operator's children (with server-side label
selectors); both only add object keys to a work queue (tandem.controller.workqueue, client-go's semantics: a key
waits at most once, is processed by one worker at a time, comes back after a backoff when it failed). The
periodic resync adds keys to the same queue. Workers reconcile through one path, `Controller.reconcile_object`:

* one reconcile per object at a time (tandem.controller.exclusive), whichever thread asks;
* from the view tandem.controller.views states: the newest body the watch delivered, or a fresh read when the
  operator's own latest write has not come back yet, never an older body than one already acted on; status is
  written conditionally on the body's resourceVersion, so a 409 means "someone wrote after you read": read again
  and reconcile once more;
* API errors become retries: throttling and outages are temporary, retried after an exponential backoff
  with jitter that honours Retry-After (tandem.controller.backoff); other refusals are permanent until the next
  event.

A Controller is made by kopf's startup handler and kept in kopf's memo (tandem.controller.handlers), so nothing of
a running operator lives in a module: two operators in one process (a test's, one after another) share nothing
but the process-wide Prometheus metrics. Tests make one around their own API client and drive it without kopf.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, cast

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB, Resource
from tandem.config import OperatorConfig
from tandem.controller import backoff, metrics, resync
from tandem.controller.canary_metrics import Scraper
from tandem.controller.children import ChildWatch
from tandem.controller.events import EventRecorder
from tandem.controller.exclusive import Key
from tandem.controller.kube import Kube, NotLeading
from tandem.controller.own_writes import OwnWrites
from tandem.controller.reconcile import (
    Gone,
    Hold,
    Outcome,
    held,
    hold_after,
    reconcile_pool,
    reconcile_serving,
    reconcile_training,
)
from tandem.controller.views import Views, identity
from tandem.controller.workqueue import WorkQueue
from tandem.status.pools import selected

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = (409, 429, 500, 502, 503, 504)
KINDS: dict[str, Resource] = {r.kind: r for r in (COMPUTE_POOL, TRAINING_JOB, INFERENCE_SERVICE)}
CHILDREN = (
    ("Job", "tandem.dev/trainingjob", "TrainingJob"),
    ("Deployment", "tandem.dev/inferenceservice", "InferenceService"),
    ("Service", "tandem.dev/inferenceservice", "InferenceService"),
    ("PodDisruptionBudget", "tandem.dev/inferenceservice", "InferenceService"),
    ("HorizontalPodAutoscaler", "tandem.dev/inferenceservice", "InferenceService"),
)
"""(child kind, label naming its owner, owner kind): watched by children, the owner queued on change."""

CACHE_SYNC_SECONDS = 60.0
"""How long the workers wait at start for the child watches' first lists."""

Step = Callable[[Mapping[str, Any]], Outcome]


def key_of(kind: str, body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return kind, str(meta.get("namespace") or ""), str(meta["name"])


def spec_news(type: str | None, body: Mapping[str, Any]) -> bool:
    """A new object or a spec not yet reconciled: urgent work. Besides these, only kopf's initial listing
    (type None) calls for a reconcile; status-only changes (our own writes among them) do not."""
    if type == "ADDED":
        return True
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"))


class _Stale(Exception):
    """A write answered 409: the body the reconcile worked from is no longer current."""


class Controller:
    """One operator's state: its API client, the views of its objects, its work queue, child watches, event
    poster and resync, the holds on refused objects and the node summaries last seen.

    `fence`, when given, must be true for any write to be sent (the leader's lease check). `indexes` are kopf's
    pool and node indexes (live views kopf keeps up to date); they are read from once kopf says, through
    `indexes_listed`, that it has listed every indexed kind. Without them (outside kopf) pools and nodes are
    listed from the API server.
    """

    def __init__(
        self,
        api: client.ApiClient,
        config: OperatorConfig,
        fence: Callable[[], bool] | None = None,
        workers: int = 16,
        indexes: tuple[kopf.Index[str, Any], kopf.Index[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.own_writes = OwnWrites((*KINDS, *(kind for kind, _, _ in CHILDREN)))
        self.kube = Kube(api, fence=fence, stores=self.store_for, writes=self.own_writes)
        self.views = Views(self.own_writes)
        self.events = EventRecorder(lambda: self.kube)
        self.queue = WorkQueue(self.process, workers=workers, name="reconcile")
        self.child_watches: list[ChildWatch] = []
        self.holds: dict[Key, Hold] = {}
        """Objects whose child the API server refused, held until their backoff ends or their spec changes."""
        self.node_summaries: dict[str, dict[str, Any]] = {}
        """The last summary of each node seen by `node_changed` (kopf's index already holds the new one)."""
        self.scraper = Scraper()
        """The bounded pool of threads every canary scrape of this operator runs on, so hostile pods can hold no
        more of them than it has."""
        self.admissions = threading.Lock()
        """One gang admission at a time in this operator, so two gangs are not both started into room for one."""
        self._indexes = indexes
        self._indexed = False
        self._resync_stop = threading.Event()
        self._lifecycle = threading.Lock()
        """`start` and `stop` may run at once (kopf cancels a startup when it is stopped): whatever start has begun
        when stop runs is stopped, and start begins nothing after."""
        self._stopped = False
        self.running = threading.Event()
        """Set once `start` has started the workers and the resync, cleared by `stop`."""

    # ---- start and stop ---------------------------------------------------------------------------------

    def start(self, resync_interval: float) -> None:
        """Start posting events, watching children, the workers (once the children are listed) and the resync."""
        with self._lifecycle:
            if self._stopped:
                return
            self.events.start()
            # Children are watched with a server-side label selector (kopf would filter them on the client); their
            # stores are the reconcile's view of them, so workers start once each has listed (client-go's
            # WaitForCacheSync). A watch that cannot list in time is read around (Kube.read asks the API server).
            self.child_watches = [
                ChildWatch(self.kube.api, kind, label, owner, self.enqueue, namespace, own_writes=self.own_writes)
                for kind, label, owner in CHILDREN
                for namespace in (self.config.namespaces or (None,))
            ]
            for child_watch in self.child_watches:
                child_watch.start()
        deadline = time.monotonic() + CACHE_SYNC_SECONDS
        for child_watch in self.child_watches:
            while not child_watch.listed.is_set() and time.monotonic() < deadline:
                if self._resync_stop.wait(0.1):  # stopped meanwhile
                    return
            if not child_watch.listed.is_set():
                log.warning("%s watch has not listed within %ss; reading them from the API server meanwhile",
                            child_watch.kind, CACHE_SYNC_SECONDS)
        with self._lifecycle:
            if self._stopped:
                return
            self.queue.start()
            threading.Thread(
                target=self.resync_forever,
                args=(self._resync_stop, resync_interval),
                name="tandem-resync",
                daemon=True,
            ).start()
            self.running.set()

    def stop(self) -> None:
        with self._lifecycle:
            self._stopped = True
            self.running.clear()
            self._resync_stop.set()
            for child_watch in self.child_watches:
                child_watch.stop()
            self.queue.stop()
            self.events.stop()
            self.scraper.close()

    def store_for(self, kind: str, namespace: str) -> ChildWatch | None:
        """The child watch whose store holds children of this kind in this namespace, once it has listed."""
        for child_watch in self.child_watches:
            if child_watch.covers(kind, namespace):
                return child_watch
        return None

    def indexes_listed(self) -> None:
        """kopf has listed every indexed kind: pools and nodes are read from its indexes from now on."""
        self._indexed = True

    # ---- watch events: keep, forget, queue ----------------------------------------------------------------

    def enqueue(self, key: Key, urgent: bool = False) -> None:
        """Queue a key; `urgent` (a new object, a changed spec) goes before the follow-ups of children and the
        resync."""
        self.queue.add(key, urgent=urgent)

    def route(self, key: Key, type: str | None, body: Mapping[str, Any]) -> bool:
        """One watch event of a Tandem resource: keep its body (forget it when deleted) and queue it when it calls
        for a reconcile. False when the resource is gone."""
        if type == "DELETED":
            self.forget(*key)
            return False
        self.views.keep(key, body)
        news = spec_news(type, body)
        if type is None or news:
            self.enqueue(key, urgent=news)
        return True

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        """A deleted resource: its metrics series and what is remembered of it go."""
        key = (kind, namespace or "", name)
        metrics.forget(kind, namespace or "", name)
        self.views.forget(key)
        self.holds.pop(key, None)

    def node_changed(self, name: str, type: str | None, summary: dict[str, Any]) -> None:
        """A node came, went or changed: the pools it belongs to (or belonged to) count again.

        The summary seen last for the node says whether anything a pool counts changed: a heartbeat that changes
        nothing queues nothing.
        """
        before = self.node_summaries.get(name)
        if type == "DELETED":
            self.node_summaries.pop(name, None)
        else:
            self.node_summaries[name] = summary
        if before == summary and type != "DELETED":
            return
        for pool, spec in self.pools().items():
            if any(selected(spec.get("nodeSelector") or {}, node) for node in (before, summary) if node is not None):
                self.enqueue(("ComputePool", "", pool))

    # ---- the one reconcile path -------------------------------------------------------------------------

    def process(self, key: Hashable, attempt: int) -> float | None:
        """Reconcile one queued key from its kept body (or a read); the delay before it is retried, or None when done.

        An object whose child the API server refused is not reconciled again for the same spec until its hold ends
        (tandem.controller.reconcile.Hold): the resync and its children's events find it held, and one recheck is
        queued for the hold's end."""
        kind, namespace, name = cast(Key, key)
        view = self.views.kept((kind, namespace, name))
        if view is not None and held(self.holds.get(cast(Key, key)), identity(view), time.monotonic()):
            return None
        try:
            outcome = self.reconcile_object(kind, (kind, namespace, name), self.step_for(kind), view, attempt)
            if outcome is not None and outcome.refused is not None:
                hold = hold_after(self.holds.get(cast(Key, key)), outcome.refused, time.monotonic())
                self.holds[cast(Key, key)] = hold
                self.queue.add(key, delay=hold.until - time.monotonic())
            elif outcome is not None:
                self.holds.pop(cast(Key, key), None)
            if outcome is not None and outcome.recheck_after is not None:
                self.queue.add(key, delay=outcome.recheck_after)
        except kopf.TemporaryError as exc:
            delay = exc.delay if exc.delay is not None else backoff.delay(attempt)
            log.warning("%s %s/%s: %s; retrying in %.1fs", kind, namespace, name, exc, delay)
            return delay
        except kopf.PermanentError as exc:
            log.error("%s %s/%s: %s", kind, namespace, name, exc)
        except (urllib3.exceptions.HTTPError, NotLeading) as exc:
            log.warning("%s %s/%s: API server unavailable or not leading (%s)", kind, namespace, name, exc)
            return backoff.delay(attempt)
        except ApiException as exc:  # a read outside run_step's translation (the fresh read) refused for good
            log.warning("%s %s/%s: API server answered %s: %s", kind, namespace, name, exc.status, exc.reason)
        return None

    def reconcile_object(
        self, kind: str, key: Key, step: Step, body: Mapping[str, Any] | None = None, attempt: int = 0
    ) -> Outcome | None:
        """Reconcile one object under its lock, from the view tandem.controller.views states.

        `body` is the caller's view, or None to read the object now. A body behind the newest generation acted on
        is read again; a 409 from a write (the object changed since it was read) reads again and reconciles once
        more. `attempt` is kopf's retry count, for the backoff of a temporary error.
        """
        read = functools.partial(self.read, kind, key, attempt)
        with self.views.hold(key):
            current = self.views.current(key, body, read)
            for last in (False, True):
                if current is None:
                    self.views.exclusive.forget(key)
                    return None
                self.views.acting_on(key, current)
                try:
                    return self.run_step(
                        kind, current, functools.partial(step, current), attempt, conflicts_are_final=last
                    )
                except _Stale:
                    current = read()
            return None  # pragma: no cover - the loop returns or raises

    def read(self, kind: str, key: Key, attempt: int = 0) -> dict[str, Any] | None:
        """The object as the API server has it now; None when it is gone. Failures are kopf's temporary errors."""
        _, namespace, name = key
        try:
            return self.kube.get_custom(KINDS[kind], namespace or None, name)
        except ApiException as exc:
            if exc.status not in TRANSIENT_STATUSES:
                raise
            delay = backoff.delay(attempt, backoff.retry_after(exc.headers))
            raise kopf.TemporaryError(f"API server answered {exc.status}: {exc.reason}", delay=delay) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise kopf.TemporaryError(f"API server unavailable: {exc}", delay=backoff.delay(attempt)) from exc

    def run_step(
        self,
        kind: str,
        body: Mapping[str, Any],
        step: Callable[[], Outcome],
        attempt: int = 0,
        conflicts_are_final: bool = True,
    ) -> Outcome | None:
        """Run one reconcile with metrics, events and kopf's error semantics."""
        meta = body.get("metadata") or {}
        try:
            with metrics.reconciling(kind):
                outcome = step()
        except Gone as gone:
            # Its watch may never say so (a relist announces no deletion): what is kept of it goes now, so that no
            # child's event can bring its body back to work from.
            log.info("%s; forgotten, nothing created for it", gone)
            self.forget(kind, meta.get("namespace"), str(meta.get("name")))
            return None
        except ApiException as exc:
            if exc.status == 404:
                log.info("%s %s/%s is gone; nothing to reconcile", kind, meta.get("namespace"), meta.get("name"))
                return None
            if exc.status == 409 and not conflicts_are_final:
                raise _Stale() from exc
            if exc.status in TRANSIENT_STATUSES:
                delay = backoff.delay(attempt, backoff.retry_after(exc.headers))
                raise kopf.TemporaryError(f"API server answered {exc.status}: {exc.reason}", delay=delay) from exc
            message = f"API server refused a child object ({exc.status}): {(exc.body or exc.reason)!s:.500}"
            self.post_event(body, "Warning", "ApplyFailed", message)
            raise kopf.PermanentError(message) from exc
        except (urllib3.exceptions.HTTPError, NotLeading) as exc:
            raise kopf.TemporaryError(f"API server unavailable: {exc}", delay=backoff.delay(attempt)) from exc
        for event in outcome.events:
            self.post_event(body, event.type, event.reason, event.message)
        metrics.record_phase(kind, meta.get("namespace", ""), meta.get("name", ""), outcome.status.get("phase"))
        if kind == "InferenceService":
            rolled_back = sum(event.reason == "RolledBack" for event in outcome.events)
            metrics.record_service(meta.get("namespace", ""), meta.get("name", ""), body.get("spec") or {}, rolled_back)
        before = ((body.get("status") or {}).get("usage")) or {}
        pool = outcome.status.get("pool") or ((outcome.status.get("placement") or {}).get("pool")) or ""
        metrics.record_usage(kind, meta.get("namespace", ""), pool, before, outcome.status.get("usage") or {})
        return outcome

    def post_event(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """An Event about the resource, handed to tandem.controller.events' poster: kopf.event needs kopf's
        per-object task context, which the queue's workers do not run in, and a reconcile need not wait for an
        event to be stored."""
        self.events.record(body, type, reason, message)

    def step_for(self, kind: str) -> Step:
        if kind == "ComputePool":
            return lambda body: reconcile_pool(self.kube, body, self.nodes())
        if kind == "TrainingJob":
            return lambda body: reconcile_training(self.kube, body, self.pools(), self.config, self.admissions)
        return lambda body: reconcile_serving(self.kube, body, self.pools(), self.config, self.scraper)

    def pools(self) -> dict[str, Any]:
        """ComputePool specs by name, from kopf's index once kopf has listed them; else read."""
        if self._indexes is None or not self._indexed:
            return {pool["metadata"]["name"]: pool.get("spec") or {} for pool in self.kube.list_custom(COMPUTE_POOL)}
        return {name: next(iter(specs)) for name, specs in self._indexes[0].items() if specs}

    def nodes(self) -> list[dict[str, Any]] | None:
        """Every node's summary from kopf's node index; None outside kopf (reconcile_pool then lists)."""
        if self._indexes is None or not self._indexed:
            return None
        return [summary for summaries in self._indexes[1].values() for summary in summaries]

    # ---- periodic resync --------------------------------------------------------------------------------

    def resync_forever(self, stop: threading.Event, interval: float) -> None:
        """Periodic resync, as controller-runtime's SyncPeriod: refreshes pool status and usage of running
        work, and retries resources that wait for a pool or a model (tandem.controller.resync says which).

        It only adds keys to the work queue, so periodic work takes the same per-key path as events: the list says
        which objects to look at, the worker takes each under its lock from the newest body its watch delivered.
        kopf timers would put a finalizer on every resource (blocking deletion whenever the operator is not
        running) and run beside the object's handlers, not exclusively with them.
        """
        while not stop.wait(interval):
            try:
                self.resync_once()
            except (ApiException, urllib3.exceptions.HTTPError, NotLeading) as exc:
                log.warning("resync failed, API server unavailable (%s); retrying in %.0fs", exc, interval)
            except Exception:
                log.exception("resync failed; retrying in %.0fs", interval)

    def watched(self, resource: Resource) -> list[dict[str, Any]]:
        """Every object of a namespaced kind in the watched namespaces (paginated lists)."""
        namespaces = self.config.namespaces or (None,)
        return [item for namespace in namespaces for item in self.kube.list_custom(resource, namespace)]

    def resync_once(self) -> None:
        """One pass: list each kind (paginated) and queue the keys that wait on time; the queue reconciles them
        through the same per-key path as events, each from the newest body its watch delivered."""
        for pool in self.kube.list_custom(COMPUTE_POOL):
            self.enqueue(key_of("ComputePool", pool))
        due = [key_of("TrainingJob", job) for job in self.watched(TRAINING_JOB) if resync.training_due(job)]
        due += [key_of("InferenceService", s) for s in self.watched(INFERENCE_SERVICE) if resync.serving_due(s)]
        log.debug("resync: %d TrainingJobs and InferenceServices due", len(due))
        for key in due:
            self.enqueue(key)
