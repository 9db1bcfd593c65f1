"""Canary rollouts on a real control plane (kwok nodes): the quality bar, the canary Deployment, no promotion
on faith.

kwok's pods have no servers, so their metrics cannot be read here: these tests show what the operator
deploys and says. Promotion and roll-back on the servers' real figures are in tests/e2e/test_canary.py.
"""

from __future__ import annotations

from typing import Any

from kopf.testing import KopfRunner
from kubernetes import client as k8s
from prometheus_client import REGISTRY

from integration.test_operator import SHA_1, SHA_2, phase_is, training_spec
from support.cluster import wait_until
from support.tandem import artifact_message, body, condition, create, events_for, patch_spec, wait_for
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB

SHA_3 = "3" * 64


def trained(sha256: str, accuracy: float) -> dict[str, Any]:
    """A TrainingJob spec whose (kwok) worker reports a model with this accuracy."""
    spec = training_spec(sha256)
    spec["podMetadata"]["annotations"]["tandem.dev/fake-termination-message"] = artifact_message(
        f"s3://models/digits/{sha256[:6]}/model.onnx", sha256, accuracy=accuracy
    )
    return spec


def served_sha(obj: dict[str, Any]) -> str | None:
    return ((obj.get("status") or {}).get("model") or {}).get("sha256")


def deployed_sha(api: k8s.ApiClient, namespace: str, name: str) -> str | None:
    try:
        deployment = k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return str(deployment.spec.template.metadata.annotations["tandem.dev/model-sha256"])


def retrain(api: k8s.ApiClient, namespace: str, sha256: str, accuracy: float, generation_args: list[str]) -> None:
    patch_spec(api, TRAINING_JOB, namespace, "digits", {**trained(sha256, accuracy), "args": generation_args})
    wait_for(api, TRAINING_JOB, namespace, "digits", lambda o: served_sha(o) == sha256, f"model {sha256[:6]}")


def test_a_model_below_the_bar_is_never_deployed_and_a_good_one_goes_on_trial_beside_the_old(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", trained(SHA_1, 0.95)))
    wait_for(tandem_api, TRAINING_JOB, namespace, "digits", lambda o: served_sha(o) == SHA_1, "first model")
    rollout = {"canaryPercent": 25, "canarySeconds": 5, "minMetrics": {"accuracy": 0.9}}
    spec = {"model": {"fromTrainingJob": {"name": "digits"}}, "replicas": {"min": 3, "max": 3}, "rollout": rollout}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "digits", spec))
    first = wait_for(tandem_api, INFERENCE_SERVICE, namespace, "digits", phase_is("Ready"), "ready", timeout=120)
    assert served_sha(first) == SHA_1 and (first["status"].get("canary") is None)

    retrain(tandem_api, namespace, SHA_2, 0.5, ["--epochs", "2"])
    held = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "digits",
        lambda o: (condition(o, "Canary") or {}).get("reason") == "BelowQualityBar", "held below the bar",
    )
    assert served_sha(held) == SHA_1 and held["status"]["phase"] == "Ready"
    assert "accuracy 0.5 is below 0.9" in condition(held, "Canary")["message"]  # type: ignore[index]
    assert [(r["sha256"], r["reason"]) for r in held["status"]["rejected"]] == [(SHA_2, "BelowQualityBar")]
    assert deployed_sha(tandem_api, namespace, "digits") == SHA_1
    assert deployed_sha(tandem_api, namespace, "digits-canary") is None
    assert any(e.reason == "BelowQualityBar" for e in events_for(tandem_api, namespace, "digits"))

    retrain(tandem_api, namespace, SHA_3, 0.97, ["--epochs", "3"])
    trial = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "digits",
        lambda o: ((o.get("status") or {}).get("canary") or {}).get("model", {}).get("sha256") == SHA_3, "on trial",
    )
    assert served_sha(trial) == SHA_1 and trial["status"]["canary"]["replicas"] == 1
    assert deployed_sha(tandem_api, namespace, "digits") == SHA_1
    assert deployed_sha(tandem_api, namespace, "digits-canary") == SHA_3
    canary_pods = k8s.CoreV1Api(tandem_api).list_namespaced_pod(
        namespace, label_selector="tandem.dev/inferenceservice=digits,tandem.dev/track=canary"
    )
    service = k8s.CoreV1Api(tandem_api).read_namespaced_service("digits", namespace)
    assert canary_pods.items and all(
        pod.metadata.labels.items() >= service.spec.selector.items() for pod in canary_pods.items
    )  # the Service sends the canary its share of requests

    # kwok's pods have no servers: the canary's figures cannot be read, so it is rolled back, not promoted.
    rolled = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "digits",
        lambda o: (condition(o, "Canary") or {}).get("reason") == "RolledBack", "rolled back", timeout=120,
    )
    assert served_sha(rolled) == SHA_1 and rolled["status"].get("canary") is None
    assert "metrics could not be read" in condition(rolled, "Canary")["message"]  # type: ignore[index]
    wait_until(lambda: deployed_sha(tandem_api, namespace, "digits-canary") is None, what="the canary removed")
    assert deployed_sha(tandem_api, namespace, "digits") == SHA_1
    reasons = [e.reason for e in events_for(tandem_api, namespace, "digits")]
    assert "CanaryStarted" in reasons and "RolledBack" in reasons and "Promoted" not in reasons
    rollbacks = {"namespace": namespace, "inferenceservice": "digits"}  # what the TandemCanaryRolledBack alert reads
    wait_until(
        lambda: (REGISTRY.get_sample_value("tandem_canary_rollbacks_total", rollbacks) or 0) >= 1,
        what="the rollback counted",
    )
