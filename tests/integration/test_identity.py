"""Identity on the real control plane: a ServiceAccount that does not exist is a condition, not a Job or a
Deployment whose pods the API server refuses to create, and creating the account later lets them start.

kwok plays the kubelet (a worker "runs" for its tandem.dev/fake-duration); the ServiceAccount admission plugin
that refuses pods of a missing account is the real one.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s

from support.cluster import wait_until
from support.tandem import artifact_message, body, condition, create, wait_for
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB


def training(name: str, account: str) -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": "2s",
        "tandem.dev/fake-termination-message": artifact_message(f"s3://models/{name}/model.onnx", "b" * 64),
    }
    spec = {
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "model": {"output": f"s3://models/{name}"},
        "podMetadata": {"annotations": annotations},
        "serviceAccountName": account,
    }
    return body(TRAINING_JOB, name, spec)


def held_for_the_account(obj: dict[str, Any]) -> bool:
    running = condition(obj, "Running") or {}
    return running.get("reason") == "ServiceAccountNotFound"


def test_a_missing_service_account_holds_the_run_until_it_is_created(
    operator: Any, tandem_api: k8s.ApiClient, namespace: str
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, training("identity", "trainer-identity"))

    held = wait_for(tandem_api, TRAINING_JOB, namespace, "identity", held_for_the_account, "ServiceAccountNotFound")
    assert held["status"]["phase"] == "Pending"
    message = condition(held, "Running")["message"]  # type: ignore[index]
    assert f"ServiceAccount trainer-identity (spec.serviceAccountName) does not exist in namespace {namespace}" in (
        message
    )
    assert not k8s.BatchV1Api(tandem_api).list_namespaced_job(namespace).items
    warnings = wait_until(
        lambda: k8s.CoreV1Api(tandem_api).list_namespaced_event(
            namespace, field_selector="involvedObject.name=identity,reason=ServiceAccountNotFound"
        ).items,
        timeout=30,
        what="a ServiceAccountNotFound event",
    )
    assert [event.type for event in warnings] == ["Warning"]

    k8s.CoreV1Api(tandem_api).create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="trainer-identity"))
    )
    done = wait_for(
        tandem_api, TRAINING_JOB, namespace, "identity",
        lambda obj: (obj.get("status") or {}).get("phase") == "Succeeded", "Succeeded once the account exists",
        timeout=120,
    )  # fmt: skip
    job = k8s.BatchV1Api(tandem_api).read_namespaced_job(done["status"]["jobName"], namespace)
    assert job.spec.template.spec.service_account_name == "trainer-identity"


def test_a_service_naming_a_missing_account_is_held_until_it_exists_and_then_deployed(
    operator: Any, tandem_api: k8s.ApiClient, namespace: str
) -> None:
    spec = {"model": {"uri": "s3://models/m/model.onnx", "sha256": "c" * 64}, "serviceAccountName": "server-identity"}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "identity", spec))

    def held(obj: dict[str, Any]) -> bool:
        return (condition(obj, "Ready") or {}).get("reason") == "ServiceAccountNotFound"

    waiting = wait_for(tandem_api, INFERENCE_SERVICE, namespace, "identity", held, "ServiceAccountNotFound")
    assert "ServiceAccount server-identity (spec.serviceAccountName) does not exist" in (
        condition(waiting, "Ready") or {}
    )["message"]
    assert not k8s.AppsV1Api(tandem_api).list_namespaced_deployment(namespace).items

    k8s.CoreV1Api(tandem_api).create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="server-identity"))
    )
    deployment = wait_until(
        lambda: next(iter(k8s.AppsV1Api(tandem_api).list_namespaced_deployment(namespace).items), None),
        timeout=90,
        what="the Deployment once the account exists",
    )
    assert deployment.spec.template.spec.service_account_name == "server-identity"
