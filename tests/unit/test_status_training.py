from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from tandem.api.common import ConditionStatus
from tandem.api.computepool import ComputePoolSpec
from tandem.api.conditions import find
from tandem.api.trainingjob import TrainingJobSpec, TrainingJobStatus, TrainingPhase
from tandem.decide import usage
from tandem.render.training import TrainingRun
from tandem.status.training import ObservedRun, failure_message, read_artifact, training_status

SHA = "c" * 64
ARTIFACT = {"uri": "s3://models/digits/v1/model.onnx", "sha256": SHA, "sizeBytes": 1234, "metrics": {"acc": 0.97}}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod(
    phase: str,
    index: int = 0,
    message: str | None = None,
    exit_code: int = 0,
    started: datetime | None = None,
    finished: datetime | None = None,
    gpus: int = 1,
    cpu: str = "2",
    reason: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if phase in ("Succeeded", "Failed"):
        terminated: dict[str, Any] = {"exitCode": exit_code}
        if reason is not None:
            terminated["reason"] = reason
        if message is not None:
            terminated["message"] = message
        if finished is not None:
            terminated["finishedAt"] = _iso(finished)
        state = {"terminated": terminated}
    elif phase == "Running":
        state = {"running": {}}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    if started is not None:
        status["startTime"] = _iso(started)
    requests = {"cpu": cpu, "nvidia.com/gpu": str(gpus)} if gpus else {"cpu": cpu}
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "spec": {"containers": [{"name": "trainer", "resources": {"requests": requests}}]},
        "status": status,
    }


def _job(
    condition: str | None = None, reason: str | None = None, suspend: bool = False, workers: int = 1, **status: Any
) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", "reason": reason, "message": "job says"}] if condition else []
    return {
        "metadata": {"name": "digits-g1"},
        "spec": {"parallelism": workers, "suspend": suspend},
        "status": {"conditions": conditions, **status},
    }


@pytest.fixture
def run(training_spec_body: dict[str, Any]) -> TrainingRun:
    spec = TrainingJobSpec.model_validate(training_spec_body)
    return TrainingRun(name="digits", namespace="ml", uid="uid-1", generation=1, spec=spec)


@pytest.fixture
def gpu(pools: dict[str, ComputePoolSpec]) -> ComputePoolSpec:
    return pools["gpu"]


def _status(
    run: TrainingRun,
    gpu: ComputePoolSpec,
    observed: ObservedRun,
    now: datetime,
    previous: TrainingJobStatus | None = None,
) -> TrainingJobStatus:
    status, _ = training_status(previous or TrainingJobStatus(), run, "gpu", gpu, observed, now)
    return status


