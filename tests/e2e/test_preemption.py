"""Preemption on the real nodes: an urgent TrainingJob takes the GPU quota from a training run, which shows the
checkpoint step it stopped at, waits in its queue, and resumes from that checkpoint after the urgent run.

Kueue's manager runs beside the control plane (hack/lib/kueue.sh); the queue holds one nvidia.com/gpu of the
real GPU node, so the two single-worker runs cannot run together. The trainer trains for real in its
container: the step in status comes from the stopped worker's termination message, and the step the run
resumed from from its model's metrics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.conftest import ModelVolume, Release
from support.cluster import ExternalCluster, LocalCluster, wait_until
from support.digits import GPU_POOL, training_spec
from support.tandem import body, condition, create, wait_for
from tandem.api.resources import GROUP as TANDEM_GROUP
from tandem.api.resources import TRAINING_JOB
from tandem.api.resources import VERSION as TANDEM_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

KUEUE, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"
QUEUE = "real-gpu"
TIMEOUT = 600
CLUSTER_OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("resourceflavors", {
        "apiVersion": f"{KUEUE}/{KUEUE_VERSION}", "kind": "ResourceFlavor", "metadata": {"name": QUEUE},
        "spec": {"nodeLabels": {"tandem.dev/pool": GPU_POOL}},
    }),
    ("clusterqueues", {
        "apiVersion": f"{KUEUE}/{KUEUE_VERSION}", "kind": "ClusterQueue", "metadata": {"name": QUEUE},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [{"name": QUEUE, "resources": [
                    {"name": "cpu", "nominalQuota": "2"},
                    {"name": "memory", "nominalQuota": "8Gi"},
                    {"name": "nvidia.com/gpu", "nominalQuota": "1"},
                ]}],
            }],
        },
    }),
    ("workloadpriorityclasses", {
        "apiVersion": f"{KUEUE}/{KUEUE_VERSION}", "kind": "WorkloadPriorityClass", "metadata": {"name": "urgent"},
        "value": 1000,
    }),
]  # fmt: skip
"""One GPU of quota on the real GPU node, preempting lower priorities, and the priority class `urgent`."""


@pytest.fixture
def real_queue(
    cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient, namespace: str, release: Release
) -> Iterator[str]:
    """Kueue running, with the queue above and its LocalQueue in the test's namespace; all gone afterwards
    (the runs, then their Workloads while the manager still releases their finalizers, then the queues)."""
    if isinstance(cluster, LocalCluster):
        cluster.kueue("up")
    custom = k8s.CustomObjectsApi(kube)
    for plural, obj in CLUSTER_OBJECTS:
        try:
            custom.create_cluster_custom_object(KUEUE, KUEUE_VERSION, plural, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
    local = {"apiVersion": f"{KUEUE}/{KUEUE_VERSION}", "kind": "LocalQueue", "metadata": {"name": QUEUE},
             "spec": {"clusterQueue": QUEUE}}
    custom.create_namespaced_custom_object(KUEUE, KUEUE_VERSION, namespace, "localqueues", local)
    yield QUEUE
    custom.delete_collection_namespaced_custom_object(TANDEM_GROUP, TANDEM_VERSION, namespace, TRAINING_JOB.plural)
    k8s.BatchV1Api(kube).delete_collection_namespaced_job(namespace, propagation_policy="Background")
    wait_until(
        lambda: not custom.list_namespaced_custom_object(KUEUE, KUEUE_VERSION, namespace, "workloads")["items"],
        timeout=120,
        what="Workloads deleted",
    )
    custom.delete_namespaced_custom_object(KUEUE, KUEUE_VERSION, namespace, "localqueues", QUEUE)
    for plural, obj in reversed(CLUSTER_OBJECTS):
        custom.delete_cluster_custom_object(KUEUE, KUEUE_VERSION, plural, obj["metadata"]["name"])
    for plural, _ in CLUSTER_OBJECTS:  # while the manager runs: it holds finalizers on queues and flavors
        wait_until(
            lambda p=plural: not custom.list_cluster_custom_object(
                KUEUE, KUEUE_VERSION, p, field_selector=f"metadata.name={QUEUE}"
            )["items"],
            timeout=60,
            what=f"{plural} {QUEUE} deleted",
        )
    if isinstance(cluster, LocalCluster):
        cluster.kueue("down")


def run_spec(name: str, epochs: int, **extra: Any) -> dict[str, Any]:
    return {
        **training_spec(workers=1, args=["--epochs", str(epochs), "--checkpoint-every", "500"]),
        "model": {"output": f"pvc://models/{name}"},
        "checkpoint": {"uri": f"pvc://models/{name}/checkpoints"},
        "queue": QUEUE,
        **extra,
    }


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def succeeded(kube: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def done(obj: dict[str, Any]) -> bool:
        assert status_of(obj).get("phase") != "Failed", f"{name} failed: {status_of(obj)}"
        return status_of(obj).get("phase") == "Succeeded"

    return status_of(wait_for(kube, TRAINING_JOB, namespace, name, done, "Succeeded", TIMEOUT))


def test_an_urgent_run_preempts_a_training_run_which_resumes_from_the_checkpoint_in_its_status(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume, real_queue: str
) -> None:
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "ordinary", run_spec("ordinary", epochs=400)))
    pointer = models.file("pvc://models/ordinary/checkpoints/v1/latest.json")
    wait_until(pointer.exists, timeout=TIMEOUT, interval=0.2, what="the first checkpoint of ordinary")
    wait_for(kube, TRAINING_JOB, namespace, "ordinary", lambda o: status_of(o).get("phase") == "Running", "Running")

    create(kube, TRAINING_JOB, namespace,
           body(TRAINING_JOB, "urgent", run_spec("urgent", epochs=2, priorityClass="urgent")))

    def preempted_with_a_checkpoint(obj: dict[str, Any]) -> bool:
        running = condition(obj, "Running") or {}
        return running.get("reason") == "Preempted" and "checkpoint" in status_of(obj)

    before = wait_for(kube, TRAINING_JOB, namespace, "ordinary", preempted_with_a_checkpoint, "Preempted", TIMEOUT)
    saved = json.loads(pointer.read_text())["step"]  # the worker is gone: no checkpoint after this one
    checkpoint = status_of(before)["checkpoint"]
    print(f"preempted: {json.dumps(status_of(before), indent=1)}")
    assert checkpoint["step"] == saved > 0
    assert checkpoint["uri"] == f"pvc://models/ordinary/checkpoints/v1/step-{saved:09d}.pt"
    assert status_of(before)["phase"] == "Queued"
    message = condition(before, "Running")["message"]  # type: ignore[index]
    assert message.startswith(f"Kueue evicted the run, which waits in LocalQueue {QUEUE}: Preempted")
    assert message.endswith(f"; it resumes from checkpoint step {saved}")

    assert succeeded(kube, namespace, "urgent")["model"]["metrics"]["resumed_from_step"] == 0
    after = succeeded(kube, namespace, "ordinary")
    print(f"finished: {json.dumps(after, indent=1)}")
    assert after["model"]["metrics"]["resumed_from_step"] == saved
    assert after["checkpoint"]["resumedFromStep"] == saved
    assert after["model"]["metrics"]["steps"] == 400 * 45  # the whole run, not the part after the resume
    assert after["workers"]["failed"] == 0  # the stopped worker exited 143, which the Job does not count
    assert after["jobName"] == before["status"]["jobName"]  # the same run, resumed
