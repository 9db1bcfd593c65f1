"""TrainingJobs queued by the real Kueue manager (hack/build-kueue.sh, run by hack/cluster.sh kueue up).

The queues are those of examples/queueing/queues.yaml: a ClusterQueue per pool (the gpu one holds 8
nvidia.com/gpu), a LocalQueue `gpu` in the test's namespace, and the WorkloadPriorityClass `urgent`. kwok
plays the kubelet, so a worker "runs" for its tandem.dev/fake-duration; what is real is Kueue's admission,
quota, preemption and its suspending and unsuspending of the Job, and the operator's reading of them. (kwok
deletes a pod at once, so no stopped worker reports a checkpoint here: tests/e2e/test_preemption.py trains
for real, and tests/trainer/test_stopped_by_sigterm.py covers the trainer's side.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import ExternalCluster, LocalCluster, wait_until
from support.tandem import REPO, artifact_message, body, condition, create, get, patch_spec, wait_for
from tandem.api.resources import GROUP as TRAINING_JOB_GROUP
from tandem.api.resources import TRAINING_JOB
from tandem.api.resources import VERSION as TRAINING_JOB_VERSION

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
PLURALS = {
    "ResourceFlavor": "resourceflavors",
    "ClusterQueue": "clusterqueues",
    "WorkloadPriorityClass": "workloadpriorityclasses",
    "LocalQueue": "localqueues",
}
QUEUES = [doc for doc in yaml.safe_load_all((REPO / "examples" / "queueing" / "queues.yaml").read_text()) if doc]
GPU_QUOTA = 8
"""nvidia.com/gpu in the example's gpu ClusterQueue."""


def kueue_api(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def kueue(cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient) -> Iterator[None]:
    """Kueue's manager in the session's cluster for this module, with the example's cluster-wide queues.

    A cluster of one's own (TANDEM_KUBECONFIG) must run it already: `TANDEM_KUEUE=1 hack/cluster.sh up`.
    """
    if isinstance(cluster, LocalCluster):
        cluster.kueue("up")
    else:
        hooks = k8s.AdmissionregistrationV1Api(kube).list_mutating_webhook_configuration().items
        if not any(hook.metadata.name == "kueue-mutating-webhook-configuration" for hook in hooks):
            pytest.fail("TANDEM_KUBECONFIG's cluster runs no Kueue: start it with TANDEM_KUEUE=1 hack/cluster.sh up")
    custom = kueue_api(kube)
    shared = [doc for doc in QUEUES if doc["kind"] != "LocalQueue"]
    for doc in shared:
        try:
            custom.create_cluster_custom_object(GROUP, VERSION, PLURALS[doc["kind"]], doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
    yield
    for doc in shared:  # while the manager runs: it holds finalizers on queues and flavors
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURALS[doc["kind"]], doc["metadata"]["name"])
    for doc in shared:
        wait_until(
            lambda d=doc: not [
                item for item in custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[d["kind"]])["items"]
                if item["metadata"]["name"] == d["metadata"]["name"]
            ],
            timeout=60,
            what=f"{doc['kind']} {doc['metadata']['name']} deleted",
        )
    if isinstance(cluster, LocalCluster):
        cluster.kueue("down")


@pytest.fixture
def queues(kueue: None, kube: k8s.ApiClient, namespace: str) -> Iterator[str]:
    """The example's LocalQueues in the test's namespace; afterwards its Jobs and their Workloads are gone
    before the namespace goes (Kueue must still run to release their finalizers)."""
    custom = kueue_api(kube)
    for doc in QUEUES:
        if doc["kind"] == "LocalQueue":
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", doc)
    yield namespace
    # TrainingJobs first, or the operator makes their Jobs (and Kueue their Workloads) again.
    k8s.CustomObjectsApi(kube).delete_collection_namespaced_custom_object(
        TRAINING_JOB_GROUP, TRAINING_JOB_VERSION, namespace, TRAINING_JOB.plural
    )
    k8s.BatchV1Api(kube).delete_collection_namespaced_job(namespace, propagation_policy="Background")
    wait_until(lambda: not workloads(kube, namespace), timeout=60, what=f"Workloads in {namespace} deleted")


