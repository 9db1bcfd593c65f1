"""TrainingJob status from the observed child Job and its pods.

The phase is a summary of conditions; the artifact comes from worker 0's termination message, which the
trainer writes after it has exported, checked and uploaded the model. The checkpoint a preempted (or
suspended) run resumes from comes the same way: a worker stopped by SIGTERM names the newest checkpoint in its
termination message (WorkerStopped), read while its pod still exists, and kept in status after it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from tandem.api.artifact import ModelArtifact, TrainingFailure
from tandem.api.computepool import ComputePoolSpec
from tandem.api.conditions import Event, set_condition
from tandem.api.trainingjob import (
    CheckpointReport,
    CheckpointStatus,
    TrainingJobStatus,
    TrainingPhase,
    WorkerCounts,
    WorkerStopped,
)
from tandem.decide import usage
from tandem.render.training import CONTAINER, TrainingRun
from tandem.status.queueing import queued_reason

COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RESUMING = ("Preempted", "Evicted", "Suspended")
"""Queued reasons of a run that ran and will resume: their message names the checkpoint it resumes from."""


@dataclass(frozen=True)
class ObservedRun:
    """The child Job of the current generation (None if absent), its pods, Kueue's Workload for it (a run
    with spec.queue, once Kueue has made one), and why the operator still holds its gang (tandem.decide.gang)."""

    job: dict[str, Any] | None
    pods: list[dict[str, Any]] = field(default_factory=list)
    workload: dict[str, Any] | None = None
    gang_wait: str | None = None


def _job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            terminated = (container.get("state") or {}).get("terminated")
            return dict(terminated) if terminated else None
    return None


def _index(pod: dict[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(COMPLETION_INDEX_ANNOTATION)
    return str(value) if value is not None else None


def made_by(pod: dict[str, Any], job: dict[str, Any] | None) -> bool:
    """Whether the Job is the pod's controller (by uid): labels and annotations are anyone's to set."""
    uid = ((job or {}).get("metadata") or {}).get("uid")
    return uid is not None and any(
        owner.get("controller") and owner.get("uid") == uid
        for owner in (pod.get("metadata") or {}).get("ownerReferences") or []
    )


def _phase_of(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _finished_at(pod: dict[str, Any]) -> str:
    return str((_terminated(pod) or {}).get("finishedAt") or "")


def publisher(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Worker 0's pod that reported a model in its termination message, whatever its exit code.

    The trainer writes that message only after the model and its metadata are stored, so a worker 0 that
    failed afterwards (a crash in teardown) still published a whole, checked model.
    """
    for pod in pods:
        if _index(pod) != "0" or _phase_of(pod) not in ("Succeeded", "Failed"):
            continue
        message = (_terminated(pod) or {}).get("message")
        if not message:
            continue
        try:
            ModelArtifact.model_validate_json(message)
        except ValidationError:
            continue
        return pod
    return None


def read_artifact(pods: list[dict[str, Any]]) -> ModelArtifact | None:
    """The artifact worker 0 reported in its termination message, if it reported one."""
    pod = publisher(pods)
    if pod is None:
        return None
    return ModelArtifact.model_validate_json(str((_terminated(pod) or {}).get("message")))


def _exit(pod: dict[str, Any]) -> str:
    return f"exit code {(_terminated(pod) or {}).get('exitCode')}"


def left_behind(pods: list[dict[str, Any]], published: dict[str, Any]) -> str | None:
    """Why the Job, still running after its model was published, can only hang or fail from here, if it can.

    A worker 0 that failed after publishing is retried by the Job and would train again with no peer to join
    (they finished); a worker that failed after worker 0 had finished is retried with no rank 0 to join.
    """
    if _phase_of(published) == "Failed":
        return f"worker 0 published the model and then failed ({_exit(published)})"
    done = _finished_at(published)
    late = [pod for pod in pods if _phase_of(pod) == "Failed" and _finished_at(pod) > done]
    if late:
        return f"worker {_index(late[0]) or '?'} failed ({_exit(late[0])}) after worker 0 had published the model"
    return None


def broken_gang(pods: list[dict[str, Any]]) -> str | None:
    """Why a run without a model can no longer finish, if it cannot: a worker failed after a peer of another
    index finished and left the group, so its retry would wait for a rank that never comes back."""
    finished = [pod for pod in pods if _phase_of(pod) == "Succeeded"]
    for pod in pods:
        if _phase_of(pod) != "Failed":
            continue
        before = [peer for peer in finished if _finished_at(peer) <= _finished_at(pod)]
        gone = sorted({str(_index(peer)) for peer in before if _index(peer) != _index(pod)})
        if gone:
            return (
                f"worker(s) {', '.join(gone)} finished and left the group, then worker {_index(pod) or '?'} "
                f"failed ({_exit(pod)}); a retried worker cannot rejoin peers that have left, so the run fails "
                "now instead of waiting for them; change the spec to start a new run"
            )
    return None


