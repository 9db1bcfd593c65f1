"""Argo CD health checks: the Lua returns Healthy, Progressing, Degraded and Suspended for the right statuses."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pkgtools import REPO

lupa = pytest.importorskip("lupa")

HEALTH = REPO / "gitops" / "argocd" / "health"
NOW = "2025-01-01T00:00:00Z"


def condition(kind: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message,
            "lastTransitionTime": NOW, "observedGeneration": 1}


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the check as Argo CD does: `obj` is the resource, the chunk returns {status, message}."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return runtime.table_from([to_lua(v) for v in value])
        return value

    runtime.globals().obj = to_lua(obj)
    result = runtime.execute((HEALTH / f"{kind}.lua").read_text())
    return str(result["status"]), str(result["message"])


def training_job(status: dict[str, Any] | None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "tandem.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": "digits", "generation": generation},
                           "spec": {"model": {"output": "pvc://models/digits"}, **spec}}
    if status is not None:
        obj["status"] = {"observedGeneration": 1, **status}
    return obj


def inference_service(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "tandem.dev/v1alpha1", "kind": "InferenceService",
                           "metadata": {"name": "digits", "generation": generation},
                           "spec": {"model": {"fromTrainingJob": {"name": "digits"}}}}
    if status is not None:
        obj["status"] = {"observedGeneration": 1, **status}
    return obj


TRAINING_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "no-status-yet": (training_job(None), "Progressing", "Waiting for the operator"),
    "pending": (training_job({"phase": "Pending", "conditions": [condition("PoolResolved", True, "PoolFound")]}),
                "Progressing", "Pending"),
    "running": (training_job({"phase": "Running", "conditions": [
        condition("PoolResolved", True, "PoolFound"), condition("Running", True, "WorkersRunning", "2 of 2")]}),
                "Progressing", "Running: 2 of 2"),
    "queued": (training_job({"phase": "Queued", "conditions": []}), "Progressing", "Queued"),
    "succeeded": (training_job({"phase": "Succeeded", "model": {"uri": "pvc://models/digits/model.onnx"},
                                "conditions": [condition("Succeeded", True, "ModelPublished")]}),
                  "Healthy", "pvc://models/digits/model.onnx"),
    "failed": (training_job({"phase": "Failed", "conditions": [
        condition("Failed", True, "BackoffLimitExceeded", "worker 0 exited with code 1")]}),
               "Degraded", "BackoffLimitExceeded: worker 0 exited with code 1"),
    "invalid-spec": (training_job({"phase": "Pending", "conditions": [
        condition("PoolResolved", False, "InvalidSpec", "spec.workers: must be >= 1")]}),
                     "Degraded", "InvalidSpec"),
    "waiting-for-a-pool": (training_job({"phase": "Pending", "conditions": [
        condition("PoolResolved", False, "PoolNotFound", "no ComputePool gpu")]}), "Progressing", "PoolNotFound"),
    "new-generation-not-observed": (training_job({"phase": "Succeeded", "conditions": []}, generation=2),
                                    "Progressing", "generation 2"),
    "suspended": (training_job({"phase": "Queued", "conditions": []}, suspend=True), "Suspended", "spec.suspend"),
}

SERVING_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "no-status-yet": (inference_service(None), "Progressing", "Waiting for the operator"),
    "waiting-for-model": (inference_service({"phase": "Pending", "conditions": [
        condition("ModelResolved", False, "WaitingForModel", "TrainingJob 'digits' is Running"),
        condition("Ready", False, "WaitingForModel", "TrainingJob 'digits' is Running")]}),
                          "Progressing", "WaitingForModel"),
    "rolling-out": (inference_service({"phase": "Deploying", "conditions": [
        condition("Ready", False, "RollingOut", "1 of 2 replicas ready")]}), "Progressing", "RollingOut"),
    "ready": (inference_service({"phase": "Ready", "conditions": [
        condition("ModelResolved", True, "ModelFound"),
        condition("Ready", True, "RolloutComplete", "2 replicas ready")]}),
              "Healthy", "2 replicas ready"),
    "training-failed": (inference_service({"phase": "Failed", "conditions": [
        condition("Ready", False, "TrainingFailed", "TrainingJob 'digits' failed")]}), "Degraded", "TrainingFailed"),
    "invalid-spec": (inference_service({"phase": "Pending", "conditions": [
        condition("ModelResolved", False, "InvalidSpec", "spec.replicas: bad")]}), "Degraded", "InvalidSpec"),
    "new-generation-not-observed": (inference_service({"phase": "Ready", "conditions": [
        condition("Ready", True, "RolloutComplete")]}, generation=3), "Progressing", "generation 3"),
}


@pytest.mark.parametrize(("obj", "expected", "message"), TRAINING_CASES.values(), ids=TRAINING_CASES.keys())
def test_training_job_health(obj: dict[str, Any], expected: str, message: str) -> None:
    status, text = health("TrainingJob", obj)
    assert status == expected
    assert message in text


@pytest.mark.parametrize(("obj", "expected", "message"), SERVING_CASES.values(), ids=SERVING_CASES.keys())
def test_inference_service_health(obj: dict[str, Any], expected: str, message: str) -> None:
    status, text = health("InferenceService", obj)
    assert status == expected
    assert message in text


def test_health_checks_accept_statuses_the_operator_writes() -> None:
    from tandem.api.inferenceservice import InferenceServiceStatus
    from tandem.api.trainingjob import TrainingJobStatus

    for obj, _, _ in TRAINING_CASES.values():
        if "status" in obj and "model" not in obj["status"]:
            TrainingJobStatus.model_validate(obj["status"])
    for obj, _, _ in SERVING_CASES.values():
        if "status" in obj:
            InferenceServiceStatus.model_validate(obj["status"])


def test_argocd_configmap_carries_the_same_lua() -> None:
    config = yaml.safe_load((REPO / "gitops" / "argocd" / "argocd-cm.yaml").read_text())
    for kind in ("TrainingJob", "InferenceService"):
        lua = config["data"][f"resource.customizations.health.tandem.dev_{kind}"]
        assert lua == (HEALTH / f"{kind}.lua").read_text()
