"""The executor's Node objects: what they advertise, and the heartbeats that keep them Ready.

The nodes are deliberately not kwok nodes (no `kwok.x-k8s.io/node` annotation), so kwok never touches them
or their pods. Every node carries the taint `tandem.dev/executor=local:NoSchedule`: only pods that tolerate
it (those of ComputePools made for the executor) land here, so fake pods from other tests are never really
executed on the developer's machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tandem.devexec.kubeapi import KubeApi

log = logging.getLogger(__name__)

EXECUTOR_LABEL = "tandem.dev/executor"
EXECUTOR_VALUE = "local"
EXECUTOR_TAINT = {"key": EXECUTOR_LABEL, "value": EXECUTOR_VALUE, "effect": "NoSchedule"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
NODE_IP = "127.0.0.1"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Lease times are MicroTime."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class NodeSpec:
    """One node the executor serves: its name, pool label and advertised resources."""

    name: str
    pool: str
    cpu: str = "16"
    memory: str = "64Gi"
    pods: str = "110"
    gpus: int = 0
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "tandem.dev/pool": self.pool,
            EXECUTOR_LABEL: EXECUTOR_VALUE,
            "type": "local-executor",
        }
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
        return {**labels, **self.extra_labels}

    @property
    def resources(self) -> dict[str, str]:
        resources = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "100Gi"}
        if self.gpus:
            resources["nvidia.com/gpu"] = str(self.gpus)
        return resources

    @property
    def taints(self) -> list[dict[str, str]]:
        return [GPU_TAINT, EXECUTOR_TAINT] if self.gpus else [EXECUTOR_TAINT]


def default_nodes(gpu_nodes: int = 1, cpu_nodes: int = 1, gpus_per_node: int = 8) -> list[NodeSpec]:
    """`local-gpu-N` (pool label gpu, 8 advertised GPUs that are really CPU time) and `local-cpu-N`."""
    return [NodeSpec(f"local-gpu-{i}", "gpu", gpus=gpus_per_node) for i in range(gpu_nodes)] + [
        NodeSpec(f"local-cpu-{i}", "cpu") for i in range(cpu_nodes)
    ]


def node_status(spec: NodeSpec, transition: str) -> dict[str, Any]:
    heartbeat = now_rfc3339()

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": transition,
        }

    return {
        "capacity": spec.resources,
        "allocatable": spec.resources,
        "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": spec.name}],
        "conditions": [
            condition("Ready", "True", "LocalExecutorReady", "tandem local executor is running pods as processes"),
            condition("MemoryPressure", "False", "LocalExecutor", "not measured"),
            condition("DiskPressure", "False", "LocalExecutor", "not measured"),
            condition("PIDPressure", "False", "LocalExecutor", "not measured"),
            condition("NetworkUnavailable", "False", "LocalExecutor", "loopback pod addresses"),
        ],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": "v0.0.0-tandem-devexec",
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "tandem-devexec://local-processes",
            "osImage": "local",
            "kernelVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    }


def node_body(spec: NodeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": spec.labels,
            "annotations": {"tandem.dev/executor": "pods on this node run as local processes (tandem.devexec)"},
        },
        "spec": {"taints": spec.taints},
    }


def lease_body(spec: NodeSpec, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": spec.name,
            "namespace": LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": uid}],
        },
        "spec": {"holderIdentity": spec.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()},
    }


class NodeKeeper:
    """Registers the nodes and keeps them Ready: a Lease renewal and a status heartbeat per call."""

    def __init__(self, api: KubeApi, nodes: list[NodeSpec]) -> None:
        self.api = api
        self.nodes = nodes
        self.uids: dict[str, str] = {}
        self.transition = now_rfc3339()

    def register(self) -> None:
        """Create the nodes (or take over ones left by an earlier run: labels, taints and status are reset)."""
        for spec in self.nodes:
            current = self.api.get_node(spec.name)
            if current is None:
                current = self.api.create_node(node_body(spec))
                log.info("registered node %s (pool %s)", spec.name, spec.pool)
            else:
                current = self.api.patch_node(
                    spec.name, {"metadata": {"labels": spec.labels}, "spec": node_body(spec)["spec"]}
                )
                log.info("took over node %s (pool %s)", spec.name, spec.pool)
            self.uids[spec.name] = current["metadata"]["uid"]
        self.heartbeat()

    def heartbeat(self) -> None:
        for spec in self.nodes:
            self.api.patch_node_status(spec.name, {"status": node_status(spec, self.transition)})
            self.api.renew_lease(spec.name, LEASE_NAMESPACE, lease_body(spec, self.uids.get(spec.name, "")))

    def deregister(self) -> None:
        for spec in self.nodes:
            self.api.delete_node(spec.name)
            log.info("removed node %s", spec.name)
