"""Faults the operator must survive, each with its expected outcome in the test's docstring.

Covered elsewhere: the operator killed mid-reconcile and restarted without duplicates
(tests/integration/test_operator.py::test_killed_operator_restarts_without_duplicating_children), and a
training worker resuming from its checkpoint after a retry (tests/trainer/test_checkpoint_resume.py): the
resume is the trainer's job, the retry is the Job controller's (spec.backoffLimit).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import stop_process, wait_until
from support.tandem import REPO, artifact_message, body, create, get
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB
from tandem.config import OperatorConfig
from tandem.controller import backoff
from tandem.controller.controller import Controller
from tandem.controller.kube import Kube
from tandem.controller.reconcile import Outcome

pytestmark = pytest.mark.cluster

SHA = hashlib.sha256(b"reliability").hexdigest()


def training_spec(duration: str = "120s", **extra: Any) -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": duration,
        "tandem.dev/fake-termination-message": artifact_message("s3://models/rel/model.onnx", SHA),
    }
    return {
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "model": {"output": "s3://models/rel"},
        "podMetadata": {"annotations": annotations},
        **extra,
    }


def live_jobs(api: k8s.ApiClient, namespace: str) -> list[k8s.V1Job]:
    jobs = k8s.BatchV1Api(api).list_namespaced_job(namespace).items
    return [job for job in jobs if not job.metadata.deletion_timestamp]


def test_child_job_deleted_by_hand_is_recreated(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    """Expected: a running TrainingJob's Job deleted by hand is recreated under the same deterministic name
    (the run restarts; its checkpoint, when configured, lets the trainer resume) on the Job's DELETED event
    or the next resync, and there is never more than one live Job."""
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "rel", training_spec()))
    first = wait_until(lambda: live_jobs(tandem_api, namespace), timeout=60, what="the child Job")[0]
    k8s.BatchV1Api(tandem_api).delete_namespaced_job(first.metadata.name, namespace, propagation_policy="Background")
    again = wait_until(
        lambda: [job for job in live_jobs(tandem_api, namespace) if job.metadata.uid != first.metadata.uid],
        timeout=60,
        what="the Job recreated",
    )
    assert [job.metadata.name for job in again] == [first.metadata.name]
    assert len(live_jobs(tandem_api, namespace)) == 1


def test_child_deployment_deleted_by_hand_is_recreated(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    """Expected: an InferenceService's Deployment deleted by hand comes back (same name, new uid) on its
    DELETED event or the next resync, and the service returns to Ready."""
    spec = {"model": {"uri": "s3://models/rel/model.onnx"}, "resources": {"cpu": "100m", "memory": "128Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "rel", spec))
    apps = k8s.AppsV1Api(tandem_api)
    first = wait_until(lambda: apps.list_namespaced_deployment(namespace).items, timeout=60, what="Deployment")[0]
    apps.delete_namespaced_deployment("rel", namespace, propagation_policy="Background")
    wait_until(
        lambda: [d for d in apps.list_namespaced_deployment(namespace).items if d.metadata.uid != first.metadata.uid],
        timeout=60,
        what="the Deployment recreated",
    )
    wait_until(
        lambda: (get(tandem_api, INFERENCE_SERVICE, namespace, "rel").get("status") or {}).get("phase") == "Ready",
        timeout=90,
        what="Ready again",
    )


def test_service_and_budget_of_a_ready_service_deleted_by_hand_come_back(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    """Expected: the Service and PodDisruptionBudget of a Ready InferenceService, deleted by hand, come back
    on their DELETED events (the operator watches them too), although the Deployment is unchanged: an idle
    service is not re-applied, but a missing child is."""
    spec = {"model": {"uri": "s3://models/rel/model.onnx"}, "resources": {"cpu": "100m", "memory": "128Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "rel", spec))
    wait_until(
        lambda: (get(tandem_api, INFERENCE_SERVICE, namespace, "rel").get("status") or {}).get("phase") == "Ready",
        timeout=90,
        what="Ready",
    )
    core, policy = k8s.CoreV1Api(tandem_api), k8s.PolicyV1Api(tandem_api)
    service = core.read_namespaced_service("rel", namespace)
    budget = policy.read_namespaced_pod_disruption_budget("rel", namespace)
    core.delete_namespaced_service("rel", namespace)
    policy.delete_namespaced_pod_disruption_budget("rel", namespace)

    def recreated() -> bool:
        services = core.list_namespaced_service(namespace, field_selector="metadata.name=rel").items
        budgets = policy.list_namespaced_pod_disruption_budget(namespace, field_selector="metadata.name=rel").items
        return bool(services and services[0].metadata.uid != service.metadata.uid
                    and budgets and budgets[0].metadata.uid != budget.metadata.uid)

    wait_until(recreated, timeout=60, what="the Service and PodDisruptionBudget recreated")


def test_conflicting_write_becomes_a_temporary_error_that_kopf_retries(
    tandem_api: k8s.ApiClient, namespace: str
) -> None:
    """Expected: a real 409 from the API server (an update with a stale resourceVersion) raised inside a
    reconcile is turned by Controller.run_step into kopf.TemporaryError with a jittered exponential delay (kopf
    retries the handler), never a PermanentError and never an event. (Controller.reconcile_object first reads the
    object again and retries once: tests/integration/test_concurrency.py.)"""
    created = create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "race", training_spec()))
    stale = dict(created)
    custom = k8s.CustomObjectsApi(tandem_api)
    custom.patch_namespaced_custom_object(
        "tandem.dev", "v1alpha1", namespace, "trainingjobs", "race", {"metadata": {"labels": {"bump": "1"}}}
    )
    kube = Kube(tandem_api)
    path = f"/apis/tandem.dev/v1alpha1/namespaces/{namespace}/trainingjobs/race"

    def stale_update() -> Outcome:
        kube._call("PUT", path, body=stale)
        return Outcome({})

    with pytest.raises(ApiException) as conflict:
        stale_update()
    assert conflict.value.status == 409
    with pytest.raises(kopf.TemporaryError) as retried:
        Controller(tandem_api, OperatorConfig()).run_step("TrainingJob", created, stale_update)
    assert retried.value.delay is not None and 0 <= retried.value.delay <= backoff.BASE  # first retry, jittered
    assert "409" in str(retried.value)


def _operator(kubeconfig: str, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "tandem",
        "operator",
        "--leader-election",
        "--lease-namespace",
        namespace,
        "--namespace",
        namespace,
        "--metrics-port",
        "0",
        "--health-port",
        "0",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, "KUBECONFIG": kubeconfig, "TANDEM_RESYNC_SECONDS": "3"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_two_replicas_only_the_lease_holder_acts_and_the_other_takes_over(
    tandem_api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Expected: of two `tandem operator --leader-election` processes, one holds the Lease and reconciles
    (creates the child Job); the other does not even start kopf. After the leader is SIGKILLed, the other
    acquires the Lease once its 20 s duration has passed since it last saw a renewal (plus one 2 s retry) and
    reconciles a TrainingJob created then."""
    kubeconfig = os.environ["KUBECONFIG"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_operator(kubeconfig, namespace, log) for log in logs]
    coordination = k8s.CoordinationV1Api(tandem_api)
    host = socket.gethostname()
    try:

        def holder() -> str | None:
            try:
                return coordination.read_namespaced_lease("tandem-operator", namespace).spec.holder_identity
            except ApiException:
                return None

        leader_id = wait_until(holder, timeout=60, what="a lease holder")
        leader = next(i for i, p in enumerate(procs) if leader_id == f"{host}-{p.pid}")
        follower = 1 - leader
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "first", training_spec()))
        wait_until(lambda: live_jobs(tandem_api, namespace), timeout=60, what="the first Job")
        started = "Activity 'configure' succeeded"  # kopf's startup: only a replica that leads runs kopf
        assert started in logs[leader].read_text()
        assert started not in logs[follower].read_text(), logs[follower].read_text()[-2000:]

        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait()
        wait_until(lambda: holder() == f"{host}-{procs[follower].pid}", timeout=40, what="the follower leading")
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "second", training_spec()))
        wait_until(lambda: len(live_jobs(tandem_api, namespace)) == 2, timeout=60, what="the second Job")
        assert sorted(job.metadata.labels["tandem.dev/trainingjob"] for job in live_jobs(tandem_api, namespace)) == [
            "first",
            "second",
        ]
    finally:
        for proc in procs:
            stop_process(proc)