def read_checkpoint(pods: list[dict[str, Any]]) -> CheckpointReport | None:
    """The newest checkpoint that workers stopped by SIGTERM reported (only rank 0 knows one), if any."""
    newest: CheckpointReport | None = None
    for pod in pods:
        message = (_terminated(pod) or {}).get("message")
        if not message:
            continue
        try:
            reported = WorkerStopped.model_validate_json(message).checkpoint
        except ValidationError:
            continue
        if reported is not None and (newest is None or reported.step > newest.step):
            newest = reported
    return newest


def stopping(pods: list[dict[str, Any]]) -> bool:
    """Whether a worker is being stopped (its pod deleted) and its trainer has not exited yet: the report of
    its checkpoint comes with its exit, moments before its pod is gone."""
    return any(
        (pod.get("metadata") or {}).get("deletionTimestamp") and _terminated(pod) is None
        and (pod.get("status") or {}).get("phase") == "Running"
        for pod in pods
    )


def checkpoint_progress(
    previous: CheckpointStatus | None, reported: CheckpointReport | None, artifact: ModelArtifact | None
) -> CheckpointStatus | None:
    """The run's checkpoint status: the newest step reported so far, and the step the finished run resumed
    from (the resumed_from_step metric that the built-in trainer, and scripts that follow it, publish)."""
    status = previous.model_copy() if previous is not None else None
    if reported is not None and (status is None or reported.step >= status.step):
        status = CheckpointStatus(
            step=reported.step, uri=reported.uri, resumed_from_step=status.resumed_from_step if status else None
        )
    resumed = (artifact.metrics if artifact is not None else {}).get("resumed_from_step")
    if resumed is not None:
        resumed_step = int(resumed)
        if status is None:
            # Nothing was reported while it ran: a run that resumed did so from a checkpoint at that step.
            return CheckpointStatus(step=resumed_step, resumed_from_step=resumed_step) if resumed_step else None
        status.resumed_from_step = resumed_step
    return status


def failure_message(pods: list[dict[str, Any]]) -> str | None:
    """What the newest failed worker said: a TrainingFailure's error, else its raw termination message.

    A worker the kernel killed for its memory limit said nothing of use (its log tail, at best): the
    runtime's OOMKilled reason is the message, with what to change.
    """
    failed = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=lambda pod: str((_terminated(pod) or {}).get("finishedAt") or ""))
    for pod in reversed(failed):
        terminated = _terminated(pod) or {}
        exit_code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return (
                f"worker {_index(pod) or '?'} was OOMKilled (exit code {exit_code}): it needed more memory than "
                "its limit; raise spec.resources.memory"
            )
        message = str(terminated.get("message") or "").strip()
        if not message:
            continue
        try:
            failure = TrainingFailure.model_validate_json(message)
            text = f"{failure.reason}: {failure.error}"
        except ValidationError:
            try:
                stopped = WorkerStopped.model_validate_json(message)
                text = f"{stopped.reason}: {stopped.error}"
            except ValidationError:
                text = message[-1024:]
        return f"worker {_index(pod) or '?'} exited with code {exit_code}: {text}"
    return None


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _phase(
    run: TrainingRun, observed: ObservedRun, artifact: ModelArtifact | None
) -> tuple[TrainingPhase, str, str]:
    """Phase, reason and message for an observed Job."""
    job, pods = observed.job or {}, observed.pods
    failed = _job_condition(job, "Failed")
    published = f"model {artifact.uri} sha256 {artifact.sha256[:12]}" if artifact is not None else ""
    if artifact is not None and (pod := publisher(pods)) is not None:
        if failed is not None:
            detail = failure_message(pods) or failed.get("message") or "the Job failed"
            return TrainingPhase.SUCCEEDED, "ModelPublished", f"{published}; the Job then failed: {detail}"
        if _job_condition(job, "Complete") is None and (why := left_behind(pods, pod)) is not None:
            return TrainingPhase.SUCCEEDED, "ModelPublished", f"{published}; {why}: the Job is stopped"
    if failed is not None:
        detail = failure_message(pods) or failed.get("message") or "the Job failed"
        return TrainingPhase.FAILED, str(failed.get("reason") or "JobFailed"), detail
    if _job_condition(job, "Complete") is not None:
        if artifact is None:
            return (
                TrainingPhase.FAILED,
                "NoArtifact",
                "training finished but worker 0 reported no model in its termination message",
            )
        return TrainingPhase.SUCCEEDED, "ModelPublished", published
    if (broken := broken_gang(pods)) is not None:
        return TrainingPhase.FAILED, "GangBroken", broken
    if (job.get("spec") or {}).get("suspend"):
        spec = run.spec
        if observed.gang_wait is not None and not spec.suspend:
            return TrainingPhase.QUEUED, "WaitingForCapacity", observed.gang_wait
        return TrainingPhase.QUEUED, *queued_reason(spec.suspend, spec.queue, observed.workload, spec.priority_class)
    running = [pod for pod in pods if (pod.get("status") or {}).get("phase") == "Running"]
    workers = (job.get("spec") or {}).get("parallelism") or 1
    if running:
        message = f"{len(running)} of {workers} workers running"
        if (failure := failure_message(pods)) is not None:
            message += f"; last failure: {failure}"
        return TrainingPhase.RUNNING, "WorkersRunning", message
    unschedulable = unschedulable_message(pods)
    if unschedulable is not None:
        return TrainingPhase.PENDING, "Unschedulable", unschedulable
    stuck = container_not_starting(pods)
    if stuck is not None:
        return TrainingPhase.PENDING, *stuck
    return TrainingPhase.PENDING, "WorkersPending", f"waiting for {workers} worker pods to start"


