"""kopf registrations: when to reconcile, nothing about how.

Each handler parses no bodies and builds no objects; it hands the resource to tandem.reconcile, turns API
errors into kopf's retry semantics (conflicts and throttling are temporary, other refusals permanent), posts
the events the reconcile returned and records metrics.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from tandem import metrics
from tandem.api.resources import COMPUTE_POOL, GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION, Resource
from tandem.config import OperatorConfig
from tandem.kube import Kube, load_config
from tandem.reconcile import Outcome, reconcile_pool, reconcile_serving, reconcile_training

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
TRANSIENT_STATUSES = (409, 429, 500, 502, 503, 504)

_state: dict[str, Any] = {}


def kube() -> Kube:
    kube_client: Kube = _state["kube"]
    return kube_client


def config() -> OperatorConfig:
    operator_config: OperatorConfig = _state["config"]
    return operator_config


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
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    load_config()
    _state["kube"] = Kube()
    _state["config"] = OperatorConfig.from_env()
    stop = threading.Event()
    _state["resync_stop"] = stop
    interval = float(os.environ.get("TANDEM_RESYNC_SECONDS", "30"))
    # A copy of kopf's context lets the resync thread post events through kopf's queue.
    context = contextvars.copy_context()
    threading.Thread(
        target=context.run, args=(resync_forever, stop, interval), name="tandem-resync", daemon=True
    ).start()


@kopf.on.cleanup()
def stop_resync(**_: Any) -> None:
    stop: threading.Event | None = _state.get("resync_stop")
    if stop is not None:
        stop.set()


def resync_forever(stop: threading.Event, interval: float) -> None:
    """Periodic resync, as controller-runtime's SyncPeriod: refreshes pool status and usage of running
    work, and retries resources that wait for a pool or a model. kopf timers would do the same per object
    but put a finalizer on every resource, which blocks deletion whenever the operator is not running."""
    while not stop.wait(interval):
        try:
            resync_once()
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("resync failed, API server unavailable (%s); retrying in %.0fs", exc, interval)
        except Exception:
            log.exception("resync failed; retrying in %.0fs", interval)


def _watched(resource: Resource) -> list[dict[str, Any]]:
    namespaces = config().namespaces or (None,)
    return [item for namespace in namespaces for item in kube().list_custom(resource, namespace)]


def _needs_resync(body: Mapping[str, Any], settled: str) -> bool:
    status = body.get("status") or {}
    return status.get("phase") != settled and status.get("phase") not in TERMINAL


def resync_once() -> None:
    pool_bodies = kube().list_custom(COMPUTE_POOL)
    pools = {pool["metadata"]["name"]: pool.get("spec") or {} for pool in pool_bodies}
    for pool in pool_bodies:
        _quietly(_run, "ComputePool", pool, functools.partial(reconcile_pool, kube(), pool))
    for job in _watched(TRAINING_JOB):
        if _needs_resync(job, "Succeeded"):
            _quietly(_run, "TrainingJob", job, functools.partial(reconcile_training, kube(), job, pools, config()))
    for service in _watched(INFERENCE_SERVICE):
        # Every service, Ready ones included: the usage ledger (status.usage) grows by the replicas that ran
        # since the last resync, and auto placement picks up profile Jobs that finished meanwhile.
        step = functools.partial(reconcile_serving, kube(), service, pools, config())
        _quietly(_run, "InferenceService", service, step)


def _quietly(run: Callable[..., Outcome | None], *args: Any) -> None:
    """One resource's failure must not stop the resync of the others; kopf's retry does not apply here."""
    try:
        run(*args)
    except (kopf.TemporaryError, kopf.PermanentError, ApiException) as exc:
        log.warning("resync of %s failed: %s", args[0], exc)
    except Exception:
        log.exception("resync of %s failed unexpectedly", args[0])


def _pools(pool_index: kopf.Index[str, Any]) -> dict[str, Any]:
    return {name: next(iter(specs)) for name, specs in pool_index.items() if specs}


def _run(kind: str, body: Mapping[str, Any], step: Callable[[], Outcome]) -> Outcome | None:
    """Run one reconcile with metrics, events and kopf's error semantics."""
    meta = body.get("metadata") or {}
    try:
        with metrics.reconciling(kind):
            outcome = step()
    except ApiException as exc:
        if exc.status == 404:
            log.info("%s %s/%s is gone; nothing to reconcile", kind, meta.get("namespace"), meta.get("name"))
            return None
        if exc.status in TRANSIENT_STATUSES:
            raise kopf.TemporaryError(f"API server answered {exc.status}: {exc.reason}", delay=2) from exc
        message = f"API server refused a child object ({exc.status}): {(exc.body or exc.reason)!s:.500}"
        _post_event(body, "Warning", "ApplyFailed", message)
        raise kopf.PermanentError(message) from exc
    for event in outcome.events:
        _post_event(body, event.type, event.reason, event.message)
    metrics.record_phase(kind, meta.get("namespace", ""), meta.get("name", ""), outcome.status.get("phase"))
    before = ((body.get("status") or {}).get("usage")) or {}
    pool = outcome.status.get("pool") or ((outcome.status.get("placement") or {}).get("pool")) or ""
    metrics.record_usage(kind, meta.get("namespace", ""), pool, before, outcome.status.get("usage") or {})
    return outcome


