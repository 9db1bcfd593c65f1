"""The local control plane behaves like a real GPU/CPU cluster.

These run against real kube-apiserver, kube-scheduler and kube-controller-manager processes; kwok only
plays the kubelets. Everything later (operator, placement, chart) relies on these behaviours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from support.cluster import LocalCluster, pid_is_alive, port_is_open, wait_until

GPU_TOLERATION = k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")


def _pod(
    name: str,
    *,
    gpus: int = 0,
    tolerate_gpu: bool = False,
    node_selector: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    node_name: str | None = None,
) -> k8s.V1Pod:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else None
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=annotations),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            node_name=node_name,
            tolerations=[GPU_TOLERATION] if tolerate_gpu else None,
            node_selector=node_selector,
            containers=[
                k8s.V1Container(
                    name="main",
                    image="example.invalid/tandem/fake:latest",
                    resources=k8s.V1ResourceRequirements(requests={"cpu": "100m"}, limits=limits),
                )
            ],
        ),
    )


def _job(name: str, annotations: dict[str, str] | None = None) -> k8s.V1Job:
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1JobSpec(
            backoff_limit=0,
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(annotations=annotations),
                spec=k8s.V1PodSpec(
                    restart_policy="Never",
                    containers=[k8s.V1Container(name="train", image="example.invalid/tandem/train:latest")],
                ),
            ),
        ),
    )


def _condition(obj: Any, kind: str) -> Any:
    for cond in obj.status.conditions or []:
        if cond.type == kind:
            return cond
    return None


def _apis(kube: k8s.ApiClient) -> tuple[Any, Any, Any]:
    """Core, batch and apps APIs, typed loosely: the tests assert the shape of what the server returns."""
    return k8s.CoreV1Api(kube), k8s.BatchV1Api(kube), k8s.AppsV1Api(kube)


def _pool_of(core: Any, node_name: str) -> str:
    return str(core.read_node(node_name).metadata.labels["tandem.dev/pool"])


def _job_pods(core: Any, namespace: str, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items)


def test_node_pools_are_ready_with_gpu_capacity_and_taint(kube: k8s.ApiClient) -> None:
    core, _, _ = _apis(kube)
    gpu = core.list_node(label_selector="tandem.dev/pool=gpu").items
    cpu = core.list_node(label_selector="tandem.dev/pool=cpu").items
    assert len(gpu) >= 2 and len(cpu) >= 3
    for node in gpu + cpu:
        assert _condition(node, "Ready").status == "True"
    for node in gpu:
        assert node.status.allocatable["nvidia.com/gpu"] == "8"
        assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints)
    for node in cpu:
        assert "nvidia.com/gpu" not in node.status.allocatable


def test_gpu_pod_with_toleration_is_bound_to_a_gpu_node_and_runs(kube: k8s.ApiClient, namespace: str) -> None:
    core, _, _ = _apis(kube)
    core.create_namespaced_pod(namespace, _pod("gpu", gpus=1, tolerate_gpu=True))
    pod = wait_until(
        lambda: (p := core.read_namespaced_pod("gpu", namespace)).status.phase == "Running" and p,
        what="GPU pod Running",
    )
    assert _pool_of(core, pod.spec.node_name) == "gpu"
    assert _condition(pod, "Ready").status == "True"


def test_gpu_pod_without_toleration_stays_pending_unschedulable(kube: k8s.ApiClient, namespace: str) -> None:
    core, _, _ = _apis(kube)
    core.create_namespaced_pod(namespace, _pod("no-toleration", gpus=1))

    def scheduled_condition() -> Any:
        return _condition(core.read_namespaced_pod("no-toleration", namespace), "PodScheduled")

    cond = wait_until(scheduled_condition, what="PodScheduled condition")
    assert cond.status == "False"
    assert cond.reason == "Unschedulable"
    pod = core.read_namespaced_pod("no-toleration", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_pod_with_cpu_pool_selector_lands_on_a_cpu_node(kube: k8s.ApiClient, namespace: str) -> None:
    core, _, _ = _apis(kube)
    core.create_namespaced_pod(namespace, _pod("cpu", node_selector={"tandem.dev/pool": "cpu"}))
    pod = wait_until(
        lambda: (p := core.read_namespaced_pod("cpu", namespace)).spec.node_name and p, what="binding"
    )
    assert _pool_of(core, pod.spec.node_name) == "cpu"


def test_job_completes_through_the_job_controller(kube: k8s.ApiClient, namespace: str) -> None:
    _, batch, _ = _apis(kube)
    batch.create_namespaced_job(namespace, _job("ok", {"tandem.dev/fake-duration": "1s"}))
    complete = wait_until(
        lambda: _condition(batch.read_namespaced_job_status("ok", namespace), "Complete"),
        what="Job Complete condition",
    )
    assert complete.status == "True"
    assert batch.read_namespaced_job_status("ok", namespace).status.succeeded == 1


def test_job_pod_reports_termination_message_on_success(kube: k8s.ApiClient, namespace: str) -> None:
    core, batch, _ = _apis(kube)
    message = '{"model": "s3://models/m1.onnx", "accuracy": 0.93}'
    batch.create_namespaced_job(
        namespace,
        _job("meta", {"tandem.dev/fake-duration": "1s", "tandem.dev/fake-termination-message": message}),
    )
    wait_until(lambda: batch.read_namespaced_job_status("meta", namespace).status.succeeded, what="Job done")
    (pod,) = _job_pods(core, namespace, "meta")
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    assert terminated.message == message


def test_job_pod_annotated_to_fail_ends_failed_with_exit_code_and_message(
    kube: k8s.ApiClient, namespace: str
) -> None:
    core, batch, _ = _apis(kube)
    annotations = {
        "tandem.dev/fake-duration": "1s",
        "tandem.dev/fake-exit-code": "3",
        "tandem.dev/fake-termination-message": "CUDA out of memory",
    }
    batch.create_namespaced_job(namespace, _job("fail", annotations))
    wait_until(
        lambda: _condition(batch.read_namespaced_job_status("fail", namespace), "Failed"),
        what="Job Failed condition",
    )
    (pod,) = _job_pods(core, namespace, "fail")
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 3
    assert terminated.message == "CUDA out of memory"


def test_deployment_pods_become_ready(kube: k8s.ApiClient, namespace: str) -> None:
    _, _, apps = _apis(kube)
    labels = {"app": "serve"}
    apps.create_namespaced_deployment(
        namespace,
        k8s.V1Deployment(
            metadata=k8s.V1ObjectMeta(name="serve"),
            spec=k8s.V1DeploymentSpec(
                replicas=3,
                selector=k8s.V1LabelSelector(match_labels=labels),
                template=k8s.V1PodTemplateSpec(
                    metadata=k8s.V1ObjectMeta(labels=labels),
                    spec=k8s.V1PodSpec(
                        node_selector={"tandem.dev/pool": "cpu"},
                        containers=[k8s.V1Container(name="serve", image="example.invalid/tandem/serve")],
                    ),
                ),
            ),
        ),
    )
    wait_until(
        lambda: apps.read_namespaced_deployment_status("serve", namespace).status.ready_replicas == 3,
        what="3 ready replicas",
    )


def test_deleting_an_owner_garbage_collects_its_children(kube: k8s.ApiClient, namespace: str) -> None:
    core, _, _ = _apis(kube)
    owner = core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
    )
    ref = k8s.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="child", owner_references=[ref]))
    )
    pod: Any = _pod("child-pod")
    pod.metadata.owner_references = [ref]
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: core.read_namespaced_pod("child-pod", namespace).status.phase == "Running", what="Running"
    )

    core.delete_namespaced_config_map("owner", namespace)

    def children_gone() -> bool:
        for read in (core.read_namespaced_config_map, core.read_namespaced_pod):
            name = "child" if read is core.read_namespaced_config_map else "child-pod"
            try:
                read(name, namespace)
            except ApiException as e:
                if e.status != 404:
                    raise
            else:
                return False
        return True

    wait_until(children_gone, what="garbage collection of the children")


def test_kwok_leaves_nodes_without_the_fake_annotation_and_their_pods_alone(
    kube: k8s.ApiClient, namespace: str
) -> None:
    """A node served by something else (a real kubelet) must not be driven by kwok."""
    core, _, _ = _apis(kube)
    node_name = f"real-{namespace}"[:63]
    core.create_node(
        k8s.V1Node(
            metadata=k8s.V1ObjectMeta(name=node_name, labels={"tandem.dev/pool": "executor-test"}),
            status=k8s.V1NodeStatus(capacity={"cpu": "4", "memory": "8Gi", "pods": "10"}),
        )
    )
    try:
        core.create_namespaced_pod(namespace, _pod("on-real", node_name=node_name))
        core.create_namespaced_pod(namespace, _pod("on-fake", node_name="tandem-cpu-0"))
        # The control pod on a fake node runs within a second; by then kwok would have run the other too.
        wait_until(
            lambda: core.read_namespaced_pod("on-fake", namespace).status.phase == "Running", what="Running"
        )
        pod = core.read_namespaced_pod("on-real", namespace)
        assert pod.status.phase == "Pending" and not pod.status.pod_ip
        node = core.read_node(node_name)
        assert not _condition(node, "Ready"), "kwok initialised a node without kwok.x-k8s.io/node=fake"
        assert "kwok.x-k8s.io/node" not in (node.metadata.annotations or {})
    finally:
        core.delete_namespaced_pod("on-real", namespace, grace_period_seconds=0)
        core.delete_node(node_name)


def test_service_account_tokens_can_be_issued(kube: k8s.ApiClient, namespace: str) -> None:
    core, _, _ = _apis(kube)
    request = k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[]))
    token = core.create_namespaced_service_account_token("default", namespace, request)
    assert token.status.token.count(".") == 2
    wait_until(
        lambda: (
            core.list_namespaced_config_map(namespace, field_selector="metadata.name=kube-root-ca.crt").items
        ),
        what="kube-root-ca.crt published",
    )


@pytest.mark.slow
def test_teardown_leaves_no_process_and_no_listening_port(tmp_path: Path) -> None:
    second = LocalCluster(tmp_path / "second", gpu_nodes=1, cpu_nodes=1)
    try:
        second.up()
        pids, ports = second.pids(), second.ports()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
        assert all(pid_is_alive(pid) for pid in pids.values())
        assert port_is_open(ports["api"]) and port_is_open(ports["etcd"])
    finally:
        second.down()
    assert [name for name, pid in pids.items() if pid_is_alive(pid)] == []
    assert [name for name, port in ports.items() if port_is_open(port)] == []
    assert not second.is_running()