def unschedulable_message(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's reason a worker cannot be placed (a missing claim, no free GPU), for the condition."""
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                return f"worker {_index(pod) or '?'} cannot be scheduled: {condition.get('message', '')}"
    return None


NOT_STARTING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
                "CreateContainerError")
"""Waiting reasons of a trainer container that will not start by itself: a private image without its pull
secret, a misspelt image, a Secret or ConfigMap the pod refers to that does not exist."""


def container_not_starting(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The kubelet's reason and message for a worker whose trainer container cannot start, if any."""
    for pod in pods:
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if container.get("name") == CONTAINER and waiting.get("reason") in NOT_STARTING:
                reason = str(waiting["reason"])
                return reason, f"worker {_index(pod) or '?'} cannot start: {reason}: {waiting.get('message', '')}"
    return None


def training_status(
    previous: TrainingJobStatus,
    run: TrainingRun,
    pool_name: str,
    pool: ComputePoolSpec | None,
    observed: ObservedRun,
    now: datetime,
) -> tuple[TrainingJobStatus, list[Event]]:
    """The new status of a placed run, and the events its changes deserve."""
    # A run is its Job: observed_generation follows metadata.generation, which also moves for changes that
    # keep the run (suspend), so comparing it with the run's generation would restart the run's accounting.
    same_run = previous.job_name == run.job_name
    status = previous.model_copy(deep=True) if same_run else previous.model_copy(
        update={
            "phase": None,
            "start_time": None,
            "completion_time": None,
            "workers": WorkerCounts(),
            "checkpoint": None,
            "run_usage": usage.priced(0, 0, pool),
        },
        deep=True,
    )
    status.observed_generation = run.generation
    status.pool = pool_name
    status.job_name = run.job_name
    generation = run.generation
    status.conditions = set_condition(
        status.conditions, "PoolResolved", True, "PoolFound", f"placed on ComputePool {pool_name}", generation, now
    )
    job = observed.job
    events: list[Event] = []
    # The TTL controller deletes a finished Job in the foreground: its pods, and with them the artifact in
    # their termination messages, go before the Job does. A finished run's Job being deleted is read as gone.
    gone = job is None or bool((job.get("metadata") or {}).get("deletionTimestamp"))
    if gone and same_run and status.phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        return status, events  # the Job was deleted after it finished (ttlSecondsAfterFinished)
    if job is None:
        return status.model_copy(update={"phase": TrainingPhase.PENDING}), events

    artifact = read_artifact(observed.pods)
    phase, reason, message = _phase(run, observed, artifact)
    status.checkpoint = checkpoint_progress(status.checkpoint, read_checkpoint(observed.pods), artifact)
    if phase == TrainingPhase.QUEUED and reason in RESUMING and status.checkpoint is not None:
        message += f"; it resumes from checkpoint step {status.checkpoint.step}"
    job_status = job.get("status") or {}
    status.workers = WorkerCounts(
        active=int(job_status.get("active") or 0),
        succeeded=int(job_status.get("succeeded") or 0),
        failed=int(job_status.get("failed") or 0),
    )
    status.start_time = _timestamp(job_status.get("startTime")) or status.start_time
    if phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        status.completion_time = _timestamp(job_status.get("completionTime")) or status.completion_time or now

    run_usage = usage.pods_usage(observed.pods, pool, now) if observed.pods else status.run_usage
    status.usage = usage.add(usage.subtract(status.usage, status.run_usage), run_usage)
    status.run_usage = run_usage

    terminal = phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)
    status.conditions = set_condition(
        status.conditions,
        "Running",
        phase == TrainingPhase.RUNNING,
        reason if phase == TrainingPhase.RUNNING else ("Finished" if terminal else reason),
        message,
        generation,
        now,
    )
    status.conditions = set_condition(
        status.conditions, "Succeeded", phase == TrainingPhase.SUCCEEDED,
        reason if phase == TrainingPhase.SUCCEEDED else "NotSucceeded", message, generation, now,
    )
    status.conditions = set_condition(
        status.conditions, "Failed", phase == TrainingPhase.FAILED,
        reason if phase == TrainingPhase.FAILED else "NotFailed",
        message if phase == TrainingPhase.FAILED else "", generation, now,
    )
    if phase == TrainingPhase.SUCCEEDED and artifact is not None:
        status.model = artifact
        status.model_generation = generation
    if phase != previous.phase or not same_run:
        kind = "Warning" if phase == TrainingPhase.FAILED else "Normal"
        events.append(Event(kind, reason, message))
    status.phase = phase
    return status, events
