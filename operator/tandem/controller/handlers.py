"""kopf registrations: when to reconcile, nothing about how.

kopf watches Tandem's own kinds, tandem.controller.children the operator's children (with server-side label
selectors); both only add object keys to a work queue (tandem.controller.workqueue, client-go's semantics: a key
waits at most once, is processed by one worker at a time, comes back after a backoff when it failed). The
periodic resync adds keys to the same queue. Workers reconcile through one path, `reconcile_object`:

* one reconcile per object at a time (tandem.controller.exclusive), whichever thread asks;
* from the newest body the watch delivered for it (kept for every object, as an informer's store), or a fresh
  read when the operator's own latest write to it has not come back yet (own_writes), never from an older
  body than one already acted on (a resync's list only names keys); status is written conditionally on the
  body's resourceVersion, so a 409 means "someone wrote after you read": read again and reconcile once more;
* API errors become retries: throttling and outages are temporary, retried after an exponential backoff
  with jitter that honours Retry-After (tandem.controller.backoff); other refusals are permanent until the next event.

No kopf change handlers (create/update/resume): the reconcile is level-triggered, so an event handler that
compares metadata.generation with status.observedGeneration says as much, and kopf then writes no progress
or diff-base annotations of its own: the operator's only writes are the fenced ones of tandem.controller.kube.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, cast

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from tandem.api.resources import COMPUTE_POOL, GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION, Resource
from tandem.config import OperatorConfig
from tandem.controller import backoff, metrics, resync
from tandem.controller.children import ChildWatch
from tandem.controller.events import EventRecorder
from tandem.controller.exclusive import Exclusive, Key
from tandem.controller.kube import Kube, NotLeading, api_client, load_config
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
from tandem.controller.workqueue import WorkQueue
from tandem.status.pools import node_summary, selected

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

_state: dict[str, Any] = {}
exclusive = Exclusive()
_bodies: dict[Key, bytes] = {}
"""The newest body kopf's watches delivered for each Tandem object, as compact JSON (a few KiB each, a tenth of
the same dict's size): the reconcile's view of its object without a read per reconcile."""
_bodies_lock = threading.Lock()
_own_writes = OwnWrites((*KINDS, *(kind for kind, _, _ in CHILDREN)))
_holds: dict[Key, Hold] = {}
"""Objects whose child the API server refused, held until their backoff ends or their spec changes."""
_node_summaries: dict[str, dict[str, Any]] = {}
"""The last summary of each node seen by node_event (kopf's index already holds the new one when it runs)."""

Step = Callable[[Mapping[str, Any]], Outcome]


def kube() -> Kube:
    kube_client: Kube = _state["kube"]
    return kube_client


def config() -> OperatorConfig:
    operator_config: OperatorConfig = _state["config"]
    return operator_config


def set_fence(fence: Callable[[], bool] | None) -> None:
    """Writes are sent only while `fence()` is true (leader's lease check); call before kopf starts."""
    _state["fence"] = fence


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own login: service account in a pod, else the kubeconfig that $KUBECONFIG names now."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff bases live in annotations: the strict status schema would prune kopf's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.execution.max_workers = 16
    # Every kopf request has a deadline too: a hung API server costs a request, not the operator. Watches
    # end server-side after 300 s; the client gives up a little later, and sooner when nothing (not even a
    # bookmark) arrives for inactivity_timeout.
    settings.networking.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 5
    settings.watching.chunk_size = 500
    load_config()
    _state["kube"] = Kube(api_client(), fence=_state.get("fence"), stores=_store_for, writes=_own_writes)
    _state["config"] = OperatorConfig.from_env()
    recorder = EventRecorder(kube)
    recorder.start()
    _state["events"] = recorder
    stop = threading.Event()
    _state["resync_stop"] = stop
    interval = float(os.environ.get("TANDEM_RESYNC_SECONDS", "30"))
    work = WorkQueue(process, workers=int(os.environ.get("TANDEM_WORKERS", "16")), name="reconcile")
    _state["queue"] = work
    # Children are watched with a server-side label selector (kopf would filter them on the client); their
    # stores are the reconcile's view of them, so workers start once each has listed (client-go's
    # WaitForCacheSync). A watch that cannot list in time is read around (Kube.read asks the API server).
    watches = [
        ChildWatch(kube().api, kind, label, owner, enqueue, namespace, own_writes=_own_writes)
        for kind, label, owner in CHILDREN
        for namespace in (config().namespaces or (None,))
    ]
    _state["child_watches"] = watches
    for child_watch in watches:
        child_watch.start()
    deadline = time.monotonic() + CACHE_SYNC_SECONDS
    for child_watch in watches:
        if not child_watch.listed.wait(max(0.0, deadline - time.monotonic())):
            log.warning("%s watch has not listed within %ss; reading them from the API server meanwhile",
                        child_watch.kind, CACHE_SYNC_SECONDS)
    work.start()
    threading.Thread(target=resync_forever, args=(stop, interval), name="tandem-resync", daemon=True).start()


def _store_for(kind: str, namespace: str) -> ChildWatch | None:
    """The child watch whose store holds children of this kind in this namespace, once it has listed."""
    for child_watch in _state.get("child_watches") or []:
        if child_watch.covers(kind, namespace):
            return child_watch
    return None


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    stop: threading.Event | None = _state.get("resync_stop")
    if stop is not None:
        stop.set()
    for child_watch in _state.get("child_watches") or []:
        child_watch.stop()
    work: WorkQueue | None = _state.get("queue")
    if work is not None:
        work.stop()
    recorder: EventRecorder | None = _state.get("events")
    if recorder is not None:
        recorder.stop()


# ---- the one reconcile path -------------------------------------------------------------------------


def key_of(kind: str, body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return kind, str(meta.get("namespace") or ""), str(meta["name"])


def _fresh(kind: str, key: Key, attempt: int = 0) -> dict[str, Any] | None:
    """The object as the API server has it now; None when it is gone. Failures are kopf's temporary errors."""
    _, namespace, name = key
    try:
        return kube().get_custom(KINDS[kind], namespace or None, name)
    except ApiException as exc:
        if exc.status not in TRANSIENT_STATUSES:
            raise
        delay = backoff.delay(attempt, backoff.retry_after(exc.headers))
        raise kopf.TemporaryError(f"API server answered {exc.status}: {exc.reason}", delay=delay) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise kopf.TemporaryError(f"API server unavailable: {exc}", delay=backoff.delay(attempt)) from exc


def reconcile_object(
    kind: str, key: Key, step: Step, body: Mapping[str, Any] | None = None, attempt: int = 0
) -> Outcome | None:
    """Reconcile one object under its lock, from a view no older than any already acted on.

    `body` is the caller's view, or None to read the object now. A body behind the newest generation acted on
    is read again; a 409 from a write (the object changed since it was read) reads again and reconciles once
    more. `attempt` is kopf's retry count, for the backoff of a temporary error.
    """
    with exclusive.hold(key):
        current = body
        if current is None or exclusive.behind(key, *_identity(current)):
            current = _fresh(kind, key, attempt)
        for last in (False, True):
            if current is None:
                exclusive.forget(key)
                return None
            exclusive.acted(key, *_identity(current))
            try:
                return _run(kind, current, functools.partial(step, current), attempt, conflicts_are_final=last)
            except _Stale:
                current = _fresh(kind, key, attempt)
        return None  # pragma: no cover - the loop returns or raises


def _identity(body: Mapping[str, Any]) -> tuple[str, int]:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or ""), int(meta.get("generation") or 0)


class _Stale(Exception):
    """A write answered 409: the body the reconcile worked from is no longer current."""


def _run(
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
        _forget(kind, meta.get("namespace"), str(meta.get("name")))
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
        _post_event(body, "Warning", "ApplyFailed", message)
        raise kopf.PermanentError(message) from exc
    except (urllib3.exceptions.HTTPError, NotLeading) as exc:
        raise kopf.TemporaryError(f"API server unavailable: {exc}", delay=backoff.delay(attempt)) from exc
    for event in outcome.events:
        _post_event(body, event.type, event.reason, event.message)
    metrics.record_phase(kind, meta.get("namespace", ""), meta.get("name", ""), outcome.status.get("phase"))
    before = ((body.get("status") or {}).get("usage")) or {}
    pool = outcome.status.get("pool") or ((outcome.status.get("placement") or {}).get("pool")) or ""
    metrics.record_usage(kind, meta.get("namespace", ""), pool, before, outcome.status.get("usage") or {})
    return outcome


def _post_event(body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """An Event about the resource, handed to tandem.controller.events' poster: kopf.event needs kopf's per-object task
    context, which the queue's workers do not run in, and a reconcile need not wait for an event to be stored."""
    recorder: EventRecorder = _state["events"]
    recorder.record(body, type, reason, message)


def _forget(kind: str, namespace: str | None, name: str) -> None:
    """A deleted resource: its metrics series and what is remembered of it go."""
    metrics.forget(kind, namespace or "", name)
    exclusive.forget((kind, namespace or "", name))
    _holds.pop((kind, namespace or "", name), None)
    with _bodies_lock:
        _bodies.pop((kind, namespace or "", name), None)


# ---- periodic resync --------------------------------------------------------------------------------


def resync_forever(stop: threading.Event, interval: float) -> None:
    """Periodic resync, as controller-runtime's SyncPeriod: refreshes pool status and usage of running
    work, and retries resources that wait for a pool or a model (tandem.controller.resync says which).

    It only adds keys to the work queue, so periodic work takes the same per-key path as events: the list says
    which objects to look at, the worker takes each under its lock from the newest body its watch delivered.
    kopf timers would put a finalizer on every resource (blocking deletion whenever the operator is not
    running) and run beside the object's handlers, not exclusively with them.
    """
    while not stop.wait(interval):
        try:
            resync_once()
        except (ApiException, urllib3.exceptions.HTTPError, NotLeading) as exc:
            log.warning("resync failed, API server unavailable (%s); retrying in %.0fs", exc, interval)
        except Exception:
            log.exception("resync failed; retrying in %.0fs", interval)


def _watched(resource: Resource) -> list[dict[str, Any]]:
    namespaces = config().namespaces or (None,)
    return [item for namespace in namespaces for item in kube().list_custom(resource, namespace)]


def resync_once() -> None:
    """One pass: list each kind (paginated) and queue the keys that wait on time; the queue reconciles them
    through the same per-key path as events, each from the newest body its watch delivered."""
    for pool in kube().list_custom(COMPUTE_POOL):
        enqueue(key_of("ComputePool", pool))
    due = [key_of("TrainingJob", job) for job in _watched(TRAINING_JOB) if resync.training_due(job)]
    due += [key_of("InferenceService", s) for s in _watched(INFERENCE_SERVICE) if resync.serving_due(s)]
    log.debug("resync: %d TrainingJobs and InferenceServices due", len(due))
    for key in due:
        enqueue(key)


# ---- the work queue ---------------------------------------------------------------------------------


def queue() -> WorkQueue:
    work: WorkQueue = _state["queue"]
    return work


def enqueue(key: Key, urgent: bool = False) -> None:
    """Queue a key; `urgent` (a new object, a changed spec) goes before the follow-ups of children and the
    resync."""
    queue().add(key, urgent=urgent)


def _keep(key: Key, body: Mapping[str, Any]) -> None:
    """Keep the body a watch event delivered (without managedFields, which the reconcile never reads)."""
    meta = {name: value for name, value in (body.get("metadata") or {}).items() if name != "managedFields"}
    kept = json.dumps({**body, "metadata": meta}, separators=(",", ":")).encode()
    with _bodies_lock:
        _bodies[key] = kept
    _own_writes.echo(key, str(meta.get("resourceVersion") or ""), wait=0)  # never block kopf's event loop


def _view(key: Key) -> dict[str, Any] | None:
    """The body to reconcile from without a read: None when none was delivered, or when the operator's own
    latest write to the object has not come back through the watch yet (the kept body predates it)."""
    if _own_writes.awaiting(key):
        return None
    with _bodies_lock:
        kept = _bodies.get(key)
    return None if kept is None else cast(dict[str, Any], json.loads(kept))


def process(key: Hashable, attempt: int) -> float | None:
    """Reconcile one queued key from its watched body (or a read); the delay before it is retried, or None when done.

    An object whose child the API server refused is not reconciled again for the same spec until its hold ends
    (tandem.controller.reconcile.Hold): the resync and its children's events find it held, and one recheck is queued for
    the hold's end."""
    kind, namespace, name = cast(Key, key)
    view = _view((kind, namespace, name))
    if view is not None and held(_holds.get(cast(Key, key)), _identity(view), time.monotonic()):
        return None
    try:
        outcome = reconcile_object(kind, (kind, namespace, name), _step(kind), view, attempt)
        if outcome is not None and outcome.refused is not None:
            hold = hold_after(_holds.get(cast(Key, key)), outcome.refused, time.monotonic())
            _holds[cast(Key, key)] = hold
            queue().add(key, delay=hold.until - time.monotonic())
        elif outcome is not None:
            _holds.pop(cast(Key, key), None)
        if outcome is not None and outcome.recheck_after is not None:
            queue().add(key, delay=outcome.recheck_after)
    except kopf.TemporaryError as exc:
        delay = exc.delay if exc.delay is not None else backoff.delay(attempt)
        log.warning("%s %s/%s: %s; retrying in %.1fs", kind, namespace, name, exc, delay)
        return delay
    except kopf.PermanentError as exc:
        log.error("%s %s/%s: %s", kind, namespace, name, exc)
    except (urllib3.exceptions.HTTPError, NotLeading) as exc:
        log.warning("%s %s/%s: API server unavailable or not leading (%s)", kind, namespace, name, exc)
        return backoff.delay(attempt)
    except ApiException as exc:  # a read outside _run's translation (the fresh read) refused for good
        log.warning("%s %s/%s: API server answered %s: %s", kind, namespace, name, exc.status, exc.reason)
    return None


def pools() -> dict[str, Any]:
    """ComputePool specs by name, from kopf's index (kopf fills it before any other handler runs)."""
    index: kopf.Index[str, Any] | None = _state.get("pool_index")
    if index is None:  # outside kopf (tests, tools): read them
        return {pool["metadata"]["name"]: pool.get("spec") or {} for pool in kube().list_custom(COMPUTE_POOL)}
    return {name: next(iter(specs)) for name, specs in index.items() if specs}


def nodes() -> list[dict[str, Any]] | None:
    """Every node's summary from kopf's node index; None outside kopf (reconcile_pool then lists)."""
    index: kopf.Index[str, Any] | None = _state.get("node_index")
    if index is None:
        return None
    return [summary for summaries in index.values() for summary in summaries]


def _step(kind: str) -> Step:
    if kind == "ComputePool":
        return lambda body: reconcile_pool(kube(), body, nodes())
    if kind == "TrainingJob":
        return lambda body: reconcile_training(kube(), body, pools(), config())
    return lambda body: reconcile_serving(kube(), body, pools(), config())


def _spec_news(type: str | None, body: Mapping[str, Any]) -> bool:
    """A new object or a spec not yet reconciled: urgent work. Besides these, only kopf's initial listing
    (type None) calls for a reconcile; status-only changes (our own writes among them) do not."""
    if type == "ADDED":
        return True
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") != (body.get("metadata") or {}).get("generation"))


# ---- kopf registrations: watch events only add keys to the queue ------------------------------------


@kopf.index(GROUP, VERSION, "computepools")
def pool_index(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Any]:
    return {name: dict(spec)}


@kopf.index("", "v1", "nodes")
def node_index(name: str, labels: Mapping[str, str], status: Mapping[str, Any], **_: Any) -> dict[str, Any]:
    return {name: node_summary(name, labels, status)}


@kopf.index(GROUP, VERSION, "inferenceservices")
def services_by_training_job(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], tuple[str, str | None]] | None:
    source = (spec.get("model") or {}).get("fromTrainingJob")
    if not source:
        return None
    served = (status.get("model") or {}).get("sha256")
    return {(namespace, source["name"]): (name, served)}


def _route(key: Key, type: str | None, body: Mapping[str, Any]) -> bool:
    """One watch event of a Tandem resource: keep its body (forget it when deleted) and queue it when it calls
    for a reconcile. False when the resource is gone."""
    if type == "DELETED":
        _forget(*key)
        return False
    _keep(key, body)
    news = _spec_news(type, body)
    if type is None or news:
        enqueue(key, urgent=news)
    return True


@kopf.index(GROUP, VERSION, "inferenceservices")
def service_keys(namespace: str, name: str, **_: Any) -> dict[None, tuple[str, str]]:
    """Every InferenceService, for a pool change that may move them."""
    return {None: (namespace, name)}


@kopf.on.event(GROUP, VERSION, "computepools")
async def pool_event(
    name: str,
    type: str | None,
    body: kopf.Body,
    pool_index: kopf.Index[str, Any],
    service_keys: kopf.Index[None, tuple[str, str]],
    **_: Any,
) -> None:
    """A pool's spec came, changed or went: besides the pool, every InferenceService decides again (a price,
    selector or toleration it was placed by may have changed; a cheaper pool may exist), since a Ready
    service is otherwise reconciled only when its own objects change or its usage is due."""
    _state["pool_index"] = pool_index
    changed = type == "DELETED" or _spec_news(type, body)
    _route(("ComputePool", "", name), type, body)
    if changed:
        for namespace, service in service_keys.get(None, []):
            enqueue(("InferenceService", namespace, service))


@kopf.on.event("", "v1", "nodes")
async def node_event(
    name: str,
    type: str | None,
    labels: Mapping[str, str],
    status: Mapping[str, Any],
    node_index: kopf.Index[str, Any],
    pool_index: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """A node came, went or changed: the pools it belongs to (or belonged to) count again, from the index.

    The summary this handler saw last for the node says whether anything a pool counts changed (kopf has
    already replaced it in the index): a heartbeat that changes nothing queues nothing.
    """
    _state["node_index"] = node_index
    _state["pool_index"] = pool_index
    summary = node_summary(name, labels, status)
    before = _node_summaries.get(name)
    if type == "DELETED":
        _node_summaries.pop(name, None)
    else:
        _node_summaries[name] = summary
    if before == summary and type != "DELETED":
        return
    for pool, spec in pools().items():
        if any(selected(spec.get("nodeSelector") or {}, node) for node in (before, summary) if node is not None):
            enqueue(("ComputePool", "", pool))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def training_event(
    namespace: str,
    name: str,
    type: str | None,
    body: kopf.Body,
    status: Mapping[str, Any],
    services_by_training_job: kopf.Index[tuple[str, str], tuple[str, str | None]],
    pool_index: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """Reconcile a new or changed TrainingJob; roll its new model out to the services that follow it."""
    _state["pool_index"] = pool_index
    if not _route(("TrainingJob", namespace, name), type, body):
        return
    produced = (status.get("model") or {}).get("sha256")
    if produced:
        for service, served in services_by_training_job.get((namespace, name), []):
            if served != produced:
                enqueue(("InferenceService", namespace, service))


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def serving_event(
    namespace: str, name: str, type: str | None, body: kopf.Body, pool_index: kopf.Index[str, Any], **_: Any
) -> None:
    _state["pool_index"] = pool_index
    _route(("InferenceService", namespace, name), type, body)
