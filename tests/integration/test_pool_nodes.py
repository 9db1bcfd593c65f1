"""A ComputePool counts its nodes from the operator's node watch: at once when a node comes or goes, and
without listing nodes on each resync pass (measured by the API server's own apiserver_request_total). A change
of a pool's spec re-decides the InferenceServices at once, Ready ones included, without waiting for a resync."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from integration.test_idle_writes import no_namespace_terminating
from support.apiserver import requests
from support.cluster import wait_until
from support.tandem import HANDLERS, body, create, get, reconciles, resource_api, running_controller
from tandem.api.resources import COMPUTE_POOL, GROUP, INFERENCE_SERVICE, VERSION


@pytest.fixture
def hour_resync_operator(tandem_api: k8s.ApiClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator with an hour between resync passes: within a test only watch events can move a pool."""
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3600")
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", HANDLERS], timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]


def kwok_node(name: str, pool: str) -> k8s.V1Node:
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name, labels={"tandem.dev/pool": pool}, annotations={"kwok.x-k8s.io/node": "fake"}
        ),
        status=k8s.V1NodeStatus(
            capacity={"cpu": "4", "memory": "8Gi", "pods": "10"},
            allocatable={"cpu": "4", "memory": "8Gi", "pods": "10"},
        ),
    )


def pool_counts(api: k8s.ApiClient, name: str) -> tuple[Any, Any, Any]:
    status = get(api, COMPUTE_POOL, None, name).get("status") or {}
    return status.get("nodes"), status.get("readyNodes"), (status.get("allocatable") or {}).get("cpu")


def test_a_pool_follows_its_nodes_from_the_watch_without_waiting_for_a_resync(
    tandem_api: k8s.ApiClient, hour_resync_operator: KopfRunner
) -> None:
    core = k8s.CoreV1Api(tandem_api)
    label = f"watch-{uuid.uuid4().hex[:8]}"
    create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, label, {"nodeSelector": {"tandem.dev/pool": label}}))
    try:
        wait_until(lambda: pool_counts(tandem_api, label) == (0, 0, "0"), timeout=30, what="an empty pool")
        core.create_node(kwok_node(f"{label}-0", label))
        wait_until(lambda: pool_counts(tandem_api, label) == (1, 1, "4"), timeout=30, what="the node counted")
        core.delete_node(f"{label}-0")
        wait_until(lambda: pool_counts(tandem_api, label) == (0, 0, "0"), timeout=30, what="the node gone")
    finally:
        for node in core.list_node(label_selector=f"tandem.dev/pool={label}").items:
            core.delete_node(node.metadata.name)
        resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, label)


def test_a_resync_pass_lists_no_nodes(tandem_api: k8s.ApiClient, operator: KopfRunner) -> None:
    """Listing per pool per pass would add 2 node LISTs a pass here (pools gpu and cpu); the watch adds none.
    Other clients of this API server (kwok, the controllers) may list nodes in the window: fewer than one
    LIST a pass in all is the bound. Nor is a pool read: its body is the one its watch delivered."""
    passes = 5
    wait_until(lambda: pool_counts(tandem_api, "gpu")[0], timeout=30, what="the operator counting pool gpu")
    # A fresh operator first reconciles what earlier tests left in this package's cluster: on a slow pass of
    # this shared machine that took over 30 s.
    controller = running_controller()
    # kopf delivers its initial listing only after the operator's startup: a pass before the pools' bodies came
    # would read them.
    wait_until(lambda: all(controller.views.kept(("ComputePool", "", pool)) for pool in ("gpu", "cpu")),
               timeout=60, what="the pools' bodies delivered by the operator's watch")
    # Objects in namespaces earlier tests are still deleting are due at every pass: measure once they are gone.
    no_namespace_terminating(tandem_api)
    wait_until(controller.queue.idle, timeout=120, what="the operator's queue drained")
    before, reconciled = requests(tandem_api), reconciles("ComputePool")
    for _ in range(passes):
        controller.resync_once()
        wait_until(controller.queue.idle, timeout=60, what="the pass's work done")
    after = requests(tandem_api)
    assert after[("LIST", "nodes", "")] - before[("LIST", "nodes", "")] < passes
    assert reconciles("ComputePool") - reconciled >= 2 * passes  # every pool looked at, every pass
    assert after[("GET", "computepools", "")] == before[("GET", "computepools", "")]  # from the watch's bodies


def placement_of(api: k8s.ApiClient, namespace: str, name: str) -> tuple[Any, Any]:
    status = get(api, INFERENCE_SERVICE, namespace, name).get("status") or {}
    return status.get("phase"), (status.get("placement") or {}).get("costPerHour")


def test_a_price_change_reprices_a_ready_service_without_waiting_for_a_resync(
    tandem_api: k8s.ApiClient, namespace: str, hour_resync_operator: KopfRunner
) -> None:
    core = k8s.CoreV1Api(tandem_api)
    label = f"price-{uuid.uuid4().hex[:8]}"
    pool = {"nodeSelector": {"tandem.dev/pool": label}, "price": {"coreHour": 1.0}}
    create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, label, pool))
    try:
        core.create_node(kwok_node(f"{label}-0", label))
        service = {"model": {"uri": "s3://models/price/model.onnx"}, "pool": label,
                   "resources": {"cpu": "500m", "memory": "128Mi"}}
        create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "priced", service))
        wait_until(lambda: placement_of(tandem_api, namespace, "priced") == ("Ready", 0.5), timeout=60,
                   what="the service Ready at 0.5 an hour")
        wait_until(running_controller().queue.idle, timeout=30, what="the operator's queue drained")
        resource_api(tandem_api).patch_cluster_custom_object(
            GROUP, VERSION, COMPUTE_POOL.plural, label, {"spec": {"price": {"coreHour": 3.0}}}
        )
        wait_until(lambda: placement_of(tandem_api, namespace, "priced") == ("Ready", 1.5), timeout=30,
                   what="the service repriced at 1.5 an hour")
    finally:
        for node in core.list_node(label_selector=f"tandem.dev/pool={label}").items:
            core.delete_node(node.metadata.name)
        resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, label)