def workloads(api: k8s.ApiClient, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kueue_api(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloads"
    )["items"]
    return items


def workload_of_job(api: k8s.ApiClient, namespace: str, job_name: str) -> dict[str, Any] | None:
    for item in workloads(api, namespace):
        if any(owner["name"] == job_name for owner in item["metadata"].get("ownerReferences") or []):
            return item
    return None


def training(name: str, gpus_per_worker: int, workers: int = 2, duration: str = "3s", **extra: Any) -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": duration,
        "tandem.dev/fake-termination-message": artifact_message(f"s3://models/{name}/model.onnx", "a" * 64),
    }
    spec = {
        "workers": workers,
        "resources": {"gpus": gpus_per_worker, "cpu": "2", "memory": "4Gi"},
        "model": {"output": f"s3://models/{name}"},
        "podMetadata": {"annotations": annotations},
        "queue": "gpu",
        **extra,
    }
    return body(TRAINING_JOB, name, {key: value for key, value in spec.items() if value is not None})


def phase_is(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def queued_because(reason: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        running = condition(obj, "Running") or {}
        return phase_is("Queued")(obj) and running.get("reason") == reason

    return check


def job_of(api: k8s.ApiClient, namespace: str, name: str) -> k8s.V1Job:
    tj = get(api, TRAINING_JOB, namespace, name)
    job: k8s.V1Job = k8s.BatchV1Api(api).read_namespaced_job(tj["status"]["jobName"], namespace)
    return job


def running(api: k8s.ApiClient, namespace: str, job: dict[str, Any]) -> None:
    """Create the TrainingJob and wait until its workers run: admitted, and holding its quota."""
    create(api, TRAINING_JOB, namespace, job)
    name = job["metadata"]["name"]
    wait_for(api, TRAINING_JOB, namespace, name, phase_is("Running"), "Running", timeout=120)


def suspend(api: k8s.ApiClient, namespace: str, name: str) -> None:
    """Set spec.suspend and wait until the run reports it: Queued, for the reason Suspended."""
    patch_spec(api, TRAINING_JOB, namespace, name, {"suspend": True})
    wait_for(api, TRAINING_JOB, namespace, name, queued_because("Suspended"), "Suspended")


def resumes_as_the_same_run_and_succeeds(api: k8s.ApiClient, namespace: str, name: str, job_name: str) -> None:
    """A run stopped by a suspend or a preemption is resumed in the Job it had, not started again in a new one;
    the check and waits every test of resuming ends with."""
    wait_for(api, TRAINING_JOB, namespace, name, phase_is("Running"), "running again", timeout=120)
    assert job_of(api, namespace, name).metadata.name == job_name  # the same run, not a new one
    wait_for(api, TRAINING_JOB, namespace, name, phase_is("Succeeded"), "Succeeded", timeout=120)


def test_a_queued_run_waits_suspended_until_kueue_admits_it_then_runs(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    custom = kueue_api(tandem_api)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", "gpu",
                                          {"spec": {"stopPolicy": "Hold"}})
    create(tandem_api, TRAINING_JOB, namespace, training("held", gpus_per_worker=4))

    held = wait_for(tandem_api, TRAINING_JOB, namespace, "held", queued_because("Inadmissible"), "Inadmissible")
    assert "LocalQueue gpu is inactive" in condition(held, "Running")["message"]  # type: ignore[index]
    job = job_of(tandem_api, namespace, "held")
    assert job.spec.suspend is True
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu"

    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", "gpu",
                                          {"spec": {"stopPolicy": "None"}})
    wait_for(tandem_api, TRAINING_JOB, namespace, "held", phase_is("Running", "Succeeded"), "admitted and running")
    admitted = workload_of_job(tandem_api, namespace, job.metadata.name)
    assert admitted is not None
    assert admitted["status"]["admission"]["clusterQueue"] == "gpu"
    assert admitted["status"]["admission"]["podSetAssignments"][0]["flavors"]["nvidia.com/gpu"] == "gpu"
    wait_for(tandem_api, TRAINING_JOB, namespace, "held", phase_is("Succeeded"), "Succeeded", timeout=120)


def test_a_run_beyond_the_quota_waits_until_the_first_finishes(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    running(tandem_api, namespace, training("first", gpus_per_worker=GPU_QUOTA // 2, duration="25s"))
    create(tandem_api, TRAINING_JOB, namespace, training("second", gpus_per_worker=GPU_QUOTA // 2))

    wait_for(
        tandem_api, TRAINING_JOB, namespace, "second",
        lambda obj: queued_because("Pending")(obj) and "insufficient" in (condition(obj, "Running") or {})["message"],
        "Pending for quota, in Kueue's words",
    )
    assert get(tandem_api, TRAINING_JOB, namespace, "first")["status"]["phase"] == "Running"
    assert job_of(tandem_api, namespace, "second").spec.suspend is True

    wait_for(tandem_api, TRAINING_JOB, namespace, "first", phase_is("Succeeded"), "Succeeded", timeout=120)
    wait_for(tandem_api, TRAINING_JOB, namespace, "second", phase_is("Succeeded"), "admitted after the first",
             timeout=120)


def test_an_unknown_queue_is_a_clear_condition_and_nothing_runs(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    create(tandem_api, TRAINING_JOB, namespace, training("lost", gpus_per_worker=1, queue="no-such-queue"))

    lost = wait_for(tandem_api, TRAINING_JOB, namespace, "lost", queued_because("Inadmissible"), "Inadmissible")
    assert condition(lost, "Running")["message"] == (  # type: ignore[index]
        "Kueue cannot admit the run: LocalQueue no-such-queue doesn't exist"
    )
    assert job_of(tandem_api, namespace, "lost").spec.suspend is True
    assert not k8s.CoreV1Api(tandem_api).list_namespaced_pod(namespace).items


def test_suspending_a_queued_run_releases_its_quota_and_resuming_queues_it_again(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    running(tandem_api, namespace, training("paused", gpus_per_worker=GPU_QUOTA // 2, duration="20s"))

    suspend(tandem_api, namespace, "paused")
    job_name = job_of(tandem_api, namespace, "paused").metadata.name
    wait_until(lambda: job_of(tandem_api, namespace, "paused").spec.suspend, timeout=60, what="Job suspended")
    assert (workload_of_job(tandem_api, namespace, job_name) or {})["spec"]["active"] is False

    # The quota it held is free: a run that needs all of it is admitted and finishes meanwhile.
    create(tandem_api, TRAINING_JOB, namespace, training("meanwhile", gpus_per_worker=GPU_QUOTA // 2))
    wait_for(tandem_api, TRAINING_JOB, namespace, "meanwhile", phase_is("Succeeded"), "Succeeded", timeout=120)
    assert get(tandem_api, TRAINING_JOB, namespace, "paused")["status"]["phase"] == "Queued"

    patch_spec(tandem_api, TRAINING_JOB, namespace, "paused", {"suspend": False})
    resumes_as_the_same_run_and_succeeds(tandem_api, namespace, "paused", job_name)


def test_a_run_created_suspended_in_a_queue_is_held_until_resumed(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    create(tandem_api, TRAINING_JOB, namespace, training("later", gpus_per_worker=1, suspend=True))
    # Held once the operator has seen Kueue's Workload (docs/queueing.md: Kueue may start it a moment before).
    wait_until(
        lambda: (workload_of_job(tandem_api, namespace, "later-g1") or {}).get("spec", {}).get("active") is False
        and job_of(tandem_api, namespace, "later").spec.suspend,
        timeout=60,
        what="Workload deactivated and Job suspended",
    )
    wait_for(tandem_api, TRAINING_JOB, namespace, "later", queued_because("Suspended"), "Suspended")

    patch_spec(tandem_api, TRAINING_JOB, namespace, "later", {"suspend": False})
    wait_for(tandem_api, TRAINING_JOB, namespace, "later", phase_is("Succeeded"), "Succeeded", timeout=120)


def test_suspend_and_resume_without_a_queue(operator: Any, tandem_api: k8s.ApiClient, namespace: str) -> None:
    running(tandem_api, namespace, training("plain", gpus_per_worker=1, duration="15s", queue=None))

    suspend(tandem_api, namespace, "plain")
    assert job_of(tandem_api, namespace, "plain").spec.suspend is True

    patch_spec(tandem_api, TRAINING_JOB, namespace, "plain", {"suspend": False})
    wait_for(tandem_api, TRAINING_JOB, namespace, "plain", phase_is("Succeeded"), "Succeeded", timeout=120)


def urgent_job(name: str, gpus: int) -> k8s.V1Job:
    """A plain batch Job in the same queue with the WorkloadPriorityClass `urgent`."""
    labels = {"kueue.x-k8s.io/queue-name": "gpu", "kueue.x-k8s.io/priority-class": "urgent"}
    container = k8s.V1Container(
        name="work", image="busybox", resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)})
    )
    pod = k8s.V1PodSpec(
        restart_policy="Never",
        containers=[container],
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    )
    template = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(annotations={"tandem.dev/fake-duration": "3s"}), spec=pod
    )
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1JobSpec(template=template, suspend=True, backoff_limit=0),
    )


def test_an_urgent_workload_preempts_a_run_which_resumes_after_it(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    running(tandem_api, namespace, training("ordinary", gpus_per_worker=GPU_QUOTA // 2, duration="30s"))

    batch = k8s.BatchV1Api(tandem_api)
    batch.create_namespaced_job(namespace, urgent_job("urgent", GPU_QUOTA))
    preempted = wait_for(tandem_api, TRAINING_JOB, namespace, "ordinary", queued_because("Preempted"), "Preempted")
    assert "LocalQueue gpu" in condition(preempted, "Running")["message"]  # type: ignore[index]
    assert job_of(tandem_api, namespace, "ordinary").spec.suspend is True

    wait_until(
        lambda: (batch.read_namespaced_job_status("urgent", namespace).status.succeeded or 0) == 1,
        timeout=120,
        what="urgent Job succeeded",
    )
    wait_for(tandem_api, TRAINING_JOB, namespace, "ordinary", phase_is("Running"), "resumed", timeout=120)
    wait_for(tandem_api, TRAINING_JOB, namespace, "ordinary", phase_is("Succeeded"), "Succeeded", timeout=120)


def test_a_priority_class_needs_a_queue_and_may_change_but_not_go(tandem_api: k8s.ApiClient, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        create(tandem_api, TRAINING_JOB, namespace, training("alone", 1, queue=None, priorityClass="urgent"))
    assert refused.value.status == 422
    assert "spec.priorityClass needs spec.queue" in str(refused.value.body)

    create(tandem_api, TRAINING_JOB, namespace, training("ranked", 1, suspend=True, priorityClass="urgent"))
    patch_spec(tandem_api, TRAINING_JOB, namespace, "ranked", {"priorityClass": "routine"})
    with pytest.raises(ApiException) as removed:
        patch_spec(tandem_api, TRAINING_JOB, namespace, "ranked", {"priorityClass": None})
    assert "spec.priorityClass cannot be added or removed" in str(removed.value.body)


def test_an_urgent_training_run_preempts_an_ordinary_one_which_resumes_after_it(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    running(tandem_api, namespace, training("ordinary", gpus_per_worker=GPU_QUOTA // 2, duration="40s"))
    job_name = job_of(tandem_api, namespace, "ordinary").metadata.name

    create(tandem_api, TRAINING_JOB, namespace,
           training("urgent", gpus_per_worker=GPU_QUOTA // 2, priorityClass="urgent"))
    preempted = wait_for(tandem_api, TRAINING_JOB, namespace, "ordinary", queued_because("Preempted"), "Preempted")
    assert job_of(tandem_api, namespace, "urgent").metadata.labels["kueue.x-k8s.io/priority-class"] == "urgent"
    message = condition(preempted, "Running")["message"]  # type: ignore[index]
    assert message.startswith("Kueue evicted the run, which waits in LocalQueue gpu: Preempted to accommodate")
    assert job_of(tandem_api, namespace, "ordinary").spec.suspend is True
    urgent_workload = workload_of_job(tandem_api, namespace, job_of(tandem_api, namespace, "urgent").metadata.name)
    assert (urgent_workload or {})["spec"]["priority"] == 1000
    assert (workload_of_job(tandem_api, namespace, job_name) or {})["spec"].get("priority", 0) == 0

    wait_for(tandem_api, TRAINING_JOB, namespace, "urgent", phase_is("Succeeded"), "Succeeded", timeout=120)
    resumes_as_the_same_run_and_succeeds(tandem_api, namespace, "ordinary", job_name)


def test_a_priority_class_that_does_not_exist_is_named_and_mending_it_lets_the_run_start(
    operator: Any, queues: str, tandem_api: k8s.ApiClient
) -> None:
    namespace = queues
    create(tandem_api, TRAINING_JOB, namespace, training("unranked", 1, priorityClass="no-such-class"))
    waiting = wait_for(tandem_api, TRAINING_JOB, namespace, "unranked", queued_because("WaitingForKueue"), "waiting")
    assert "WorkloadPriorityClass no-such-class does not exist" in condition(waiting, "Running")["message"]  # type: ignore[index]
    job_name = job_of(tandem_api, namespace, "unranked").metadata.name
    assert workload_of_job(tandem_api, namespace, job_name) is None

    patch_spec(tandem_api, TRAINING_JOB, namespace, "unranked", {"priorityClass": "urgent"})  # the typo mended
    wait_for(tandem_api, TRAINING_JOB, namespace, "unranked", phase_is("Succeeded"), "Succeeded", timeout=120)
    assert job_of(tandem_api, namespace, "unranked").metadata.name == job_name  # relabelled, not replaced
    assert (workload_of_job(tandem_api, namespace, job_name) or {})["spec"]["priority"] == 1000
