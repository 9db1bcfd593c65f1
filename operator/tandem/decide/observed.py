"""What the operator learns from profile Jobs: pure functions of the Job and pod objects it listed.

A profile is cached as a completed Job with the model, pool and settings labels (tandem.render.profiling);
its figures are in the profile pod's termination message. This module turns those objects into a profile, a
"still running", or a failure with the pod's own words, and a profile into the decision's Candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from tandem.api.profile import ProfileFailure, ProfileResult
from tandem.decide.costing import Candidate, Profile


class ProfileState(StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Observation:
    """The state of one pool's profile, its result when it succeeded, or why it failed."""

    state: ProfileState
    job: str
    result: ProfileResult | None = None
    message: str = ""


def job_condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def job_finished(job: dict[str, Any]) -> bool:
    return job_condition(job, "Complete") is not None or job_condition(job, "Failed") is not None


def _terminations(pods: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(pod phase, terminated state) of every finished container, newest last."""
    found: list[tuple[str, dict[str, Any]]] = []
    for pod in pods:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated:
                found.append((str(status.get("phase") or ""), dict(terminated)))
    found.sort(key=lambda item: str(item[1].get("finishedAt") or ""))
    return found


def observe(job: dict[str, Any], pods: list[dict[str, Any]], expected_sha256: str | None) -> Observation:
    """The profile a Job reports: running until the Job finishes, then its result or its failure."""
    name = str((job.get("metadata") or {}).get("name") or "")
    if not job_finished(job):
        return Observation(ProfileState.RUNNING, name)
    terminations = _terminations(pods)
    for phase, terminated in reversed(terminations):
        message = str(terminated.get("message") or "").strip()
        if phase != "Succeeded" or not message:
            continue
        try:
            result = ProfileResult.model_validate_json(message)
        except ValidationError as error:
            return Observation(ProfileState.FAILED, name, message=f"unreadable profile: {error.errors()[0]['msg']}")
        if expected_sha256 and result.sha256 != expected_sha256:
            mismatch = f"profiled sha256 {(result.sha256 or 'unknown')[:12]}, expected {expected_sha256[:12]}"
            return Observation(ProfileState.FAILED, name, message=mismatch)
        return Observation(ProfileState.SUCCEEDED, name, result=result)
    failed = job_condition(job, "Failed")
    detail = ""
    for _, terminated in reversed(terminations):
        text = str(terminated.get("message") or "").strip()
        if text:
            try:
                detail = ProfileFailure.model_validate_json(text).error
            except ValidationError:
                detail = text[-500:]
            break
    reason = (failed or {}).get("reason") or "NoResult"
    message = f"profile Job {name} failed ({reason}): {detail or 'no message'}"
    server = _server_exit(pods)
    if server:
        message += f"; the model server exited: {server}"
    return Observation(ProfileState.FAILED, name, message=message)


def _server_exit(pods: list[dict[str, Any]]) -> str:
    """The last words of the profile pod's model server (its sidecar) if it exited with an error.

    A model the server cannot load (unreadable, another sha256, refused by onnxruntime) ends the server, and
    its log's last lines are its termination message; the profiler beside it only saw no answer.
    """
    for pod in reversed(pods):
        for container in (pod.get("status") or {}).get("initContainerStatuses") or []:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                terminated = state.get("terminated") or {}
                if terminated.get("exitCode"):
                    text = str(terminated.get("message") or "").strip()
                    return text[-500:] or f"exit code {terminated['exitCode']}"
    return ""


def pick(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job to use among equivalent ones: a completed one first, then one still running, then a failed one."""
    def rank(job: dict[str, Any]) -> tuple[int, str]:
        if job_condition(job, "Complete") is not None:
            order = 0
        elif not job_finished(job):
            order = 1
        else:
            order = 2
        return order, str((job.get("metadata") or {}).get("creationTimestamp") or "")

    return min(jobs, key=rank) if jobs else None


def candidate(
    pool: str, accelerator: bool, rates: tuple[float, float], observation: Observation | None
) -> Candidate:
    """The decision's view of one pool: prices, and the measured figures if the profile succeeded."""
    price, watts = rates
    if observation is None or observation.result is None:
        note = observation.message if observation is not None else "not profiled"
        return Candidate(pool, price, watts, accelerator, None, note or "no profile")
    result = observation.result
    profile = Profile(
        p99_latency_ms=round(result.slo_latency_ms, 4),
        throughput_per_replica=result.throughput_per_replica,
        device=result.device.value,
    )
    return Candidate(pool, price, watts, accelerator, profile)
