"""Where an InferenceService serves, on how many replicas, and why: one pure decision.

Every placement of a service goes through `plan`: an explicit pool, `placement: cpu` or `gpu`, or `auto`
over the measured profiles. The reconciler gathers the profiles (its only I/O here) and calls it once; the
plan carries what the Deployment needs (pool, accelerators, replica bounds) and what the status says (pool,
reason, hourly cost, every candidate's figures), so what is deployed and what is reported cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, Placement, PlacementStatus, Replicas
from tandem.cgroup import MEMORY_BUDGET_SHARE
from tandem.decide import costing, observed, placement
from tandem.errors import Problem
from tandem.quantity import format_memory, parse_quantity

Pools = Mapping[str, ComputePoolSpec]
Profiles = Mapping[str, observed.Observation]
MiB = 1 << 20


@dataclass(frozen=True)
class ServingPlan:
    """A decided placement: what to deploy, and what the status says about it."""

    pool: str
    accelerators: int
    """Accelerators per replica."""
    replicas: Replicas
    """Replica bounds to deploy: the spec's, raised to what an auto decision needs for the SLO's load."""
    status: PlacementStatus
    decision: costing.Decision | None = None
    """For placement auto, the evidence behind the choice."""
    memory: str | None = None
    """Memory request and limit per replica, raised from the spec's to fit the footprint the profile measured;
    None: the spec's."""


@dataclass(frozen=True)
class AwaitingProfiles:
    """placement auto before every candidate pool's profile has finished."""

    waiting: list[str]
    """Each pool still measuring, with its Job."""


def is_auto(spec: InferenceServiceSpec) -> bool:
    """Whether the placement is measured and decided (an explicit pool always wins)."""
    return spec.placement == Placement.AUTO and spec.pool is None


def profile_pools(pools: Pools) -> list[str]:
    """The pools auto placement measures: the pool placement cpu would choose and the one gpu would.

    So auto never considers a pool the explicit placements would not use.
    """
    names: list[str] = []
    for kind in (Placement.CPU, Placement.GPU):
        try:
            name, _ = placement.kind_pool(kind, 0, pools)
        except placement.PlacementError:
            continue
        names.append(name)
    if not names:
        raise placement.PlacementError("NoMatchingPool", "placement auto needs at least one ComputePool; none exists")
    return names


def plan(spec: InferenceServiceSpec, pools: Pools, profiles: Profiles | None = None) -> ServingPlan | AwaitingProfiles:
    """The placement of `spec` on `pools`; for auto, from `profiles` (pool name to its profile's state).

    Raises placement.PlacementError or Problem (SloRequired, NoUsableProfile) for a spec no pool can take.
    """
    if is_auto(spec):
        return _auto(spec, pools, profiles or {})
    pool_name, reason = placement.serving_pool(spec, pools)
    pool = pools[pool_name]
    accelerators = placement.serving_accelerators(spec, pool)
    price, _ = costing.replica_rates(_cores(spec), accelerators, pool)
    status = PlacementStatus(pool=pool_name, reason=reason, cost_per_hour=round(spec.replicas.min * price, 6))
    return ServingPlan(pool=pool_name, accelerators=accelerators, replicas=spec.replicas, status=status)


def _cores(spec: InferenceServiceSpec) -> float:
    return float(parse_quantity(spec.resources.cpu))


def _auto(spec: InferenceServiceSpec, pools: Pools, profiles: Profiles) -> ServingPlan | AwaitingProfiles:
    if spec.slo is None:
        raise Problem("SloRequired", "placement auto needs spec.slo (p99LatencyMs and targetRequestsPerSecond)")
    waiting: list[str] = []
    candidates: list[costing.Candidate] = []
    for pool_name in profile_pools(pools):
        pool = pools[pool_name]
        found = profiles.get(pool_name)
        if found is None or found.state == observed.ProfileState.RUNNING:
            waiting.append(f"{pool_name} (Job {found.job})" if found else pool_name)
            continue
        rates = costing.replica_rates(_cores(spec), placement.serving_accelerators(spec, pool), pool)
        candidates.append(observed.candidate(pool_name, bool(pool.accelerator), rates, found))
    if waiting:
        return AwaitingProfiles(waiting)
    try:
        decision = costing.decide(spec.slo, candidates, min_replicas=spec.replicas.min, max_replicas=spec.replicas.max)
    except costing.NoCandidate as error:
        raise Problem("NoUsableProfile", str(error)) from error
    pool = pools[decision.pool]
    floor = max(spec.replicas.min, decision.replicas)
    status = decision.status()
    chosen = profiles[decision.pool].result
    memory = footprint_memory(spec, chosen.peak_resident_bytes if chosen else None)
    if memory is not None:
        reason = f"{status.reason}; memory {memory} per replica, to fit the footprint the profile measured"
        status = status.model_copy(update={"reason": reason})
    return ServingPlan(
        pool=decision.pool,
        accelerators=placement.serving_accelerators(spec, pool),
        replicas=Replicas(min=floor, max=max(spec.replicas.max, floor)),
        status=status,
        decision=decision,
        memory=memory,
    )


def footprint_memory(spec: InferenceServiceSpec, peak_resident_bytes: int | None) -> str | None:
    """The memory a replica needs for a server whose measured footprint is `peak_resident_bytes`, when the
    spec asks for less; None when the spec's memory holds it (or nothing was measured).

    The server keeps MEMORY_BUDGET_SHARE of its memory limit as the budget for what requests hold, so its own
    footprint (model, sessions, runtime) must fit the rest; a replica given less is OOM-killed under a load its
    budget admits. Rounded up to whole MiB."""
    if not peak_resident_bytes:
        return None
    needed = -(-int(peak_resident_bytes / (1 - MEMORY_BUDGET_SHARE)) // MiB) * MiB
    if needed <= int(parse_quantity(spec.resources.memory)):
        return None
    return format_memory(Decimal(needed))
