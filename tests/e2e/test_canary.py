"""Rollouts on the real node under load through the Service: the quality bar and the canary.

A new model serves on half the replicas first (one canary beside one stable replica), judged on the servers'
own metrics: one within its bounds is promoted after its window with no request failed; one whose requests
fail is rolled back once its failures exceed the bound, and the promoted model serves on. A model the real
trainer publishes below the quality bar is never deployed, and no request fails meanwhile.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.conftest import Load, ModelVolume, Release, service_address
from support.cluster import wait_until
from support.digits import CPU_POOL, serving_spec, training_spec
from support.models import failing_on_nonzero_model, tiny_model
from support.tandem import body, condition, create, events_for, patch_spec, wait_for
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB

pytestmark = pytest.mark.timeout(600)

NAME = "canary"
WINDOW_S = 20


def put(models: ModelVolume, file: str, data: bytes) -> dict[str, str]:
    (models.path / file).write_bytes(data)
    return {"uri": f"pvc://{models.claim}/{file}", "sha256": hashlib.sha256(data).hexdigest()}


def served_sha(obj: dict[str, Any]) -> str | None:
    return ((obj.get("status") or {}).get("model") or {}).get("sha256")


def verdict(reason: str) -> Any:
    return lambda obj: (condition(obj, "Canary") or {}).get("reason") == reason


def canary_gone(kube: k8s.ApiClient, namespace: str, name: str = NAME) -> bool:
    found = k8s.AppsV1Api(kube).list_namespaced_deployment(namespace, field_selector=f"metadata.name={name}-canary")
    return not found.items


def canary_pods(kube: k8s.ApiClient, namespace: str) -> list[k8s.V1Pod]:
    selector = f"tandem.dev/inferenceservice={NAME},tandem.dev/track=canary"
    pods: list[k8s.V1Pod] = k8s.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=selector).items
    return pods


def test_a_good_model_is_promoted_after_its_window_and_a_failing_one_is_rolled_back(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume, release: Release
) -> None:
    first = put(models, "v1.onnx", tiny_model(0))
    second = put(models, "v2.onnx", tiny_model(1))
    failing = put(models, "v3.onnx", failing_on_nonzero_model())
    spec = {
        "model": first,
        "pool": CPU_POOL,
        "replicas": {"min": 1, "max": 1},
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "rollout": {"canaryPercent": 50, "canarySeconds": WINDOW_S, "maxErrorRate": 0.05},
    }
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, NAME, spec))
    wait_for(kube, INFERENCE_SERVICE, namespace, NAME, lambda o: served_sha(o) == first["sha256"] and (
        condition(o, "Ready") or {}).get("status") == "True", "Ready on the first model", timeout=180)
    address = service_address(kube, namespace, NAME)

    with Load(address, NAME, workers=2) as load:
        patch_spec(kube, INFERENCE_SERVICE, namespace, NAME, {"model": second})
        trial = wait_for(
            kube, INFERENCE_SERVICE, namespace, NAME,
            lambda o: ((o.get("status") or {}).get("canary") or {}).get("requests", 0) > 0, "the canary serving",
            timeout=180,
        )
        assert served_sha(trial) == first["sha256"] and trial["status"]["canary"]["replicas"] == 1
        promoted = wait_for(kube, INFERENCE_SERVICE, namespace, NAME, verdict("Promoted"), "promoted", timeout=240)
        wait_until(lambda: canary_gone(kube, namespace), timeout=60, what="the canary Deployment removed")
        wait_for(
            kube, INFERENCE_SERVICE, namespace, NAME,
            lambda o: (condition(o, "Ready") or {}).get("reason") == "RolloutComplete", "stable rolled out",
            timeout=180,
        )
    message = condition(promoted, "Canary")["message"]  # type: ignore[index]
    print(f"promoted: {message}; load: {load.answered} answered, {len(load.failures)} failed {load.failure_kinds()}")
    assert served_sha(promoted) == second["sha256"]
    assert load.answered > 0 and load.failures == []

    with Load(address, NAME, workers=2) as load:
        patch_spec(kube, INFERENCE_SERVICE, namespace, NAME, {"model": failing})
        rolled = wait_for(kube, INFERENCE_SERVICE, namespace, NAME, verdict("RolledBack"), "rolled back", timeout=240)
        wait_until(lambda: canary_gone(kube, namespace), timeout=60, what="the canary Deployment removed")
        wait_until(lambda: not canary_pods(kube, namespace), timeout=90, what="the canary's pods gone")
        answered_after, failures_after = load.answered, len(load.failures)
        wait_until(lambda: load.answered > answered_after + 40, timeout=60, what="requests answered after")
    message = condition(rolled, "Canary")["message"]  # type: ignore[index]
    print(f"rolled back: {message}; load: {load.answered} answered, {len(load.failures)} failed "
          f"{load.failure_kinds()}")
    assert served_sha(rolled) == second["sha256"] and rolled["status"].get("canary") is None
    assert "requests failed" in message and "over the 5.0% allowed" in message
    assert [(r["sha256"], r["reason"]) for r in rolled["status"]["rejected"]] == [(failing["sha256"], "RolledBack")]
    assert {kind for kind, _ in load.failure_kinds()} == {"HTTP 500"}
    assert len(load.failures) == failures_after  # once the canary is gone, nothing fails
    reasons = [event.reason for event in events_for(kube, namespace, NAME)]
    assert reasons.count("CanaryStarted") == 2 and "Promoted" in reasons and "RolledBack" in reasons


def test_a_retrained_model_below_the_quality_bar_never_serves_and_no_request_fails(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume, release: Release
) -> None:
    """The built-in digits trainer for real: three epochs clear the bar, then a run at a learning rate too small
    to learn anything publishes a model at about chance, which the service never deploys."""
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "bar", training_spec(workers=1, args=["--epochs", "3"])))
    first = wait_for(kube, TRAINING_JOB, namespace, "bar", lambda o: served_sha(o) is not None, "a model", 600)
    spec = {**serving_spec("bar"), "rollout": {"minMetrics": {"accuracy": 0.5}, "canaryPercent": 50}}
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "bar", spec))
    wait_for(kube, INFERENCE_SERVICE, namespace, "bar", lambda o: served_sha(o) == served_sha(first) and (
        condition(o, "Ready") or {}).get("status") == "True", "Ready on the first model", timeout=180)
    with Load(service_address(kube, namespace, "bar"), "bar", workers=2) as load:
        patch_spec(kube, TRAINING_JOB, namespace, "bar", {"args": ["--epochs", "1", "--lr", "1e-7"]})
        poor = wait_for(
            kube, TRAINING_JOB, namespace, "bar",
            lambda o: served_sha(o) not in (None, served_sha(first)), "the poor model", 600,
        )
        held = wait_for(
            kube, INFERENCE_SERVICE, namespace, "bar", verdict("BelowQualityBar"), "held below the bar", timeout=120
        )
        answered = load.answered
        wait_until(lambda: load.answered > answered + 40, timeout=60, what="requests answered after")
    accuracy = poor["status"]["model"]["metrics"]["accuracy"]
    print(f"first model accuracy {first['status']['model']['metrics']['accuracy']:.3f}, poor model {accuracy:.3f}; "
          f"{condition(held, 'Canary')['message']}; load: {load.answered} answered, {len(load.failures)} failed")  # type: ignore[index]
    assert accuracy < 0.5
    assert served_sha(held) == served_sha(first) and held["status"].get("canary") is None
    assert [r["reason"] for r in held["status"]["rejected"]] == ["BelowQualityBar"]
    assert canary_gone(kube, namespace, "bar")
    deployment = k8s.AppsV1Api(kube).read_namespaced_deployment("bar", namespace)
    assert deployment.spec.template.metadata.annotations["tandem.dev/model-sha256"] == served_sha(first)
    assert load.answered > 0 and load.failures == []
