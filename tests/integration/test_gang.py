"""Gangs on a real control plane: placed whole or not at all, and never left waiting for a peer that left.

A multi-worker run without a queue is held (its Job suspended, no pod made) until every worker fits its
pool's free room at once; a worker that fails after a peer finished fails the run at once (GangBroken)
instead of being retried into a rendezvous no peer will come to. kwok plays the nodes; the test plays the
kubelet for the workers whose ending matters.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import wait_until
from support.tandem import artifact_message, body, condition, create, resource_api, wait_for
from tandem.api.resources import COMPUTE_POOL, GROUP, TRAINING_JOB, VERSION

SHA = hashlib.sha256(b"gang model").hexdigest()


def gpu_node(name: str, pool: str) -> k8s.V1Node:
    """A kwok node with room for one worker of `worker_spec` (3 of its 4 CPUs)."""
    room = {"cpu": "4", "memory": "8Gi", "pods": "10", "nvidia.com/gpu": "1"}
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(
            name=name, labels={"tandem.dev/pool": pool}, annotations={"kwok.x-k8s.io/node": "fake"}
        ),
        status=k8s.V1NodeStatus(capacity=room, allocatable=room),
    )


def worker_spec(pool: str | None, workers: int, duration: str = "3s") -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": duration,
        "tandem.dev/fake-termination-message": artifact_message("s3://models/gang/v1/model.onnx", SHA),
    }
    spec: dict[str, Any] = {
        "workers": workers,
        "resources": {"gpus": 1, "cpu": "3", "memory": "1Gi"},
        "model": {"output": "s3://models/gang"},
        "podMetadata": {"annotations": annotations},
    }
    return {**spec, "pool": pool} if pool else spec


@pytest.fixture
def small_pool(tandem_api: k8s.ApiClient) -> Iterator[str]:
    """A GPU pool of its own with one node: room for one worker of two."""
    core = k8s.CoreV1Api(tandem_api)
    name = f"gang-{uuid.uuid4().hex[:8]}"
    spec = {"nodeSelector": {"tandem.dev/pool": name}, "accelerator": "nvidia.com/gpu", "role": "training"}
    create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, name, spec))
    core.create_node(gpu_node(f"{name}-0", name))
    yield name
    for node in core.list_node(label_selector=f"tandem.dev/pool={name}").items:
        core.delete_node(node.metadata.name)
    resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, name)


def phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") == phase


def job_pods(api: k8s.ApiClient, namespace: str, job: str) -> list[k8s.V1Pod]:
    pods: list[k8s.V1Pod] = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods


def test_a_gang_larger_than_the_free_room_starts_none_of_its_workers_until_all_fit(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner, small_pool: str
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "gang", worker_spec(small_pool, workers=2)))
    waiting = wait_for(
        tandem_api, TRAINING_JOB, namespace, "gang",
        lambda o: (condition(o, "Running") or {}).get("reason") == "WaitingForCapacity", "the gang waiting for room",
    )  # fmt: skip
    assert waiting["status"]["phase"] == "Queued"
    message = condition(waiting, "Running")["message"]  # type: ignore[index]
    assert "all 2 workers of cpu 3, memory 1Gi, nvidia.com/gpu 1 each: only 1 fit now" in message
    assert f"{small_pool}-0 cpu 4, memory 8Gi, nvidia.com/gpu 1" in message
    job = k8s.BatchV1Api(tandem_api).read_namespaced_job("gang-g1", namespace)
    assert job.spec.suspend is True
    assert job_pods(tandem_api, namespace, "gang-g1") == [], "a part of the gang was started"

    k8s.CoreV1Api(tandem_api).create_node(gpu_node(f"{small_pool}-1", small_pool))
    done = wait_for(tandem_api, TRAINING_JOB, namespace, "gang", phase_is("Succeeded"),
                    "the whole gang started and finished", timeout=120)  # fmt: skip
    assert done["status"]["model"]["sha256"] == SHA
    nodes = {pod.spec.node_name for pod in job_pods(tandem_api, namespace, "gang-g1")}
    assert nodes == {f"{small_pool}-0", f"{small_pool}-1"}


def _end(api: k8s.ApiClient, pod: k8s.V1Pod, exit_code: int, at: datetime) -> None:
    """What a kubelet reports when the worker's container exits."""
    stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                  "startedAt": stamp, "finishedAt": stamp}  # fmt: skip
    container = pod.spec.containers[0]
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"terminated": terminated}}],
    }  # fmt: skip
    k8s.CoreV1Api(api).patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})


def test_a_worker_that_fails_after_its_peer_finished_fails_the_run_within_a_minute(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    """Without this the Job retries worker 0, whose rendezvous waits for a rank 1 that already completed."""
    spec = {**worker_spec(None, workers=2, duration="600s"), "backoffLimit": 3}
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "split", spec))

    def running_workers() -> dict[str, k8s.V1Pod] | None:
        pods = [pod for pod in job_pods(tandem_api, namespace, "split-g1") if pod.status.phase == "Running"]
        by_index = {pod.metadata.annotations["batch.kubernetes.io/job-completion-index"]: pod for pod in pods}
        return by_index if len(by_index) == 2 else None

    workers = wait_until(running_workers, timeout=90, what="both workers running")
    now = datetime.now(UTC)
    _end(tandem_api, workers["1"], 0, now - timedelta(seconds=5))
    _end(tandem_api, workers["0"], 1, now)
    failed = wait_for(tandem_api, TRAINING_JOB, namespace, "split", phase_is("Failed"),
                      "the run failed as a broken gang", timeout=60)  # fmt: skip
    reason = condition(failed, "Failed")
    assert reason is not None and reason["reason"] == "GangBroken", reason
    assert "worker(s) 1 finished and left the group, then worker 0 failed (exit code 1)" in reason["message"]

    def job_gone() -> bool:
        try:
            k8s.BatchV1Api(tandem_api).read_namespaced_job("split-g1", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(job_gone, timeout=60, what="the broken gang's Job stopped")
