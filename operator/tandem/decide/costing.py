"""Cost- and energy-aware placement for `placement: auto`: a pure decision over measured profiles.

The right pool depends on the model and the load. ResNet-18 at batch 1 answers in 4.2 ms on 16 CPU threads and
2.4 ms on a GPU, but a GPU replica sustains 18,000 requests/s against the CPU replica's 322 at about five times
the hourly price: at 50 requests/s one CPU replica is cheapest, at 5,000 requests/s one GPU replica is. A small
MLP answers faster on CPU than a GPU can launch a kernel, so it stays on CPU at any load. No rule of thumb gets
all three right; measuring and pricing does.

`decide` takes the SLO, each candidate pool's price per replica and its measured profile, and returns the pool,
the replica count, the hourly cost and every candidate's figures. It does no I/O, so its inputs and outputs go
into the InferenceService's status verbatim and a user can redo the arithmetic by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from tandem.api.common import Usage
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import PlacementStatus, PoolEstimate, Slo
from tandem.decide.usage import add, priced

PLANNING_UTILISATION = 0.8
"""Replicas are planned at 80% of their measured saturation throughput: at saturation the request queue grows
without bound and the p99 with it, so a plan at 100% would meet the rate and miss the latency. It matches the
headroom the autoscaler's default 70% CPU target leaves."""


class NoCandidate(Exception):
    """No candidate pool has usable measured figures, so there is nothing to decide between."""

    def __init__(self, estimates: list[PoolEstimate]) -> None:
        self.estimates = estimates
        notes = "; ".join(f"{estimate.pool}: {estimate.note}" for estimate in estimates) or "no candidate pools"
        super().__init__(f"no pool has a usable profile ({notes})")


@dataclass(frozen=True)
class Profile:
    """What `tandem profile` measured for one model on one pool, with the serving settings."""

    p99_latency_ms: float
    """99th percentile latency of one request, as the SLO counts it."""
    throughput_per_replica: float
    """Requests per second one replica sustains (closed loop at saturation)."""
    device: str = "cpu"
    """Device the model actually ran on: cpu or cuda."""


@dataclass(frozen=True)
class Candidate:
    """One pool the service could run on: its price and power per replica, and its profile if there is one."""

    pool: str
    cost_per_replica_hour: float
    """Hourly price of one replica's requests (cores x core-hour + accelerators x accelerator-hour)."""
    watts_per_replica: float = 0.0
    """Power one busy replica draws (cores x watts-per-core + accelerators x watts-per-accelerator)."""
    accelerator: bool = False
    """Whether the pool has accelerators; its profile must then have run on one."""
    profile: Profile | None = None
    """Measured figures; None excludes the pool (with `note` saying why)."""
    note: str | None = None
    """Why there is no profile, or a remark on it."""


@dataclass(frozen=True)
class Decision:
    """The chosen pool and the evidence: every candidate's estimate, in the order given."""

    pool: str
    replicas: int
    cost_per_hour: float
    watts: float
    meets_slo: bool
    reason: str
    estimates: list[PoolEstimate]

    def status(self) -> PlacementStatus:
        chosen = next(estimate for estimate in self.estimates if estimate.pool == self.pool)
        return PlacementStatus(
            pool=self.pool,
            reason=self.reason,
            cost_per_hour=self.cost_per_hour,
            cost_per_million_inferences=chosen.cost_per_million_inferences,
            joules_per_inference=chosen.joules_per_inference,
            candidates=list(self.estimates),
        )


@dataclass(frozen=True)
class _Plan:
    candidate: Candidate
    profile: Profile
    replicas: int
    cost: float
    watts: float
    meets: bool
    estimate: PoolEstimate


def _money(value: float) -> float:
    return round(value, 6)


def replicas_needed(target_rps: float, throughput_per_replica: float, utilisation: float) -> int:
    """Replicas whose planned throughput covers the target load (at least one)."""
    planned = throughput_per_replica * utilisation
    if planned <= 0:
        raise ValueError("throughput and utilisation must be positive")
    # A tiny epsilon so that 322 * 0.8 * 2 >= 515.2 does not round up to 3 on a float's last bit.
    return max(1, math.ceil(target_rps / planned - 1e-9))


def _plan(
    candidate: Candidate, slo: Slo, min_replicas: int, max_replicas: int | None, utilisation: float
) -> _Plan | PoolEstimate:
    """The estimate for one candidate: a full plan when it has usable figures, else an excluded estimate."""
    profile = candidate.profile
    if profile is None:
        return PoolEstimate(pool=candidate.pool, measured=False, note=candidate.note or "no profile")
    if candidate.accelerator and profile.device == "cpu":
        note = (
            f"profile ran on CPU, not on the pool's accelerator (no CUDA device available to onnxruntime): "
            f"{profile.p99_latency_ms:g} ms p99, {profile.throughput_per_replica:g} req/s on CPU; not used"
        )
        return PoolEstimate(pool=candidate.pool, measured=False, note=note)
    if profile.throughput_per_replica <= 0:
        return PoolEstimate(pool=candidate.pool, measured=True, note="profile measured no throughput")
    needed = replicas_needed(slo.target_requests_per_second, profile.throughput_per_replica, utilisation)
    replicas = max(needed, min_replicas)
    notes: list[str] = []
    meets = True
    if profile.p99_latency_ms > slo.p99_latency_ms:
        meets = False
        notes.append(f"p99 {profile.p99_latency_ms:g} ms exceeds the SLO's {slo.p99_latency_ms:g} ms")
    if max_replicas is not None and replicas > max_replicas:
        meets = False
        notes.append(
            f"needs {replicas} replicas for {slo.target_requests_per_second:g} req/s, "
            f"spec.replicas.max is {max_replicas}"
        )
        replicas = max_replicas
    cost = _money(replicas * candidate.cost_per_replica_hour)
    watts = round(replicas * candidate.watts_per_replica, 3)
    # Per request at the load the replicas are planned for: the unit in which pools compare across models.
    per_million = _money(cost / (slo.target_requests_per_second * 3600) * 1_000_000)
    joules = round(watts / slo.target_requests_per_second, 6)
    if candidate.note:
        notes.append(candidate.note)
    estimate = PoolEstimate(
        pool=candidate.pool,
        measured=True,
        p99_latency_ms=profile.p99_latency_ms,
        throughput_per_replica=profile.throughput_per_replica,
        replicas=replicas,
        cost_per_hour=cost,
        cost_per_million_inferences=per_million,
        joules_per_inference=joules,
        meets_slo=meets,
        note="; ".join(notes) or None,
    )
    return _Plan(candidate, profile, replicas, cost, watts, meets, estimate)


