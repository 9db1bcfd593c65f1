"""The operator on a real control plane: placement by the real scheduler, status from real controllers.

kwok plays the kubelet: worker pods run for `tandem.dev/fake-duration` and report the termination message
that `tandem.dev/fake-termination-message` carries, as a real trainer would.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from kopf.testing import KopfRunner
from kubernetes import client as k8s

from support.cluster import wait_until
from support.tandem import (
    REPO,
    artifact_message,
    body,
    condition,
    create,
    delete,
    events_for,
    patch_spec,
    wait_for,
)
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB

SHA_1 = hashlib.sha256(b"model one").hexdigest()
SHA_2 = hashlib.sha256(b"model two").hexdigest()


def training_spec(sha256: str, workers: int = 1, duration: str = "3s", **extra: Any) -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": duration,
        "tandem.dev/fake-termination-message": artifact_message(f"s3://models/digits/{sha256[:6]}/model.onnx", sha256),
    }
    return {
        "workers": workers,
        "resources": {"gpus": 1, "cpu": "2", "memory": "4Gi"},
        "model": {"output": "s3://models/digits"},
        "podMetadata": {"annotations": annotations},
        **extra,
    }


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def pods_of(api: k8s.ApiClient, namespace: str, selector: str) -> list[k8s.V1Pod]:
    pods: list[k8s.V1Pod] = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return pods


def node_pool(api: k8s.ApiClient, node_name: str) -> str:
    labels = k8s.CoreV1Api(api).read_node(node_name).metadata.labels or {}
    return str(labels.get("tandem.dev/pool"))


def test_compute_pools_report_their_nodes(tandem_api: k8s.ApiClient, operator: KopfRunner) -> None:
    gpu = wait_for(tandem_api, COMPUTE_POOL, None, "gpu", lambda o: (o.get("status") or {}).get("readyNodes", 0) > 0,
                   "ready nodes counted")
    assert gpu["status"]["nodes"] >= 2
    assert gpu["status"]["allocatable"]["accelerators"] >= 16
    assert condition(gpu, "Ready")["status"] == "True"  # type: ignore[index]
    cpu = wait_for(tandem_api, COMPUTE_POOL, None, "cpu", lambda o: (o.get("status") or {}).get("readyNodes", 0) > 0,
                   "ready nodes counted")
    assert cpu["status"]["allocatable"]["accelerators"] == 0


def test_training_job_runs_on_gpu_nodes_and_publishes_its_model(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", training_spec(SHA_1, workers=2)))
    running = wait_for(tandem_api, TRAINING_JOB, namespace, "digits", phase_is("Running", "Succeeded"), "running")
    assert running["status"]["pool"] == "gpu"
    pods = wait_until(
        lambda: [p for p in pods_of(tandem_api, namespace, "tandem.dev/trainingjob=digits") if p.spec.node_name],
        what="scheduled workers",
    )
    assert {node_pool(tandem_api, pod.spec.node_name) for pod in pods} == {"gpu"}
    done = wait_for(tandem_api, TRAINING_JOB, namespace, "digits", phase_is("Succeeded"), "succeeded")
    status = done["status"]
    assert status["model"]["sha256"] == SHA_1
    assert status["workers"]["succeeded"] == 2
    assert status["startTime"] and status["completionTime"]
    assert status["usage"]["gpuSeconds"] > 0 and status["usage"]["estimatedCost"] > 0
    assert condition(done, "Succeeded")["status"] == "True"  # type: ignore[index]
    assert status["observedGeneration"] == done["metadata"]["generation"]
    status_writers = {e["manager"] for e in done["metadata"]["managedFields"] if e.get("subresource") == "status"}
    assert status_writers == {"tandem-operator"}, "status is written under the operator's field manager"
    reasons = {event.reason for event in events_for(tandem_api, namespace, "digits")}
    assert {"Created", "ModelPublished"} <= reasons


def test_unschedulable_workers_are_explained_in_status(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    spec = {**training_spec(SHA_1), "model": {"output": "pvc://no-such-claim/digits"}}
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "stuck", spec))
    stuck = wait_for(
        tandem_api, TRAINING_JOB, namespace, "stuck",
        lambda o: (condition(o, "Running") or {}).get("reason") == "Unschedulable", "unschedulable reported",
    )
    assert stuck["status"]["phase"] == "Pending"
    assert 'persistentvolumeclaim "no-such-claim" not found' in condition(stuck, "Running")["message"]  # type: ignore[index]


def test_failed_worker_fails_the_training_job_with_its_message(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    spec = training_spec(SHA_1, backoffLimit=0)
    spec["podMetadata"]["annotations"].update(
        {
            "tandem.dev/fake-exit-code": "3",
            "tandem.dev/fake-termination-message": '{"reason": "NaNLoss", "error": "loss became NaN at step 7"}',
        }
    )
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "broken", spec))
    failed = wait_for(tandem_api, TRAINING_JOB, namespace, "broken", phase_is("Failed"), "failed")
    message = condition(failed, "Failed")["message"]  # type: ignore[index]
    assert "NaNLoss: loss became NaN at step 7" in message
    assert "code 3" in message
    warnings = [e for e in events_for(tandem_api, namespace, "broken") if e.type == "Warning"]
    assert any("NaN" in (e.message or "") for e in warnings)


def test_inference_service_serves_on_cpu_nodes_and_follows_a_rerun(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", training_spec(SHA_1)))
    create(
        tandem_api,
        INFERENCE_SERVICE,
        namespace,
        body(
            INFERENCE_SERVICE,
            "digits",
            {"model": {"fromTrainingJob": {"name": "digits"}}, "replicas": {"min": 2, "max": 2}},
        ),
    )
    ready = wait_for(tandem_api, INFERENCE_SERVICE, namespace, "digits", phase_is("Ready"), "ready", timeout=120)
    assert ready["status"]["model"]["sha256"] == SHA_1
    assert ready["status"]["placement"]["pool"] == "cpu"
    assert ready["status"]["url"] == f"http://digits.{namespace}.svc.cluster.local/v2/models/digits"
    assert condition(ready, "Ready")["status"] == "True"  # type: ignore[index]
    pods = pods_of(tandem_api, namespace, "tandem.dev/inferenceservice=digits")
    assert pods and {node_pool(tandem_api, pod.spec.node_name) for pod in pods} == {"cpu"}
    assert all(not pod.spec.tolerations or all(t.key != "nvidia.com/gpu" for t in pod.spec.tolerations) for pod in pods)

    patch_spec(tandem_api, TRAINING_JOB, namespace, "digits", training_spec(SHA_2, args=["--epochs", "2"]))
    wait_for(
        tandem_api, TRAINING_JOB, namespace, "digits",
        lambda o: ((o.get("status") or {}).get("model") or {}).get("sha256") == SHA_2, "new model",
    )
    rolled = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "digits",
        lambda o: ((o.get("status") or {}).get("model") or {}).get("sha256") == SHA_2 and phase_is("Ready")(o),
        "rolled to the new model", timeout=120,
    )
    assert rolled["status"]["model"]["version"] == "2"
    deployment = k8s.AppsV1Api(tandem_api).read_namespaced_deployment("digits", namespace)
    assert deployment.spec.template.metadata.annotations["tandem.dev/model-sha256"] == SHA_2
    jobs = k8s.BatchV1Api(tandem_api).list_namespaced_job(namespace, label_selector="tandem.dev/trainingjob=digits")
    assert [job.metadata.name for job in jobs.items if not job.metadata.deletion_timestamp] == ["digits-g2"]


def test_unresolvable_resources_get_false_conditions_and_warnings(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "lost", training_spec(SHA_1, pool="nowhere")))
    create(tandem_api, INFERENCE_SERVICE, namespace,
           body(INFERENCE_SERVICE, "orphan", {"model": {"fromTrainingJob": {"name": "missing"}}}))
    lost = wait_for(tandem_api, TRAINING_JOB, namespace, "lost",
                    lambda o: condition(o, "PoolResolved") is not None, "PoolResolved set")
    assert condition(lost, "PoolResolved")["reason"] == "PoolNotFound"  # type: ignore[index]
    orphan = wait_for(tandem_api, INFERENCE_SERVICE, namespace, "orphan",
                      lambda o: condition(o, "ModelResolved") is not None, "ModelResolved set")
    resolved = condition(orphan, "ModelResolved")
    assert resolved is not None and resolved["status"] == "False"
    assert resolved["reason"] == "TrainingJobNotFound"
    assert condition(orphan, "Ready")["status"] == "False"  # type: ignore[index]
    assert any(e.type == "Warning" and e.reason == "PoolNotFound" for e in events_for(tandem_api, namespace, "lost"))
    assert any(
        e.type == "Warning" and e.reason == "TrainingJobNotFound" for e in events_for(tandem_api, namespace, "orphan")
    )


def test_deleting_a_training_job_removes_its_children(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    spec = training_spec(SHA_1, workers=2, duration="60s")
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "gone", spec))
    batch, core = k8s.BatchV1Api(tandem_api), k8s.CoreV1Api(tandem_api)
    wait_until(lambda: batch.list_namespaced_job(namespace).items, what="the child Job")
    assert core.list_namespaced_service(namespace, label_selector="tandem.dev/trainingjob=gone").items
    delete(tandem_api, TRAINING_JOB, namespace, "gone")
    wait_until(lambda: not batch.list_namespaced_job(namespace).items, timeout=90, what="the Job collected")
    wait_until(
        lambda: not core.list_namespaced_service(namespace, label_selector="tandem.dev/trainingjob=gone").items,
        timeout=90, what="the Service collected",
    )


def _operator_process(kubeconfig: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    return subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_killed_operator_restarts_without_duplicating_children(tandem_api: k8s.ApiClient, namespace: str) -> None:
    kubeconfig = os.environ["KUBECONFIG"]
    names = [f"job-{index}" for index in range(5)]
    batch = k8s.BatchV1Api(tandem_api)
    first = _operator_process(kubeconfig)
    try:
        for name in names:
            create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, name, training_spec(SHA_1, duration="30s")))
        wait_until(lambda: batch.list_namespaced_job(namespace).items, timeout=60, what="a first child Job")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = _operator_process(kubeconfig)
    try:
        # A run is named in status before its Job is created: the Jobs themselves say the restart finished them.
        wait_until(lambda: len(batch.list_namespaced_job(namespace).items) >= len(names), timeout=90,
                   what="a Job for every TrainingJob")
        for name in names:
            wait_for(tandem_api, TRAINING_JOB, namespace, name,
                     lambda o: bool((o.get("status") or {}).get("jobName")), "status written")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    jobs = batch.list_namespaced_job(namespace).items
    assert sorted(job.metadata.labels["tandem.dev/trainingjob"] for job in jobs) == names
