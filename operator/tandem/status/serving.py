"""InferenceService model resolution and status from the observed Deployment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tandem.api.conditions import Event, find, set_condition
from tandem.api.inferenceservice import (
    InferenceServiceStatus,
    ModelSource,
    PlacementStatus,
    ServedModel,
    ServicePhase,
)
from tandem.api.trainingjob import TrainingJobStatus, TrainingPhase
from tandem.errors import Problem
from tandem.render.serving import grpc_address


def resolve_model(source: ModelSource, training_job: TrainingJobStatus | None) -> ServedModel:
    """The model to serve: the fixed URI, or the TrainingJob's newest artifact.

    Raises Problem while there is nothing to serve yet, so the service waits with a clear condition.
    """
    if source.uri is not None:
        version = source.sha256[:12] if source.sha256 else None
        return ServedModel(uri=source.uri, sha256=source.sha256, version=version)
    assert source.from_training_job is not None  # the CRD's CEL rule guarantees exactly one source
    name = source.from_training_job.name
    if training_job is None:
        raise Problem("TrainingJobNotFound", f"TrainingJob {name!r} does not exist in this namespace")
    if training_job.model is None:
        if training_job.phase == TrainingPhase.FAILED:
            raise Problem("TrainingFailed", f"TrainingJob {name!r} failed before producing a model")
        phase = training_job.phase.value if training_job.phase else "Pending"
        raise Problem("WaitingForModel", f"TrainingJob {name!r} is {phase} and has no model yet")
    model = training_job.model
    return ServedModel(
        uri=model.uri,
        sha256=model.sha256,
        version=str(training_job.model_generation) if training_job.model_generation else model.sha256[:12],
        training_job=name,
    )


def rollout(deployment: dict[str, Any] | None) -> tuple[int, int, bool]:
    """(replicas, ready replicas, rollout of the current template complete)."""
    if deployment is None:
        return 0, 0, False
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    wanted = int(spec.get("replicas") or 0)
    replicas = int(status.get("replicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    current = int(status.get("observedGeneration") or 0) >= int(
        (deployment.get("metadata") or {}).get("generation") or 0
    )
    complete = current and wanted > 0 and updated == wanted and replicas == wanted and available >= wanted
    return replicas, ready, complete


def serving_status(
    previous: InferenceServiceStatus,
    generation: int,
    model: ServedModel,
    placement: PlacementStatus,
    url: str,
    deployment: dict[str, Any] | None,
    now: datetime,
) -> tuple[InferenceServiceStatus, list[Event]]:
    """Status of a service whose model and placement are known, from its Deployment."""
    status = previous.model_copy(deep=True)
    events: list[Event] = []
    if previous.model is None or previous.model.sha256 != model.sha256 or previous.model.uri != model.uri:
        events.append(Event("Normal", "ModelResolved", f"serving {model.uri} (version {model.version})"))
    status.model = model
    status.url = url
    status.grpc_address = grpc_address(url)
    status.conditions = set_condition(
        status.conditions, "ModelResolved", True, "ModelFound", f"{model.uri} version {model.version}",
        generation, now,
    )
    if previous.placement is None or previous.placement.pool != placement.pool:
        events.append(Event("Normal", "PlacementDecided", placement.reason))
    status.placement = placement
    status.conditions = set_condition(
        status.conditions, "PlacementDecided", True, "PoolChosen", placement.reason, generation, now
    )
    replicas, ready, complete = rollout(deployment)
    status.replicas, status.ready_replicas = replicas, ready
    if complete and ready > 0:
        phase, reason, message = ServicePhase.READY, "RolloutComplete", f"{ready} replicas ready"
    else:
        phase, reason = ServicePhase.DEPLOYING, "RollingOut"
        message = f"{ready} of {max(replicas, 1)} replicas ready; rolling out version {model.version}"
    status.conditions = set_condition(
        status.conditions, "Ready", phase == ServicePhase.READY, reason, message, generation, now
    )
    if phase != previous.phase and phase == ServicePhase.READY:
        events.append(Event("Normal", "Ready", message))
    status.phase = phase
    status.observed_generation = generation
    return status, events


def problem_status(
    previous: InferenceServiceStatus, generation: int, condition: str, problem: Problem, now: datetime
) -> InferenceServiceStatus:
    """Status when the model or placement cannot be resolved; a running Deployment keeps serving."""
    status = previous.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions, condition, False, problem.reason, problem.message, generation, now
    )
    ready = find(status.conditions, "Ready")
    if ready is None or status.model is None:
        status.conditions = set_condition(
            status.conditions, "Ready", False, problem.reason, problem.message, generation, now
        )
        status.phase = ServicePhase.FAILED if problem.reason == "TrainingFailed" else ServicePhase.PENDING
    status.observed_generation = generation
    return status