def test_worker_evicted_from_a_lost_node_is_replaced_without_spending_the_backoff(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    """Expected: a training worker's node is drained (cordoned, its pod evicted, as the node lifecycle
    controller does for a NotReady node after its toleration expires): the Job replaces the worker on another
    GPU node, the eviction (DisruptionTarget) does not count against backoffLimit (podFailurePolicy Ignore),
    and the TrainingJob stays Running with its new worker. Resuming from the checkpoint is the trainer's part
    (tests/trainer/test_checkpoint_resume.py)."""
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "node-loss", training_spec(backoffLimit=0)))
    core = k8s.CoreV1Api(tandem_api)

    def running_pods() -> list[k8s.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="tandem.dev/trainingjob=node-loss").items
        return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

    first = wait_until(running_pods, timeout=90, what="a running worker")[0]
    node = first.spec.node_name
    core.patch_node(node, {"spec": {"unschedulable": True}})
    try:
        core.create_namespaced_pod_eviction(
            first.metadata.name,
            namespace,
            k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name=first.metadata.name, namespace=namespace)),
        )
        replacement = wait_until(
            lambda: [p for p in running_pods() if p.metadata.uid != first.metadata.uid],
            timeout=90,
            what="a replacement worker",
        )[0]
        assert replacement.spec.node_name != node
        job = k8s.BatchV1Api(tandem_api).read_namespaced_job(first.metadata.labels["job-name"], namespace)
        assert not job.status.failed, job.status
        assert not any(c.type == "Failed" and c.status == "True" for c in job.status.conditions or [])
        wait_until(
            lambda: (
                (get(tandem_api, TRAINING_JOB, namespace, "node-loss").get("status") or {}).get("phase") == "Running"
            ),
            timeout=30,
            what="TrainingJob Running",
        )
    finally:
        core.patch_node(node, {"spec": {"unschedulable": False}})