def _summary(plan: _Plan) -> str:
    return (
        f"{plan.candidate.pool}: {plan.replicas} x {plan.candidate.cost_per_replica_hour:g}/h = {plan.cost:g}/h, "
        f"p99 {plan.profile.p99_latency_ms:g} ms, {plan.profile.throughput_per_replica:g} req/s per replica, "
        f"{plan.watts:g} W, {plan.estimate.cost_per_million_inferences:g} per million requests, "
        f"{plan.estimate.joules_per_inference:g} J per request"
    )


def decide(
    slo: Slo,
    candidates: list[Candidate],
    *,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    utilisation: float = PLANNING_UTILISATION,
) -> Decision:
    """The cheapest pool that meets the SLO; if none does, the fastest, with meets_slo False.

    Ties in cost go to the lower power draw (the energy-aware part), then to a pool without accelerators (GPUs
    are the scarce resource training needs), then to the lower latency, then to the pool name, so the answer
    never depends on the order of the input. Raises NoCandidate when no pool has usable figures.
    """
    plans: list[_Plan] = []
    estimates: list[PoolEstimate] = []
    for candidate in candidates:
        planned = _plan(candidate, slo, min_replicas, max_replicas, utilisation)
        if isinstance(planned, _Plan):
            plans.append(planned)
            estimates.append(planned.estimate)
        else:
            estimates.append(planned)
    if not plans:
        raise NoCandidate(estimates)
    objective = f"p99 < {slo.p99_latency_ms:g} ms at {slo.target_requests_per_second:g} req/s"
    meeting = [plan for plan in plans if plan.meets]
    if meeting:
        chosen = min(
            meeting,
            key=lambda p: (p.cost, p.watts, p.candidate.accelerator, p.profile.p99_latency_ms, p.candidate.pool),
        )
        others = [plan for plan in plans if plan is not chosen]
        reason = f"cheapest pool meeting {objective}: {_summary(chosen)}"
        if others:
            reason += "; against " + "; ".join(
                _summary(plan) + ("" if plan.meets else " (misses the SLO)") for plan in others
            )
    else:
        chosen = min(
            plans, key=lambda p: (p.profile.p99_latency_ms, -p.profile.throughput_per_replica, p.candidate.pool)
        )
        reason = f"no pool meets {objective}; serving on the fastest: {_summary(chosen)}"
        others = [plan for plan in plans if plan is not chosen]
        if others:
            reason += "; against " + "; ".join(_summary(plan) for plan in others)
    excluded = [estimate for estimate in estimates if not estimate.measured or estimate.replicas is None]
    if excluded:
        reason += "; not considered: " + "; ".join(f"{e.pool} ({e.note})" for e in excluded)
    return Decision(
        pool=chosen.candidate.pool,
        replicas=chosen.replicas,
        cost_per_hour=chosen.cost,
        watts=chosen.watts,
        meets_slo=chosen.meets,
        reason=reason,
        estimates=estimates,
    )


# ---- Prices per replica and the serving ledger ---------------------------------------------------------


def replica_rates(cores: float, accelerators: int, pool: ComputePoolSpec) -> tuple[float, float]:
    """(price per hour, watts) of one replica's requests on `pool`.

    A replica is priced by what it requests, not by whole nodes: the pool's nodeHour is what the platform team
    pays for idle capacity too, which no single service causes, so it is left out of per-service figures.
    """
    price = cores * pool.price.core_hour + accelerators * pool.price.accelerator_hour
    watts = cores * pool.power.watts_per_core + accelerators * pool.power.watts_per_accelerator
    return _money(price), round(watts, 3)


def accrue(
    usage: Usage,
    since: datetime | None,
    now: datetime,
    replicas: int,
    cores: float,
    accelerators: int,
    pool: ComputePoolSpec | None,
) -> Usage:
    """The ledger after `replicas` replicas ran from `since` to `now`, priced by `pool`.

    The replica count is the one observed at `since` (a left Riemann sum over reconciles), so the ledger is as
    fine as the resync period; a first observation (since None) or a clock step backwards adds nothing.
    """
    if since is None or replicas <= 0 or now <= since:
        return usage
    seconds = (now - since).total_seconds() * replicas
    delta = priced(seconds * accelerators, seconds * cores, pool)
    return add(usage, delta)
