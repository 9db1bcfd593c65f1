"""Canary rollouts: which model every replica serves, which one is on trial, and the verdict on it.

Pure: the reconciler reads the canary's Deployment and its servers' metrics (tandem.controller.canary_metrics) and
hands them in; the result says what to deploy and what the status and events say. The rules:

- The first model a service serves goes to every replica (there is nothing to compare it with), unless it is
  below the quality bar, in which case the service waits for a better one.
- A new model from the TrainingJob below the quality bar (spec.rollout.minMetrics against its training
  metrics), or one already rejected, is never deployed; the old one keeps serving. A model the user names
  by URI carries no training metrics, so the bar does not apply; once rolled back it is not tried again
  through a canary (that would loop), but with canaryPercent 0 it is deployed as named (a pin).
- With canaryPercent 0 a new model goes to every replica at once (the Deployment's rolling update).
- Otherwise it serves on a share of replicas. It is rolled back as soon as its server errors exceed
  maxErrorRate of its requests or, from 100 requests on, its p99 exceeds maxP99LatencyMs, or when it is
  not fully ready by canarySeconds + READY_GRACE_SECONDS; it is promoted once it has served canarySeconds
  within its bounds (from the moment all its replicas were ready), provided its metrics could be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tandem.api.conditions import Event
from tandem.api.inferenceservice import CanaryStatus, RejectedModel, Rollout, ServedModel
from tandem.errors import Problem

CONDITION = "Canary"
READY_GRACE_SECONDS = 300
"""Beyond the window, how long a canary may take to become ready (pull, download, warm-up)."""
LATENCY_MIN_REQUESTS = 100
"""A p99 from fewer requests says little; the latency bound is judged from this many on."""
RECHECK_SECONDS = 10.0
"""How often a canary on trial is looked at again."""
REJECTED_KEPT = 10


@dataclass(frozen=True)
class CanaryMetrics:
    """What the canary's servers counted since they started."""

    requests: int
    errors: int
    p99_latency_ms: float | None


@dataclass(frozen=True)
class CanaryObservation:
    """The canary's Deployment and servers as read now; metrics None when they could not be read."""

    ready_replicas: int
    stable_ready_replicas: int
    metrics: CanaryMetrics | None


@dataclass(frozen=True)
class Verdict:
    """The Canary condition to set: status, reason, message."""

    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutPlan:
    """What to deploy: `serve` on the stable replicas, `canary` (with its replicas) beside them or none."""

    serve: ServedModel
    canary: CanaryStatus | None = None
    rejected: list[RejectedModel] = field(default_factory=list)
    verdict: Verdict | None = None
    events: list[Event] = field(default_factory=list)
    recheck_after: float | None = None


def same_model(a: ServedModel | None, b: ServedModel | None) -> bool:
    return a is not None and b is not None and (a.uri, a.sha256) == (b.uri, b.sha256)


def shortfalls(rollout: Rollout, metrics: Mapping[str, float] | None) -> str | None:
    """How a model misses the quality bar, or None; a model without training metrics (by URI) is not held."""
    if metrics is None or not rollout.min_metrics:
        return None
    missed = []
    for name, least in sorted(rollout.min_metrics.items()):
        value = metrics.get(name)
        if value is None:
            missed.append(f"reports no {name} (at least {least:g} required)")
        elif value < least:
            missed.append(f"{name} {value:.4g} is below {least:g}")
    return "; ".join(missed) or None


def canary_replicas(stable_replicas: int, percent: int) -> int:
    """Replicas beside `stable_replicas` that give the canary about `percent` of requests; at least one."""
    return max(1, round(stable_replicas * percent / (100 - percent)))


def _describe(model: ServedModel) -> str:
    return f"version {model.version}" if model.version else model.uri


def _reject(
    rejected: list[RejectedModel], model: ServedModel, reason: str, message: str, now: datetime
) -> list[RejectedModel]:
    entry = RejectedModel(
        uri=model.uri, sha256=model.sha256, version=model.version, reason=reason, message=message, at=now
    )
    return [*rejected, entry][-REJECTED_KEPT:]


def plan(
    rollout: Rollout,
    stable: ServedModel | None,
    candidate: ServedModel,
    candidate_metrics: Mapping[str, float] | None,
    trial: CanaryStatus | None,
    rejected: list[RejectedModel],
    stable_replicas: int,
    observed: CanaryObservation | None,
    now: datetime,
) -> RolloutPlan:
    """The rollout step for the newest model (`candidate`) against the one serving (`stable`).

    `trial` is the canary in the previous status, `observed` its Deployment and metrics now (None when
    there was no canary to read). Raises Problem when the first model is below the bar: nothing to serve.
    """
    if stable is None:
        missed = shortfalls(rollout, candidate_metrics)
        if missed:
            raise Problem("BelowQualityBar", f"model {_describe(candidate)} {missed}; waiting for a better one")
        return RolloutPlan(serve=candidate, rejected=rejected)
    if same_model(candidate, stable):
        return RolloutPlan(serve=stable, rejected=rejected)
    if (candidate.uri, candidate.sha256) in {(r.uri, r.sha256) for r in rejected} and (
        candidate.training_job is not None or rollout.canary_percent > 0
    ):
        return RolloutPlan(serve=stable, rejected=rejected)
    missed = shortfalls(rollout, candidate_metrics)
    if missed:
        message = f"model {_describe(candidate)} {missed}; {_describe(stable)} keeps serving"
        return RolloutPlan(
            serve=stable,
            rejected=_reject(rejected, candidate, "BelowQualityBar", message, now),
            verdict=Verdict(False, "BelowQualityBar", message),
            events=[Event("Warning", "BelowQualityBar", message)],
        )
    if rollout.canary_percent == 0:
        return RolloutPlan(serve=candidate, rejected=rejected)
    if trial is None or not same_model(trial.model, candidate):
        return _start(rollout, stable, candidate, rejected, stable_replicas, now)
    return _judge(rollout, stable, trial, rejected, observed, now)


