"""The per-pod and per-container state the executor keeps, and the pod status it reports from it.

Status follows kubelet's shape (phase, podIP, hostIP, startTime, conditions, containerStatuses with
waiting/running/terminated states and lastState) so controllers (Job, ReplicaSet, EndpointSlice) and the
operator see the same fields they would on a real node.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tandem.devexec.nodes import NODE_IP, now_rfc3339
from tandem.devexec.probes import Prober
from tandem.devexec.process import ContainerProcess, Exit, rfc3339
from tandem.devexec.volumes import PodFilesystem

BACKOFF_START = 1.0
BACKOFF_CAP = 30.0
"""Restart backoff doubles from 1 s to 30 s (kubelet: 10 s to 5 min; shorter suits a test harness)."""


@dataclass
class ContainerRuntime:
    spec: Mapping[str, Any]
    restart_count: int = 0
    process: ContainerProcess | None = None
    last_exit: Exit | None = None
    """The latest exit: the terminated state once the container is done."""
    previous_exit: Exit | None = None
    """The exit before the current run (lastState), once the container has restarted."""
    done: bool = False
    """Exited and will not restart (restartPolicy), or stopped for deletion."""
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    startup: Prober | None = None
    readiness: Prober | None = None
    liveness: Prober | None = None
    futures: list[tuple[Prober, Future[bool]]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def started(self) -> bool:
        return self.process is not None and (self.startup is None or self.startup.success)

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        return self.readiness is None or self.readiness.success

    def arm_probes(self) -> None:
        now = time.monotonic()
        self.startup = Prober(self.spec["startupProbe"], now) if self.spec.get("startupProbe") else None
        self.readiness = Prober(self.spec["readinessProbe"], now) if self.spec.get("readinessProbe") else None
        self.liveness = Prober(self.spec["livenessProbe"], now) if self.spec.get("livenessProbe") else None

    def status(self, image: str) -> dict[str, Any]:
        state: dict[str, Any]
        container_id = ""
        if self.process is not None:
            container_id = f"devexec://{self.process.pid}"
            state = {"running": {"startedAt": rfc3339(self.process.started_at)}}
        elif self.done and self.last_exit is not None:
            state = {"terminated": terminated(self.last_exit)}
        else:
            waiting: dict[str, str] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        last_state: dict[str, Any] = {}
        if self.previous_exit is not None:
            last_state = {"terminated": terminated(self.previous_exit)}
        return {
            "name": self.name,
            "image": image,
            "imageID": f"devexec://{image}",
            "containerID": container_id,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last_state,
        }


def terminated(exit_: Exit) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exitCode": exit_.code,
        "reason": exit_.reason,
        "startedAt": rfc3339(exit_.started_at),
        "finishedAt": rfc3339(exit_.finished_at),
    }
    if exit_.signal is not None:
        body["signal"] = exit_.signal
    if exit_.message:
        body["message"] = exit_.message
    return body


@dataclass
class PodRuntime:
    pod: dict[str, Any]
    ip: str
    fs: PodFilesystem
    containers: list[ContainerRuntime]
    prepared: bool = False
    start_time: str = field(default_factory=now_rfc3339)
    stop_deadline: float | None = None
    """Set when deletion began: SIGKILL for whatever still runs after it."""
    next_prepare: float = 0.0
    transitions: dict[str, tuple[str, str]] = field(default_factory=dict)
    """condition type -> (status, lastTransitionTime)."""
    posted: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    @property
    def restart_policy(self) -> str:
        return str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    @property
    def running(self) -> bool:
        return any(c.process is not None for c in self.containers)

    @property
    def finished(self) -> bool:
        return self.prepared and all(c.done and c.process is None for c in self.containers)

    def phase(self) -> str:
        if not self.prepared:
            return "Pending"
        if not self.finished:
            return "Running" if self.running or self.restart_policy != "Never" or self.deleting else "Pending"
        codes = [c.last_exit.code if c.last_exit else 1 for c in self.containers]
        return "Succeeded" if all(code == 0 for code in codes) else "Failed"

    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        when = previous[1] if previous and previous[0] == status else now_rfc3339()
        self.transitions[kind] = (status, when)
        condition: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": when, "lastProbeTime": None}
        if reason:
            condition["reason"] = reason
        return condition

    def status(self) -> dict[str, Any]:
        phase = self.phase()
        ready = self.prepared and all(c.ready for c in self.containers) and phase == "Running"
        not_ready = "PodCompleted" if phase in ("Succeeded", "Failed") else ("" if ready else "ContainersNotReady")
        scheduled = [
            c for c in (self.pod.get("status") or {}).get("conditions") or [] if c.get("type") == "PodScheduled"
        ]
        conditions = [
            self._condition("PodReadyToStartContainers", self.prepared and phase in ("Pending", "Running")),
            self._condition("Initialized", True),
            self._condition("ContainersReady", ready, not_ready),
            self._condition("Ready", ready, not_ready),
            *scheduled,
        ]
        images = {c["name"]: c.get("image", "") for c in (self.pod.get("spec") or {}).get("containers") or []}
        return {
            "phase": phase,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "qosClass": (self.pod.get("status") or {}).get("qosClass", "Burstable"),
            "conditions": conditions,
            "containerStatuses": [c.status(images.get(c.name, "")) for c in self.containers],
        }


def same_status(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    return a == b
