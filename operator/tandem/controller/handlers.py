"""kopf registrations: when to reconcile, nothing about how (that is tandem.controller.controller.Controller).

The startup handler makes the operator's one Controller and keeps it in kopf's memo, which kopf hands to every
handler; no state lives in this module. Handlers of watch events only keep or forget a body and queue keys:
there are no kopf change handlers (create/update/resume): the reconcile is level-triggered, so an event handler
that compares metadata.generation with status.observedGeneration says as much, and kopf then writes no progress
or diff-base annotations of its own: the operator's only writes are the fenced ones of tandem.controller.kube.

`tandem operator` passes kopf a memo holding the leader's `fence` (tandem.controller.main); `kopf run -m
tandem.controller.handlers` runs without one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from tandem.api.resources import GROUP, VERSION
from tandem.config import OperatorConfig
from tandem.controller.controller import Controller, spec_news
from tandem.controller.kube import api_client, load_config
from tandem.status.pools import node_summary


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own login: service account in a pod, else the kubeconfig that $KUBECONFIG names now."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    pool_index: kopf.Index[str, Any],
    node_index: kopf.Index[str, Any],
    **_: Any,
) -> None:
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
    # kopf hands startup handlers its indexes already (empty until it has listed): live views it keeps current.
    controller = Controller(
        api_client(),
        OperatorConfig.from_env(),
        fence=memo.get("fence"),
        workers=int(os.environ.get("TANDEM_WORKERS", "16")),
        indexes=(pool_index, node_index),
    )
    memo.controller = controller
    try:
        # In a thread, as it waits for the child watches' first lists. kopf cancels a startup that the operator's
        # stop interrupts and then runs no cleanup: the Controller is stopped here, or it would go on acting.
        await asyncio.to_thread(controller.start, float(os.environ.get("TANDEM_RESYNC_SECONDS", "30")))
    except asyncio.CancelledError:
        controller.stop()
        raise


@kopf.on.cleanup()
def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        controller.stop()


def _listed(memo: kopf.Memo) -> Controller:
    """The operator's Controller, told that kopf's indexes are complete: kopf calls no event handler before it
    has listed every indexed kind, so any event handler's call says so."""
    controller: Controller = memo.controller
    controller.indexes_listed()
    return controller


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


@kopf.index(GROUP, VERSION, "inferenceservices")
def service_keys(namespace: str, name: str, **_: Any) -> dict[None, tuple[str, str]]:
    """Every InferenceService, for a pool change that may move them."""
    return {None: (namespace, name)}


@kopf.on.event(GROUP, VERSION, "computepools")
async def pool_event(
    name: str,
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    service_keys: kopf.Index[None, tuple[str, str]],
    **_: Any,
) -> None:
    """A pool's spec came, changed or went: besides the pool, every InferenceService decides again (a price,
    selector or toleration it was placed by may have changed; a cheaper pool may exist), since a Ready
    service is otherwise reconciled only when its own objects change or its usage is due."""
    controller = _listed(memo)
    changed = type == "DELETED" or spec_news(type, body)
    controller.route(("ComputePool", "", name), type, body)
    if changed:
        for namespace, service in service_keys.get(None, []):
            controller.enqueue(("InferenceService", namespace, service))


@kopf.on.event("", "v1", "nodes")
async def node_event(
    name: str, type: str | None, labels: Mapping[str, str], status: Mapping[str, Any], memo: kopf.Memo, **_: Any
) -> None:
    """A node came, went or changed: the pools it belongs to (or belonged to) count again, from the index."""
    _listed(memo).node_changed(name, type, node_summary(name, labels, status))


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def training_event(
    namespace: str,
    name: str,
    type: str | None,
    body: kopf.Body,
    status: Mapping[str, Any],
    memo: kopf.Memo,
    services_by_training_job: kopf.Index[tuple[str, str], tuple[str, str | None]],
    **_: Any,
) -> None:
    """Reconcile a new or changed TrainingJob; roll its new model out to the services that follow it."""
    controller = _listed(memo)
    if not controller.route(("TrainingJob", namespace, name), type, body):
        return
    produced = (status.get("model") or {}).get("sha256")
    if produced:
        for service, served in services_by_training_job.get((namespace, name), []):
            if served != produced:
                controller.enqueue(("InferenceService", namespace, service))


@kopf.on.event(GROUP, VERSION, "inferenceservices")
async def serving_event(
    namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    _listed(memo).route(("InferenceService", namespace, name), type, body)
