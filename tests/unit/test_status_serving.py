from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tandem.api.artifact import ModelArtifact
from tandem.api.common import ConditionStatus
from tandem.api.conditions import find
from tandem.api.inferenceservice import (
    InferenceServiceStatus,
    ModelSource,
    PlacementStatus,
    ServedModel,
    ServicePhase,
)
from tandem.api.trainingjob import TrainingJobStatus, TrainingPhase
from tandem.errors import Problem
from tandem.status.serving import problem_status, resolve_model, rollout, serving_status

SHA = "f" * 64
MODEL = ServedModel(uri="s3://m/v1/model.onnx", sha256=SHA, version="1")
PLACEMENT = PlacementStatus(pool="cpu", reason="placement cpu: serving pool cpu")
URL = "http://digits.ml.svc.cluster.local/v2/models/digits"


def _deployment(
    wanted: int = 2, ready: int = 2, updated: int = 2, available: int = 2, generation: int = 1, observed: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": wanted},
        "status": {
            "observedGeneration": observed,
            "replicas": wanted,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


def _from_job(name: str = "trainer") -> ModelSource:
    return ModelSource.model_validate({"fromTrainingJob": {"name": name}})


def test_model_from_uri_is_versioned_by_its_sha() -> None:
    model = resolve_model(ModelSource(uri="s3://m/model.onnx", sha256=SHA), None)
    assert (model.uri, model.sha256, model.version) == ("s3://m/model.onnx", SHA, SHA[:12])


def test_model_from_uri_without_sha_has_no_version() -> None:
    assert resolve_model(ModelSource(uri="s3://m/model.onnx"), None).version is None


def test_model_from_a_training_job_is_its_newest_artifact() -> None:
    artifact = ModelArtifact(uri="s3://m/v3", sha256=SHA, size_bytes=1)
    job = TrainingJobStatus(phase=TrainingPhase.RUNNING, model=artifact, model_generation=3)
    model = resolve_model(_from_job(), job)
    assert (model.uri, model.sha256, model.version, model.training_job) == ("s3://m/v3", SHA, "3", "trainer")


def test_missing_training_job_is_training_job_not_found() -> None:
    with pytest.raises(Problem) as raised:
        resolve_model(_from_job("absent"), None)
    assert raised.value.reason == "TrainingJobNotFound"
    assert "'absent'" in raised.value.message


def test_training_job_without_a_model_yet_is_waiting_for_model() -> None:
    with pytest.raises(Problem) as raised:
        resolve_model(_from_job(), TrainingJobStatus(phase=TrainingPhase.RUNNING))
    assert raised.value.reason == "WaitingForModel"
    assert "Running" in raised.value.message


def test_failed_training_job_without_a_model_is_training_failed() -> None:
    with pytest.raises(Problem) as raised:
        resolve_model(_from_job(), TrainingJobStatus(phase=TrainingPhase.FAILED))
    assert raised.value.reason == "TrainingFailed"


def test_rollout_complete_needs_every_replica_updated_and_available() -> None:
    assert rollout(_deployment()) == (2, 2, True)
    assert rollout(_deployment(updated=1))[2] is False
    assert rollout(_deployment(available=1))[2] is False


def test_rollout_of_an_unobserved_generation_is_not_complete() -> None:
    assert rollout(_deployment(generation=2, observed=1))[2] is False


def test_no_deployment_is_no_rollout() -> None:
    assert rollout(None) == (0, 0, False)


def test_completed_rollout_is_ready(now: datetime) -> None:
    status, events = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, _deployment(), now)
    assert status.phase == ServicePhase.READY
    ready = find(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == ConditionStatus.TRUE
    assert (status.replicas, status.ready_replicas, status.url) == (2, 2, URL)
    assert status.grpc_address == "digits.ml.svc.cluster.local:8081"
    assert "Ready" in [event.reason for event in events]


def test_rollout_in_progress_is_deploying(now: datetime) -> None:
    deployment = _deployment(ready=2, updated=1)
    status, _ = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, deployment, now)
    assert status.phase == ServicePhase.DEPLOYING
    ready = find(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == (ConditionStatus.FALSE, "RollingOut")


def test_new_model_leaves_ready_until_the_rollout_completes(now: datetime) -> None:
    ready, _ = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, _deployment(), now)
    next_model = ServedModel(uri="s3://m/v2/model.onnx", sha256="0" * 64, version="2")
    rolling, events = serving_status(
        ready, 1, next_model, PLACEMENT, URL, _deployment(generation=2, observed=2, updated=1), now
    )
    assert rolling.phase == ServicePhase.DEPLOYING
    assert rolling.model == next_model
    assert "ModelResolved" in [event.reason for event in events]


def test_model_resolved_and_placement_decided_are_true(now: datetime) -> None:
    status, _ = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, None, now)
    for kind in ("ModelResolved", "PlacementDecided"):
        condition = find(status.conditions, kind)
        assert condition is not None
        assert condition.status == ConditionStatus.TRUE


def test_unchanged_service_emits_no_events(now: datetime) -> None:
    first, _ = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, _deployment(), now)
    _, events = serving_status(first, 1, MODEL, PLACEMENT, URL, _deployment(), now)
    assert events == []


def test_waiting_for_model_is_pending_and_not_ready(now: datetime) -> None:
    problem = Problem("WaitingForModel", "TrainingJob 'trainer' is Running and has no model yet")
    status = problem_status(InferenceServiceStatus(), 1, "ModelResolved", problem, now)
    assert status.phase == ServicePhase.PENDING
    for kind in ("ModelResolved", "Ready"):
        condition = find(status.conditions, kind)
        assert condition is not None
        assert (condition.status, condition.reason) == (ConditionStatus.FALSE, "WaitingForModel")


def test_training_failed_without_a_served_model_is_failed(now: datetime) -> None:
    problem = Problem("TrainingFailed", "TrainingJob 'trainer' failed before producing a model")
    assert problem_status(InferenceServiceStatus(), 1, "ModelResolved", problem, now).phase == ServicePhase.FAILED


def test_a_serving_deployment_stays_ready_through_a_model_problem(now: datetime) -> None:
    serving, _ = serving_status(InferenceServiceStatus(), 1, MODEL, PLACEMENT, URL, _deployment(), now)
    problem = Problem("TrainingFailed", "the re-run failed")
    status = problem_status(serving, 2, "ModelResolved", problem, now)
    assert status.phase == ServicePhase.READY
    ready = find(status.conditions, "Ready")
    assert ready is not None
    assert ready.status == ConditionStatus.TRUE
    resolved = find(status.conditions, "ModelResolved")
    assert resolved is not None
    assert resolved.status == ConditionStatus.FALSE
