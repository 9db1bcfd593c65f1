"""Canary rollouts decide which model serves where: the quality bar, the canary's bounds and its window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tandem.api.inferenceservice import CanaryStatus, RejectedModel, Rollout, ServedModel
from tandem.controller.canary_metrics import parse, quantile
from tandem.decide import canary
from tandem.decide.canary import CanaryMetrics, CanaryObservation
from tandem.errors import Problem
from tandem.server.metrics import ServerMetrics

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD = ServedModel(uri="pvc://models/digits/3/model.onnx", sha256="a" * 64, version="3", training_job="digits")
NEW = ServedModel(uri="pvc://models/digits/4/model.onnx", sha256="b" * 64, version="4", training_job="digits")
BAR = Rollout(min_metrics={"accuracy": 0.9})
CANARY = Rollout(canary_percent=25, canary_seconds=60, max_error_rate=0.01, max_p99_latency_ms=50)


def plan(
    rollout: Rollout,
    candidate: ServedModel = NEW,
    metrics: dict[str, float] | None = None,
    trial: CanaryStatus | None = None,
    rejected: list[RejectedModel] | None = None,
    observed: CanaryObservation | None = None,
    at: datetime = T0,
    stable: ServedModel | None = OLD,
) -> canary.RolloutPlan:
    return canary.plan(rollout, stable, candidate, metrics, trial, rejected or [], 3, observed, at)


def on_trial(started: datetime | None = T0, created: datetime = T0) -> CanaryStatus:
    return CanaryStatus(model=NEW, replicas=1, created_at=created, started_at=started)


def seen(requests: int, errors: int = 0, p99: float | None = 5.0, ready: int = 1) -> CanaryObservation:
    return CanaryObservation(ready, 3, CanaryMetrics(requests, errors, p99))


def test_a_new_model_below_the_quality_bar_is_never_deployed_and_the_old_one_keeps_serving() -> None:
    decided = plan(BAR, metrics={"accuracy": 0.62, "loss": 1.3})
    assert decided.serve == OLD and decided.canary is None
    assert decided.verdict is not None and decided.verdict.reason == "BelowQualityBar"
    assert "accuracy 0.62 is below 0.9" in decided.verdict.message
    assert [r.version for r in decided.rejected] == ["4"]
    assert [e.reason for e in decided.events] == ["BelowQualityBar"]
    # Once rejected it is not judged again: no new event, no new entry.
    again = plan(BAR, metrics={"accuracy": 0.62}, rejected=decided.rejected, at=T0 + timedelta(minutes=1))
    assert again.serve == OLD and again.events == [] and again.rejected == decided.rejected


def test_a_model_that_reports_no_metric_the_bar_names_is_held_too() -> None:
    decided = plan(BAR, metrics={"loss": 0.1})
    assert decided.serve == OLD and decided.verdict is not None
    assert "reports no accuracy" in decided.verdict.message


def test_a_first_model_below_the_bar_leaves_the_service_waiting_with_the_reason() -> None:
    with pytest.raises(Problem) as raised:
        plan(BAR, metrics={"accuracy": 0.5}, stable=None)
    assert raised.value.reason == "BelowQualityBar"


def test_a_model_named_by_uri_is_a_pin_deployed_as_named_without_a_canary_even_if_rejected_before() -> None:
    pinned = NEW.model_copy(update={"training_job": None})
    rejected = plan(BAR, metrics={"accuracy": 0.5}).rejected
    decided = plan(BAR, candidate=pinned, metrics=None, rejected=rejected)
    assert decided.serve == pinned


def test_a_model_named_by_uri_and_rolled_back_is_not_tried_again_through_the_canary() -> None:
    pinned = NEW.model_copy(update={"training_job": None})
    trial = on_trial().model_copy(update={"model": pinned})
    rolled = plan(CANARY, candidate=pinned, trial=trial, observed=seen(100, errors=50), at=T0 + timedelta(seconds=5))
    assert rolled.verdict is not None and rolled.verdict.reason == "RolledBack"
    again = plan(CANARY, candidate=pinned, rejected=rolled.rejected, at=T0 + timedelta(seconds=15))
    assert again.serve == OLD and again.canary is None and again.events == []


def test_without_a_canary_share_a_good_model_goes_to_every_replica() -> None:
    decided = plan(BAR, metrics={"accuracy": 0.95})
    assert decided.serve == NEW and decided.canary is None and decided.verdict is None


@pytest.mark.parametrize(("stable", "percent", "replicas"), [(3, 25, 1), (1, 50, 1), (8, 20, 2), (10, 50, 10)])
def test_the_canary_gets_replicas_for_about_its_share_beside_the_stable_ones(
    stable: int, percent: int, replicas: int
) -> None:
    assert canary.canary_replicas(stable, percent) == replicas


def test_a_new_model_with_a_canary_share_starts_on_trial_beside_the_old_one() -> None:
    decided = plan(CANARY)
    assert decided.serve == OLD
    assert decided.canary is not None and decided.canary.model == NEW and decided.canary.replicas == 1
    assert decided.verdict is not None and decided.verdict.reason == "CanaryRunning"
    assert [e.reason for e in decided.events] == ["CanaryStarted"]
    assert decided.recheck_after == canary.RECHECK_SECONDS


def test_the_window_counts_from_the_moment_every_canary_replica_is_ready() -> None:
    waiting = plan(CANARY, trial=on_trial(started=None), observed=seen(0, ready=0), at=T0 + timedelta(seconds=90))
    assert waiting.canary is not None and waiting.canary.started_at is None and waiting.serve == OLD
    ready = plan(CANARY, trial=waiting.canary, observed=seen(0), at=T0 + timedelta(seconds=100))
    assert ready.canary is not None and ready.canary.started_at == T0 + timedelta(seconds=100)
    assert ready.canary.percent == 25


def test_a_canary_within_its_bounds_for_its_window_is_promoted() -> None:
    during = plan(CANARY, trial=on_trial(), observed=seen(400, errors=1, p99=20), at=T0 + timedelta(seconds=59))
    assert during.serve == OLD and during.canary is not None and during.canary.requests == 400
    assert during.recheck_after == pytest.approx(1.0)
    after = plan(CANARY, trial=during.canary, observed=seen(500, errors=2, p99=20), at=T0 + timedelta(seconds=60))
    assert after.serve == NEW and after.canary is None
    assert after.verdict is not None and after.verdict.reason == "Promoted"
    assert "500 requests, 2 server errors, p99 20.0 ms" in after.verdict.message
    assert [e.reason for e in after.events] == ["Promoted"]


def test_a_canary_on_trial_at_rest_is_described_the_same_at_every_look() -> None:
    looks = [
        plan(CANARY, trial=on_trial(), observed=seen(400, p99=20), at=T0 + timedelta(seconds=seconds))
        for seconds in (10, 20, 30)
    ]
    assert {look.verdict.message for look in looks if look.verdict is not None} == {
        "canary: version 4 on 25% of ready replicas, its window ends at 2026-12-03T12:01:00Z; "
        "400 requests, 0 server errors, p99 20.0 ms"
    }
    assert looks[0].canary == looks[2].canary


def test_a_canary_whose_errors_exceed_the_bound_is_rolled_back_at_once_and_not_tried_again() -> None:
    decided = plan(CANARY, trial=on_trial(), observed=seen(100, errors=2), at=T0 + timedelta(seconds=5))
    assert decided.serve == OLD and decided.canary is None
    assert decided.verdict is not None and decided.verdict.reason == "RolledBack"
    assert "2 of 100 requests failed (2.0%), over the 1.0% allowed" in decided.verdict.message
    assert [r.reason for r in decided.rejected] == ["RolledBack"]
    assert plan(CANARY, rejected=decided.rejected).canary is None


def test_a_canary_whose_p99_exceeds_the_bound_is_rolled_back_once_it_has_answered_enough_requests() -> None:
    few = plan(CANARY, trial=on_trial(), observed=seen(99, p99=80), at=T0 + timedelta(seconds=5))
    assert few.canary is not None
    many = plan(CANARY, trial=on_trial(), observed=seen(100, p99=80), at=T0 + timedelta(seconds=5))
    assert many.canary is None and many.verdict is not None and "p99 latency 80.0 ms" in many.verdict.message


def test_a_canary_that_never_becomes_ready_is_rolled_back_after_the_window_and_its_grace() -> None:
    late = T0 + timedelta(seconds=CANARY.canary_seconds + canary.READY_GRACE_SECONDS)
    decided = plan(CANARY, trial=on_trial(started=None), observed=seen(0, ready=0), at=late)
    assert decided.serve == OLD and decided.verdict is not None and "0 of 1 replica(s) ready" in decided.verdict.message


def test_a_canary_whose_metrics_cannot_be_read_is_never_promoted_on_faith() -> None:
    blind = CanaryObservation(ready_replicas=1, stable_ready_replicas=3, metrics=None)
    during = plan(CANARY, trial=on_trial(), observed=blind, at=T0 + timedelta(seconds=30))
    assert during.canary is not None and "could not be read yet" in (during.verdict.message if during.verdict else "")
    after = plan(CANARY, trial=on_trial(), observed=blind, at=T0 + timedelta(seconds=60))
    assert after.serve == OLD and after.verdict is not None and after.verdict.reason == "RolledBack"


def test_a_newer_model_replaces_the_one_on_trial_and_starts_its_own_window() -> None:
    newer = NEW.model_copy(update={"sha256": "c" * 64, "version": "5"})
    decided = plan(CANARY, candidate=newer, trial=on_trial(), observed=seen(50), at=T0 + timedelta(seconds=30))
    assert decided.canary is not None and decided.canary.model == newer and decided.canary.started_at is None


def test_the_canary_figures_are_the_sum_of_its_servers_own_metrics() -> None:
    servers = [ServerMetrics(), ServerMetrics()]
    for index, server in enumerate(servers):
        for request in range(100):
            server.started("digits")
            server.finished("digits", 500 if request < index * 3 else 200, 0.004 if request < 98 else 0.4)
    figures = parse(server.exposition().decode() for server in servers)
    assert (figures.requests, figures.errors) == (200, 3)
    # 196 requests at 4 ms and 4 at 400 ms: the 198th of 200 lies in the (0.25 s, 0.5 s] bucket.
    assert figures.p99_latency_ms is not None and 250 < figures.p99_latency_ms <= 500


def test_p99_interpolates_within_its_bucket_as_histogram_quantile_does() -> None:
    assert quantile(0.99, {0.01: 50.0, 0.02: 100.0, float("inf"): 100.0}) == pytest.approx(19.8)
    assert quantile(0.99, {0.01: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {0.01: 0.0, float("inf"): 10.0}) == pytest.approx(10.0)
