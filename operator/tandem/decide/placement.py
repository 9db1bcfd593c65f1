"""Which pool a workload runs on, and the scheduling fields that put its pods there.

Pure functions of the specs and the ComputePools: no API calls, so every rule is a plain unit test. The
invariants: a pod gets a pool's tolerations only when it is placed on that pool, a pod on an accelerator pool
always requests accelerators, and a serving pod lands on a GPU pool only when placed there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tandem.api.computepool import ComputePoolSpec, PoolRole
from tandem.api.inferenceservice import InferenceServiceSpec, Placement
from tandem.api.trainingjob import TrainingJobSpec
from tandem.errors import Problem

Pools = Mapping[str, ComputePoolSpec]


class PlacementError(Problem):
    """A spec that passed the schema but cannot be placed on any pool."""


@dataclass(frozen=True)
class PodPlacement:
    """The scheduling fields of a pod template for one pool."""

    pool: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] | None = None

    def apply(self, pod_spec: dict[str, Any]) -> dict[str, Any]:
        """The pod spec with these fields set."""
        placed = {**pod_spec, "nodeSelector": dict(self.node_selector)}
        if self.tolerations:
            placed["tolerations"] = [dict(toleration) for toleration in self.tolerations]
        if self.affinity:
            placed["affinity"] = self.affinity
        return placed


def _named(pools: Pools, name: str) -> ComputePoolSpec:
    pool = pools.get(name)
    if pool is None:
        known = ", ".join(sorted(pools)) or "none"
        raise PlacementError("PoolNotFound", f"ComputePool {name!r} does not exist (known pools: {known})")
    return pool


def _first(candidates: list[str]) -> str | None:
    return sorted(candidates)[0] if candidates else None


def training_pool(spec: TrainingJobSpec, pools: Pools) -> str:
    """The pool a TrainingJob runs on: its named pool, else the (alphabetically first) training pool."""
    if spec.pool is not None:
        name = spec.pool
    else:
        chosen = _first([name for name, pool in pools.items() if pool.role == PoolRole.TRAINING])
        if chosen is None:
            raise PlacementError(
                "NoTrainingPool", "no ComputePool has role training; set spec.pool or create a training pool"
            )
        name = chosen
    check_accelerators(name, _named(pools, name), spec.resources.gpus)
    return name


def serving_pool(spec: InferenceServiceSpec, pools: Pools) -> tuple[str, str]:
    """The pool and the reason for an InferenceService with placement cpu or gpu, or an explicit pool."""
    if spec.pool is not None:
        check_accelerators(spec.pool, _named(pools, spec.pool), spec.resources.gpus)
        return spec.pool, f"spec.pool names {spec.pool}"
    if spec.placement == Placement.AUTO:
        raise PlacementError("NeedsProfile", "placement auto is decided from measured profiles")
    return kind_pool(spec.placement, spec.resources.gpus, pools)


def kind_pool(kind: Placement, gpus: int, pools: Pools) -> tuple[str, str]:
    """The pool and the reason for placement `kind` (cpu or gpu) with `gpus` asked per replica: a serving pool
    of that kind first, else any pool of it, alphabetically first; auto measures the pools this picks."""
    want_accelerator = kind == Placement.GPU
    matching = [name for name, pool in pools.items() if bool(pool.accelerator) == want_accelerator]
    serving = [name for name in matching if pools[name].role == PoolRole.SERVING]
    chosen = _first(serving) or _first(matching)
    if chosen is None:
        wanted = "an accelerator" if want_accelerator else "no accelerator"
        raise PlacementError("NoMatchingPool", f"placement {kind.value} needs a ComputePool with {wanted}; none exists")
    check_accelerators(chosen, pools[chosen], max(gpus, 1) if want_accelerator else gpus)
    role = "serving " if chosen in serving else ""
    return chosen, f"placement {kind.value}: {role}pool {chosen}"


def serving_accelerators(spec: InferenceServiceSpec, pool: ComputePoolSpec) -> int:
    """Accelerators per replica: at least one on an accelerator pool, none elsewhere."""
    return max(spec.resources.gpus, 1) if pool.accelerator else 0


def check_accelerators(name: str, pool: ComputePoolSpec, accelerators: int) -> None:
    """Refuse the two mismatches: accelerators asked of a CPU pool, or an accelerator pool used without any."""
    if accelerators > 0 and not pool.accelerator:
        raise PlacementError(
            "PoolHasNoAccelerator", f"ComputePool {name!r} has no accelerator but {accelerators} were requested"
        )
    if accelerators == 0 and pool.accelerator:
        raise PlacementError(
            "AcceleratorNotRequested",
            f"ComputePool {name!r} is an {pool.accelerator} pool; request accelerators or choose a CPU pool",
        )


def pod_placement(name: str, pool: ComputePoolSpec) -> PodPlacement:
    """Node selector, tolerations and affinity for pods placed on `pool`."""
    return PodPlacement(
        pool=name,
        node_selector=dict(pool.node_selector),
        tolerations=[toleration.to_wire() for toleration in pool.tolerations],
        affinity=pool.affinity,
    )


def resource_requirements(
    cpu: str | int, memory: str | int, accelerators: int, pool: ComputePoolSpec
) -> dict[str, dict[str, str]]:
    """Requests equal to limits (Guaranteed QoS for CPU and memory); accelerators as the pool names them."""
    amounts: dict[str, str] = {"cpu": str(cpu), "memory": str(memory)}
    if accelerators:
        amounts[pool.accelerator] = str(accelerators)
    return {"requests": dict(amounts), "limits": dict(amounts)}