def test_no_job_yet_is_pending(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    status = _status(run, gpu, ObservedRun(None), now)
    assert status.phase == TrainingPhase.PENDING
    assert (status.pool, status.job_name) == ("gpu", "digits-g1")
    pool = find(status.conditions, "PoolResolved")
    assert pool is not None
    assert pool.status == ConditionStatus.TRUE


def test_job_without_running_pods_is_pending(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    assert _status(run, gpu, ObservedRun(_job(), [_pod("Pending")]), now).phase == TrainingPhase.PENDING


def test_running_worker_makes_the_job_running(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    observed = ObservedRun(_job(active=1, startTime=_iso(now)), [_pod("Running", started=now)])
    status = _status(run, gpu, observed, now)
    assert status.phase == TrainingPhase.RUNNING
    assert status.workers.active == 1
    assert status.start_time == now
    running = find(status.conditions, "Running")
    assert running is not None
    assert running.status == ConditionStatus.TRUE


def test_suspended_job_is_queued(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    assert _status(run, gpu, ObservedRun(_job(suspend=True)), now).phase == TrainingPhase.QUEUED


def test_completed_job_succeeds_with_worker_zero_artifact(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    pods = [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now - timedelta(hours=1), finished=now)]
    observed = ObservedRun(_job("Complete", succeeded=1, completionTime=_iso(now)), pods)
    status = _status(run, gpu, observed, now)
    assert status.phase == TrainingPhase.SUCCEEDED
    assert status.model is not None
    assert (status.model.uri, status.model.sha256, status.model.metrics) == (ARTIFACT["uri"], SHA, {"acc": 0.97})
    assert status.model_generation == 1
    assert status.completion_time == now
    succeeded = find(status.conditions, "Succeeded")
    assert succeeded is not None
    assert (succeeded.status, succeeded.reason) == (ConditionStatus.TRUE, "ModelPublished")


def test_status_goes_pending_running_succeeded(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    phases = []
    status = TrainingJobStatus()
    for observed in (
        ObservedRun(None),
        ObservedRun(_job(), [_pod("Running", started=now)]),
        ObservedRun(_job("Complete"), [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now, finished=now)]),
    ):
        status = _status(run, gpu, observed, now, previous=status)
        phases.append(status.phase)
    assert phases == [TrainingPhase.PENDING, TrainingPhase.RUNNING, TrainingPhase.SUCCEEDED]


def test_artifact_comes_from_worker_zero_only() -> None:
    other = dict(ARTIFACT, uri="s3://elsewhere/model.onnx")
    pods = [
        _pod("Succeeded", index=1, message=json.dumps(other)),
        _pod("Succeeded", index=0, message=json.dumps(ARTIFACT)),
    ]
    artifact = read_artifact(pods)
    assert artifact is not None
    assert artifact.uri == ARTIFACT["uri"]


def test_malformed_termination_message_is_no_artifact() -> None:
    assert read_artifact([_pod("Succeeded", message="training done")]) is None


def test_completed_job_without_a_message_fails_with_no_artifact(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    status = _status(run, gpu, ObservedRun(_job("Complete"), [_pod("Succeeded")]), now)
    assert status.phase == TrainingPhase.FAILED
    failed = find(status.conditions, "Failed")
    assert failed is not None
    assert failed.reason == "NoArtifact"
    assert status.model is None


def test_failed_job_reports_the_training_failure_and_exit_code(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    message = json.dumps({"reason": "NaNLoss", "error": "loss became nan at step 40"})
    pods = [_pod("Failed", message=message, exit_code=3)]
    status = _status(run, gpu, ObservedRun(_job("Failed", reason="BackoffLimitExceeded"), pods), now)
    assert status.phase == TrainingPhase.FAILED
    failed = find(status.conditions, "Failed")
    assert failed is not None
    assert failed.reason == "BackoffLimitExceeded"
    assert "NaNLoss: loss became nan at step 40" in failed.message
    assert "code 3" in failed.message


def test_failure_message_falls_back_to_the_raw_termination_message() -> None:
    message = failure_message([_pod("Failed", index=2, message="Traceback: CUDA out of memory", exit_code=1)])
    assert message == "worker 2 exited with code 1: Traceback: CUDA out of memory"


def test_an_oom_killed_worker_is_named_with_what_to_change() -> None:
    """The log tail of a killed worker (FallbackToLogsOnError) says nothing of the cause; the runtime does."""
    pod = _pod("Failed", index=1, message="epoch 3 loss 0.41", exit_code=137, reason="OOMKilled")
    message = failure_message([pod])
    assert message is not None
    assert message.startswith("worker 1 was OOMKilled (exit code 137)")
    assert "spec.resources.memory" in message


def test_failure_message_is_the_newest_failed_worker(now: datetime) -> None:
    pods = [
        _pod("Failed", message="second", finished=now),
        _pod("Failed", message="first", finished=now - timedelta(minutes=1)),
    ]
    message = failure_message(pods)
    assert message is not None
    assert message.endswith(": second")


def test_failed_job_without_messages_keeps_the_job_message(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    status = _status(run, gpu, ObservedRun(_job("Failed", reason="DeadlineExceeded"), []), now)
    failed = find(status.conditions, "Failed")
    assert failed is not None
    assert (failed.reason, failed.message) == ("DeadlineExceeded", "job says")


def test_ttl_deleted_job_keeps_the_terminal_status(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    pods = [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now, finished=now)]
    finished = _status(run, gpu, ObservedRun(_job("Complete"), pods), now)
    after_ttl = _status(run, gpu, ObservedRun(None), now + timedelta(hours=1), previous=finished)
    assert after_ttl.phase == TrainingPhase.SUCCEEDED
    assert after_ttl.model == finished.model


def test_a_finished_runs_job_under_foreground_deletion_without_its_pods_keeps_the_terminal_status(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    """The TTL controller deletes the Job in the foreground: its pods (and the artifact they carried) go first,
    and a Complete Job without them must not read as a run that published no model."""
    pods = [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now, finished=now)]
    finished = _status(run, gpu, ObservedRun(_job("Complete"), pods), now)
    deleting = _job("Complete")
    deleting["metadata"]["deletionTimestamp"] = _iso(now)
    during_ttl = _status(run, gpu, ObservedRun(deleting, []), now + timedelta(seconds=1), previous=finished)
    assert during_ttl.phase == TrainingPhase.SUCCEEDED
    assert during_ttl.model == finished.model


def test_usage_is_seconds_times_gpus_priced_by_pool(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    pods = [_pod("Running", started=now - timedelta(hours=1), gpus=2, cpu="4")]
    status = _status(run, gpu, ObservedRun(_job(), pods), now)
    assert status.usage.gpu_seconds == 7200
    assert status.usage.core_seconds == 14400
    assert status.usage.estimated_cost == pytest.approx(2 * 2.0 + 4 * 0.05)
    assert status.usage.energy_wh == pytest.approx(2 * 300 + 4 * 10)


def test_usage_is_not_counted_twice_within_a_run(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    pods = [_pod("Running", started=now - timedelta(hours=1))]
    first = _status(run, gpu, ObservedRun(_job(), pods), now)
    again = _status(run, gpu, ObservedRun(_job(), pods), now, previous=first)
    assert again.usage == first.usage


def test_usage_accumulates_across_generations(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    pods = [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now - timedelta(hours=1), finished=now)]
    first = _status(run, gpu, ObservedRun(_job("Complete"), pods), now)
    rerun = TrainingRun(name=run.name, namespace=run.namespace, uid=run.uid, generation=2, spec=run.spec)
    second = _status(rerun, gpu, ObservedRun(_job("Complete"), pods), now, previous=first)
    assert second.usage.gpu_seconds == 2 * first.usage.gpu_seconds
    assert second.run_usage == first.run_usage


def test_a_new_generation_resets_the_run_but_keeps_the_model(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    pods = [_pod("Succeeded", message=json.dumps(ARTIFACT), started=now, finished=now)]
    first = _status(run, gpu, ObservedRun(_job("Complete")), now, previous=None)
    first = _status(run, gpu, ObservedRun(_job("Complete"), pods), now, previous=first)
    rerun = TrainingRun(name=run.name, namespace=run.namespace, uid=run.uid, generation=2, spec=run.spec)
    second = _status(rerun, gpu, ObservedRun(None), now, previous=first)
    assert second.phase == TrainingPhase.PENDING
    assert second.job_name == "digits-g2"
    assert second.model == first.model
    assert second.model_generation == 1
    assert second.completion_time is None


def test_status_of_the_same_run_at_a_later_resource_generation_is_the_same_run(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    """Toggling suspend bumps metadata.generation but keeps the run; the reconciler records the new generation."""
    pods = [_pod("Running", started=now - timedelta(hours=1))]
    first = _status(run, gpu, ObservedRun(_job(), pods), now)
    first.observed_generation = 2
    again = _status(run, gpu, ObservedRun(_job(), pods), now, previous=first)
    assert again.usage == first.usage
    finished = _status(run, gpu, ObservedRun(_job("Failed", reason="BackoffLimitExceeded"), pods), now, previous=first)
    finished.observed_generation = 2
    assert _status(run, gpu, ObservedRun(None), now, previous=finished).phase == TrainingPhase.FAILED


def test_phase_change_emits_one_event(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    observed = ObservedRun(_job(), [_pod("Running", started=now)])
    status, events = training_status(TrainingJobStatus(), run, "gpu", gpu, observed, now)
    assert [(event.type, event.reason) for event in events] == [("Normal", "WorkersRunning")]
    _, again = training_status(status, run, "gpu", gpu, observed, now)
    assert again == []


def test_failure_emits_a_warning(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    _, events = training_status(TrainingJobStatus(), run, "gpu", gpu, ObservedRun(_job("Failed", reason="X")), now)
    assert [event.type for event in events] == ["Warning"]


def test_pod_seconds_of_a_finished_pod_stop_at_its_finish(now: datetime) -> None:
    pod = _pod("Succeeded", started=now - timedelta(minutes=10), finished=now - timedelta(minutes=4))
    assert usage.pod_seconds(pod, now) == 360


def test_pod_seconds_of_an_unstarted_pod_are_zero(now: datetime) -> None:
    assert usage.pod_seconds(_pod("Pending"), now) == 0


def test_pod_on_a_cpu_pool_uses_no_gpu_seconds(pools: dict[str, ComputePoolSpec], now: datetime) -> None:
    pods = [_pod("Running", started=now - timedelta(seconds=100), gpus=0, cpu="500m")]
    used = usage.pods_usage(pods, pools["cpu"], now)
    assert (used.gpu_seconds, used.core_seconds) == (0, 50)
    assert used.estimated_cost == pytest.approx(50 / 3600 * 0.04, abs=1e-6)
    assert used.energy_wh == pytest.approx(50 / 3600 * 8, abs=1e-6)


def _stopped(step: int | None) -> str:
    checkpoint = {"step": step, "uri": f"pvc://models/ckpt/v1/step-{step:09d}.pt"} if step is not None else None
    message = {"reason": "Stopped", "error": "stopped by signal 15", "checkpoint": checkpoint}
    return json.dumps({key: value for key, value in message.items() if value is not None})


def test_a_preempted_run_shows_the_checkpoint_step_its_stopped_worker_reported(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    stopped = [
        _pod("Failed", index=0, message=_stopped(50), exit_code=143),
        _pod("Failed", index=1, message=_stopped(None), exit_code=143),
    ]
    status = _status(run, gpu, ObservedRun(_job(suspend=True), stopped), now)
    assert status.phase == TrainingPhase.QUEUED
    assert status.checkpoint is not None
    assert (status.checkpoint.step, status.checkpoint.uri) == (50, "pvc://models/ckpt/v1/step-000000050.pt")
    assert status.checkpoint.resumed_from_step is None


def test_the_reported_checkpoint_stays_once_the_stopped_pods_are_gone_and_names_it_in_the_queued_message(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    reported = _status(run, gpu, ObservedRun(_job(suspend=True), [_pod("Failed", message=_stopped(50))]), now)
    later = _status(run, gpu, ObservedRun(_job(suspend=True)), now, previous=reported)
    assert later.checkpoint == reported.checkpoint
    running = find(later.conditions, "Running")
    assert running is not None
    assert running.message.endswith("; it resumes from checkpoint step 50")


def test_an_older_report_never_moves_the_checkpoint_back(run: TrainingRun, gpu: ComputePoolSpec, now: datetime) -> None:
    newer = _status(run, gpu, ObservedRun(_job(suspend=True), [_pod("Failed", message=_stopped(75))]), now)
    again = _status(run, gpu, ObservedRun(_job(suspend=True), [_pod("Failed", message=_stopped(50))]), now,
                    previous=newer)
    assert again.checkpoint is not None and again.checkpoint.step == 75


def test_a_resumed_run_that_finished_shows_the_step_it_resumed_from(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    before = _status(run, gpu, ObservedRun(_job(suspend=True), [_pod("Failed", message=_stopped(50))]), now)
    artifact = {**ARTIFACT, "metrics": {"steps": 540.0, "resumed_from_step": 50.0}}
    pods = [_pod("Succeeded", message=json.dumps(artifact), started=now, finished=now)]
    after = _status(run, gpu, ObservedRun(_job("Complete", succeeded=1), pods), now, previous=before)
    assert after.phase == TrainingPhase.SUCCEEDED
    assert after.checkpoint is not None
    assert (after.checkpoint.step, after.checkpoint.resumed_from_step) == (50, 50)


def test_a_run_that_never_stopped_has_no_checkpoint_status(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    artifact = {**ARTIFACT, "metrics": {"steps": 540.0, "resumed_from_step": 0.0}}
    pods = [_pod("Succeeded", message=json.dumps(artifact), started=now, finished=now)]
    assert _status(run, gpu, ObservedRun(_job("Complete", succeeded=1), pods), now).checkpoint is None


def test_a_new_generation_forgets_the_previous_runs_checkpoint(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    first = _status(run, gpu, ObservedRun(_job(suspend=True), [_pod("Failed", message=_stopped(50))]), now)
    rerun = TrainingRun(name=run.name, namespace=run.namespace, uid=run.uid, generation=2, spec=run.spec)
    assert _status(rerun, gpu, ObservedRun(None), now, previous=first).checkpoint is None


def test_a_stopped_worker_is_described_in_words_if_the_job_then_fails() -> None:
    message = failure_message([_pod("Failed", message=_stopped(50), exit_code=143)])
    assert message == "worker 0 exited with code 143: Stopped: stopped by signal 15"


def test_a_worker_whose_image_cannot_be_pulled_says_so_while_pending(
    run: TrainingRun, gpu: ComputePoolSpec, now: datetime
) -> None:
    pod = _pod("Pending")
    pod["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.example/private:1"'}
    }
    status = _status(run, gpu, ObservedRun(_job(), [pod]), now)
    assert status.phase == TrainingPhase.PENDING
    running = find(status.conditions, "Running")
    assert running is not None
    assert (running.reason, running.message) == (
        "ImagePullBackOff",
        'worker 0 cannot start: ImagePullBackOff: Back-off pulling image "registry.example/private:1"',
    )