def _start(
    rollout: Rollout,
    stable: ServedModel,
    candidate: ServedModel,
    rejected: list[RejectedModel],
    stable_replicas: int,
    now: datetime,
) -> RolloutPlan:
    replicas = canary_replicas(stable_replicas, rollout.canary_percent)
    message = (
        f"canary: {_describe(candidate)} on {replicas} replica(s) beside {stable_replicas} serving "
        f"{_describe(stable)}, for {rollout.canary_seconds}s once ready"
    )
    return RolloutPlan(
        serve=stable,
        canary=CanaryStatus(model=candidate, replicas=replicas, created_at=now),
        rejected=rejected,
        verdict=Verdict(True, "CanaryRunning", message),
        events=[Event("Normal", "CanaryStarted", message)],
        recheck_after=RECHECK_SECONDS,
    )


def _judge(
    rollout: Rollout,
    stable: ServedModel,
    trial: CanaryStatus,
    rejected: list[RejectedModel],
    observed: CanaryObservation | None,
    now: datetime,
) -> RolloutPlan:
    canary = trial.model_copy(deep=True)
    metrics = observed.metrics if observed is not None else None
    if observed is not None:
        canary.ready_replicas = observed.ready_replicas
        serving = observed.ready_replicas + observed.stable_ready_replicas
        canary.percent = round(100 * observed.ready_replicas / serving) if serving else 0
        if canary.started_at is None and observed.ready_replicas >= canary.replicas:
            canary.started_at = now
    if metrics is not None:
        canary.requests, canary.errors, canary.p99_latency_ms = metrics.requests, metrics.errors, metrics.p99_latency_ms
    left = None if canary.started_at is None else rollout.canary_seconds - (now - canary.started_at).total_seconds()
    window_over = left is not None and left <= 0
    failure = _failure(rollout, canary, metrics, window_over, now)
    if failure is not None:
        message = f"{_describe(canary.model)} rolled back: {failure}; {_describe(stable)} keeps serving"
        return RolloutPlan(
            serve=stable,
            rejected=_reject(rejected, canary.model, "RolledBack", message, now),
            verdict=Verdict(False, "RolledBack", message),
            events=[Event("Warning", "RolledBack", message)],
        )
    figures = _figures(canary)
    if window_over:
        message = f"{_describe(canary.model)} promoted after {rollout.canary_seconds}s as canary: {figures}"
        return RolloutPlan(
            serve=canary.model,
            rejected=rejected,
            verdict=Verdict(True, "Promoted", message),
            events=[Event("Normal", "Promoted", message)],
        )
    # The end of the window, not the time left: a message that counts down would rewrite the status at every look.
    waiting = "waiting for its replicas to be ready" if canary.started_at is None else (
        f"its window ends at {canary.started_at + timedelta(seconds=rollout.canary_seconds):%Y-%m-%dT%H:%M:%SZ}"
    )
    unread = "" if metrics is not None else "; its servers' metrics could not be read yet"
    message = f"canary: {_describe(canary.model)} on {canary.percent}% of ready replicas, {waiting}; {figures}{unread}"
    remaining = RECHECK_SECONDS if left is None else max(0.5, min(RECHECK_SECONDS, left))
    return RolloutPlan(
        serve=stable,
        canary=canary,
        rejected=rejected,
        verdict=Verdict(True, "CanaryRunning", message),
        recheck_after=remaining,
    )


def _failure(
    rollout: Rollout, canary: CanaryStatus, metrics: CanaryMetrics | None, window_over: bool, now: datetime
) -> str | None:
    if metrics is not None and metrics.errors > 0 and metrics.errors > rollout.max_error_rate * metrics.requests:
        rate = metrics.errors / max(metrics.requests, 1)
        return (
            f"{metrics.errors} of {metrics.requests} requests failed ({rate:.1%}), "
            f"over the {rollout.max_error_rate:.1%} allowed"
        )
    bound = rollout.max_p99_latency_ms
    if (
        metrics is not None
        and bound is not None
        and metrics.requests >= LATENCY_MIN_REQUESTS
        and metrics.p99_latency_ms is not None
        and metrics.p99_latency_ms > bound
    ):
        return f"p99 latency {metrics.p99_latency_ms:.1f} ms over {metrics.requests} requests, above {bound:g} ms"
    if window_over and metrics is None:
        return "its servers' metrics could not be read to judge it"
    if canary.started_at is None and canary.created_at is not None:
        waited = (now - canary.created_at).total_seconds()
        if waited >= rollout.canary_seconds + READY_GRACE_SECONDS:
            return f"{canary.ready_replicas} of {canary.replicas} replica(s) ready after {waited:.0f}s"
    return None


def _figures(canary: CanaryStatus) -> str:
    p99 = f", p99 {canary.p99_latency_ms:.1f} ms" if canary.p99_latency_ms is not None else ""
    return f"{canary.requests} requests, {canary.errors} server errors{p99}"

