"""Whether a whole gang of workers fits a pool's free capacity now: the operator's gang admission without a queue.

torch.distributed needs every worker at once. Started one by one as room appears, a gang on a pool with room
for part of it holds that part (and its GPUs) while the rest waits, and the part that started times out at
the rendezvous. So a multi-worker run without `spec.queue` is created suspended and started only when every
worker fits at once (kube-scheduler then places them all). The check simulates the scheduler's resource fit:
pods already bound to the pool's nodes keep their requests, pods of runs started a moment ago and not bound
yet are placed first, then the workers, each on the first node with room. Taints, node selectors and Ready
decide which nodes count. What it cannot see (affinity, topology spread, a pod of another scheduler's making
that lands in between) can still leave a worker pending; Kueue (`spec.queue`) is the path with quota and
strict all-or-nothing admission.

Pure functions: the caller lists the nodes and pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tandem.quantity import format_cpu, format_memory, parse_quantity

GANG_POOL_LABEL = "tandem.dev/pool"
"""On every worker pod: an unbound one with it is a started gang's worker the scheduler has yet to place."""
PODS = "pods"
SHOWN_NODES = 4
"""Nodes whose free room a waiting message lists, so it stays readable (and within a condition's size)."""
Resources = dict[str, Decimal]


@dataclass(frozen=True)
class GangFit:
    """The verdict, and a message for status that says what the gang needs and what the pool has free."""

    fits: bool
    placed: int
    message: str


def _quantities(values: Mapping[str, Any] | None) -> Resources:
    return {name: parse_quantity(value) for name, value in (values or {}).items()}


def _add(total: Resources, more: Resources) -> Resources:
    return {name: total.get(name, Decimal(0)) + more.get(name, Decimal(0)) for name in {*total, *more}}


def pod_requests(pod_spec: Mapping[str, Any]) -> Resources:
    """What the scheduler reserves for a pod: its containers' requests (a limit stands in for a missing request,
    as the API server defaults it), at least any one init container's, plus the pod overhead, and one pod."""

    def requests(container: Mapping[str, Any]) -> Resources:
        resources = container.get("resources") or {}
        return {**_quantities(resources.get("limits")), **_quantities(resources.get("requests"))}

    total: Resources = {}
    for container in pod_spec.get("containers") or []:
        total = _add(total, requests(container))
    for init in pod_spec.get("initContainers") or []:
        for name, value in requests(init).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    total = _add(total, _quantities(pod_spec.get("overhead")))
    total[PODS] = Decimal(1)
    return total


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' toleration match: an empty key with Exists tolerates everything; an empty effect any effect."""
    for toleration in tolerations:
        effect = toleration.get("effect")
        if effect and effect != taint.get("effect"):
            continue
        key, operator = toleration.get("key"), toleration.get("operator") or "Equal"
        if not key and operator == "Exists":
            return True
        if key != taint.get("key"):
            continue
        if operator == "Exists" or toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def schedulable(node: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """Ready, not cordoned, and every NoSchedule or NoExecute taint tolerated."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    if spec.get("unschedulable"):
        return False
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )
    tolerations = list(tolerations)
    blocking = [taint for taint in spec.get("taints") or [] if taint.get("effect") in ("NoSchedule", "NoExecute")]
    return ready and all(tolerates(tolerations, taint) for taint in blocking)


def _fits(free: Resources, wanted: Resources) -> bool:
    return all(free.get(name, Decimal(0)) >= amount for name, amount in wanted.items() if amount > 0)


def _take(free: Resources, wanted: Resources) -> None:
    for name, amount in wanted.items():
        free[name] = free.get(name, Decimal(0)) - amount


def _describe(resources: Resources) -> str:
    parts = []
    for name in sorted(resources):
        if name == PODS:
            continue
        amount = max(resources[name], Decimal(0))
        text = format_cpu(amount) if name == "cpu" else format_memory(amount) if name == "memory" else str(amount)
        parts.append(f"{name} {text}")
    return ", ".join(parts) or "nothing"


def gang_fit(
    worker: Resources,
    workers: int,
    nodes: list[dict[str, Any]],
    tolerations: Iterable[Mapping[str, Any]],
    bound: list[dict[str, Any]],
    starting: list[dict[str, Any]],
) -> GangFit:
    """Whether `workers` pods that each need `worker` fit the pool's nodes at once.

    `bound` are the live pods on those nodes (their requests are taken); `starting` are live unbound pods of
    gangs already started on the pool, placed before this gang so two gangs are not both started into room
    for one.
    """
    tolerations = list(tolerations)
    usable = [node for node in nodes if schedulable(node, tolerations)]
    free: dict[str, Resources] = {
        node["metadata"]["name"]: _quantities((node.get("status") or {}).get("allocatable")) for node in usable
    }
    for pod in bound:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name in free:
            _take(free[node_name], pod_requests(pod.get("spec") or {}))
    for pod in starting:
        wanted = pod_requests(pod.get("spec") or {})
        node_name = next((name for name, room in free.items() if _fits(room, wanted)), None)
        if node_name is not None:
            _take(free[node_name], wanted)
    room_now = {name: dict(room) for name, room in free.items()}
    placed = 0
    for _ in range(workers):
        node_name = next((name for name, room in free.items() if _fits(room, worker)), None)
        if node_name is None:
            break
        _take(free[node_name], worker)
        placed += 1
    fits = placed == workers
    need = f"{workers} workers of {_describe(worker)} each"
    if fits:
        return GangFit(True, placed, f"all {need} fit the pool's free capacity")
    if not usable:
        room = f"none of its {len(nodes)} nodes is Ready and schedulable" if nodes else "it has no nodes"
        return GangFit(False, 0, f"waiting for room for all {need}: {room}")
    shown = [f"{name} {_describe(room_now[name])}" for name in sorted(room_now)[:SHOWN_NODES]]
    more = f" and {len(room_now) - SHOWN_NODES} more nodes" if len(room_now) > SHOWN_NODES else ""
    return GangFit(False, placed, f"waiting for room for all {need}: only {placed} fit now (free: "
                   f"{'; '.join(shown)}{more})")  # fmt: skip
