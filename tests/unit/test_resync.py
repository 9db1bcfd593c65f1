"""Which objects the periodic resync looks at: only those that wait on time rather than on an event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tandem.controller.resync import serving_due, training_due

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _body(phase: str | None, generation: int = 1, observed: int | None = 1, **status: Any) -> dict[str, Any]:
    fields = {"phase": phase, "observedGeneration": observed, **status} if phase else {}
    return {"metadata": {"name": "x", "generation": generation}, "status": fields}


def test_finished_and_suspended_training_jobs_are_left_alone() -> None:
    for phase in ("Succeeded", "Failed", "Queued"):
        assert not training_due(_body(phase)), phase


def test_a_run_queued_in_kueue_is_looked_at_for_kueues_verdict_on_its_workload() -> None:
    for suspend in (False, True):
        assert training_due({**_body("Queued"), "spec": {"queue": "gpu", "suspend": suspend}}), suspend
    assert not training_due({**_body("Succeeded"), "spec": {"queue": "gpu"}})


def test_pending_and_running_training_jobs_are_looked_at() -> None:
    assert training_due(_body("Pending"))
    assert training_due(_body("Running"))


def test_a_training_job_never_reconciled_or_with_a_newer_spec_is_looked_at() -> None:
    assert training_due(_body(None))
    assert training_due(_body("Succeeded", generation=2, observed=1))


def test_a_training_job_waiting_for_a_pool_is_looked_at() -> None:
    waiting = _body("Pending", conditions=[{"type": "PoolResolved", "status": "False"}])
    assert training_due(waiting)
    assert training_due({**waiting, "status": {**waiting["status"], "phase": "Queued"}})


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_ready_service_is_left_alone_however_old_its_usage_ledger() -> None:
    assert not serving_due(_body("Ready", usageObservedAt=_stamp(NOW - timedelta(seconds=30))))
    assert not serving_due(_body("Ready", usageObservedAt=_stamp(NOW - timedelta(days=3))))


def test_services_not_ready_or_not_current_are_looked_at() -> None:
    recent = _stamp(NOW)
    assert serving_due(_body("Deploying", usageObservedAt=recent))
    assert serving_due(_body("Ready", generation=2, observed=1, usageObservedAt=recent))


def test_a_ready_service_with_a_canary_on_trial_is_looked_at() -> None:
    canary = {"model": {"uri": "s3://m/v2"}, "replicas": 1}
    assert serving_due(_body("Ready", usageObservedAt=_stamp(NOW), canary=canary))