def _post_event(body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """kopf.event inside kopf's handler tasks; a direct API write from the resync thread, where kopf's event
    queue (a context variable of its per-object tasks) does not exist and kopf.event raises LookupError."""
    try:
        kopf.event(cast(kopf.Body, body), type=type, reason=reason, message=message)
    except LookupError:
        kube().post_event(dict(body), type, reason, message)


@kopf.index(GROUP, VERSION, "computepools")
def pool_index(name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Any]:
    return {name: dict(spec)}


@kopf.index(GROUP, VERSION, "inferenceservices")
def services_by_training_job(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], tuple[str, str | None]] | None:
    source = (spec.get("model") or {}).get("fromTrainingJob")
    if not source:
        return None
    served = (status.get("model") or {}).get("sha256")
    return {(namespace, source["name"]): (name, served)}


# ---- ComputePool -------------------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, "computepools")
@kopf.on.create(GROUP, VERSION, "computepools")
@kopf.on.update(GROUP, VERSION, "computepools", field="spec")
def pool_changed(body: kopf.Body, **_: Any) -> None:
    _run("ComputePool", body, lambda: reconcile_pool(kube(), body))


# ---- TrainingJob -------------------------------------------------------------------------------------


def _reconcile_training(body: Mapping[str, Any], pool_index: kopf.Index[str, Any]) -> None:
    _run("TrainingJob", body, lambda: reconcile_training(kube(), body, _pools(pool_index), config()))


@kopf.on.resume(GROUP, VERSION, "trainingjobs")
@kopf.on.create(GROUP, VERSION, "trainingjobs")
@kopf.on.update(GROUP, VERSION, "trainingjobs", field="spec")
def training_changed(body: kopf.Body, pool_index: kopf.Index[str, Any], **_: Any) -> None:
    _reconcile_training(body, pool_index)


@kopf.on.event("batch", "v1", "jobs", labels={"tandem.dev/trainingjob": kopf.PRESENT})
def training_job_child_changed(
    namespace: str, labels: Mapping[str, str], type: str | None, pool_index: kopf.Index[str, Any], **_: Any
) -> None:
    if type is None:
        return  # the initial listing: resume handlers cover it
    body = kube().get_custom(TRAINING_JOB, namespace, labels["tandem.dev/trainingjob"])
    if body is not None:
        _reconcile_training(body, pool_index)


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def training_model_changed(
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    services_by_training_job: kopf.Index[tuple[str, str], tuple[str, str | None]],
    pool_index: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """Roll out the new model to every InferenceService that follows this TrainingJob."""
    produced = (status.get("model") or {}).get("sha256")
    if not produced:
        return
    for service, served in services_by_training_job.get((namespace, name), []):
        if served != produced:
            body = kube().get_custom(INFERENCE_SERVICE, namespace, service)
            if body is not None:
                _reconcile_serving(body, pool_index)


# ---- InferenceService --------------------------------------------------------------------------------


def _reconcile_serving(body: Mapping[str, Any], pool_index: kopf.Index[str, Any]) -> None:
    _run("InferenceService", body, lambda: reconcile_serving(kube(), body, _pools(pool_index), config()))


@kopf.on.resume(GROUP, VERSION, "inferenceservices")
@kopf.on.create(GROUP, VERSION, "inferenceservices")
@kopf.on.update(GROUP, VERSION, "inferenceservices", field="spec")
def serving_changed(body: kopf.Body, pool_index: kopf.Index[str, Any], **_: Any) -> None:
    _reconcile_serving(body, pool_index)


@kopf.on.event("apps", "v1", "deployments", labels={"tandem.dev/inferenceservice": kopf.PRESENT})
def serving_child_changed(
    namespace: str, labels: Mapping[str, str], type: str | None, pool_index: kopf.Index[str, Any], **_: Any
) -> None:
    if type is None:
        return
    body = kube().get_custom(INFERENCE_SERVICE, namespace, labels["tandem.dev/inferenceservice"])
    if body is not None:
        _reconcile_serving(body, pool_index)
