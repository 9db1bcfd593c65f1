"""From a TrainingJob to served predictions, for real: the digits example on the cluster's real nodes.

Tandem is installed by its Helm chart and its operator runs in its own pod. Two trainer containers really
train on the GPU node (torch.distributed over gloo on CPU: the machine has no GPU), finding worker 0 through
the headless Service's DNS name; the model lands on the shared volume, the TrainingJob reports its sha256,
an InferenceService's server container serves it from the CPU node, and tritonclient gets predictions at
the trainer's held-out accuracy through the ClusterIP Service (kube-proxy). Re-running the training rolls
the service to the new model while a client keeps sending requests through the Service, none failing.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release, helm, service_address
from support.cluster import wait_until
from support.digits import CPU_POOL, GPU_POOL, accuracy, held_out, predict, serving_spec, training_spec
from support.tandem import body, condition, create, patch_spec, wait_for
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TRAINING_TIMEOUT = 600
SERVING_TIMEOUT = 180


def phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def trained(api: k8s.ApiClient, namespace: str, generation: int) -> dict[str, Any]:
    """Wait for the given generation to finish; fail at once (with the workers' messages) if it fails."""

    def done(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        if status.get("observedGeneration") != generation:
            return False
        assert status.get("phase") != "Failed", f"training failed: {status}"
        return status.get("phase") == "Succeeded"

    return wait_for(
        api, TRAINING_JOB, namespace, "digits", done, f"generation {generation} Succeeded", TRAINING_TIMEOUT
    )


def pods(api: k8s.ApiClient, namespace: str, selector: str) -> list[Any]:
    found: list[Any] = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return found


def check_model_file(models: ModelVolume, model: dict[str, Any]) -> None:
    """The artifact the status names is on the shared volume, with that sha256."""
    assert model["uri"].startswith("pvc://models/digits/"), model
    path = models.file(model["uri"])
    assert path.is_file(), f"{path} missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model["sha256"]


class SteadyClient(threading.Thread):
    """Sends one-digit requests back to back through the Service, a new connection each, counting outcomes."""

    def __init__(self, address: str, pixels: Any) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.pixels = pixels
        self.stop = threading.Event()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.requests = 0

    def run(self) -> None:
        row = 0
        while not self.stop.is_set():
            self.requests += 1
            try:
                result = predict(self.address, "digits", self.pixels[row : row + 1])
                self.versions[result.model_version] += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            row = (row + 1) % len(self.pixels)


def test_digits_trains_serves_and_rolls_out_without_dropping_requests(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    pixels, labels = held_out()

    # 1. Two workers really train on the GPU node and publish the model.
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", training_spec(workers=2)))
    first = trained(kube, namespace, 1)["status"]
    workers = pods(kube, namespace, "tandem.dev/trainingjob=digits,tandem.dev/generation=1")
    assert len(workers) == 2
    assert {pod.spec.node_name for pod in workers} == {"real-gpu-0"}
    assert {pod.status.phase for pod in workers} == {"Succeeded"}
    assert first["pool"] == GPU_POOL
    assert first["workers"]["succeeded"] == 2
    check_model_file(models, first["model"])
    reported = first["model"]["metrics"]["accuracy"]
    assert reported >= 0.95
    assert first["usage"]["gpuSeconds"] > 0

    # 2. The InferenceService serves it from the CPU node, reached through its Service.
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "digits", serving_spec("digits")))
    ready = wait_for(
        kube,
        INFERENCE_SERVICE,
        namespace,
        "digits",
        lambda o: (condition(o, "Ready") or {}).get("status") == "True",
        "Ready",
        SERVING_TIMEOUT,
    )
    assert ready["status"]["model"]["sha256"] == first["model"]["sha256"]
    assert ready["status"]["placement"]["pool"] == CPU_POOL
    servers = pods(kube, namespace, "tandem.dev/inferenceservice=digits")
    assert {pod.spec.node_name for pod in servers} == {"real-cpu-0"}

    address = service_address(kube, namespace, "digits")
    prediction = predict(address, "digits", pixels)
    served = accuracy(prediction, labels)
    # The ONNX model is the trained one: same held-out digits, same accuracy (onnxruntime vs torch may flip
    # at most a borderline digit).
    assert served >= 0.95
    assert abs(served - reported) <= 1.5 / len(labels)

    # 3. Re-run the training; the service rolls to the new model while requests keep flowing.
    client = SteadyClient(address, pixels)
    client.start()
    try:
        patch_spec(kube, TRAINING_JOB, namespace, "digits", {"args": ["--seed", "1"]})
        second = trained(kube, namespace, 2)["status"]
        assert second["model"]["sha256"] != first["model"]["sha256"]
        check_model_file(models, second["model"])

        def rolled(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            current = [p for p in pods(kube, namespace, "tandem.dev/inferenceservice=digits")]
            return (
                (status.get("model") or {}).get("sha256") == second["model"]["sha256"]
                and (condition(obj, "Ready") or {}).get("status") == "True"
                and len(current) == 1
                and current[0].metadata.annotations.get("tandem.dev/model-sha256") == second["model"]["sha256"]
            )

        wait_for(kube, INFERENCE_SERVICE, namespace, "digits", rolled, "rolled to the new model", SERVING_TIMEOUT)
        answered = sum(client.versions.values())
        wait_until(
            lambda: len(client.versions) == 2 and sum(client.versions.values()) > answered + 20,
            timeout=60,
            what="answers from the new model through the Service",
        )
    finally:
        client.stop.set()
        client.join(timeout=30)
    assert client.failures == [], f"{len(client.failures)} of {client.requests} requests failed: {client.failures[:5]}"
    assert client.requests > 50
    assert len(client.versions) == 2, client.versions  # both models answered, one after the other

    after = predict(address, "digits", pixels)
    assert accuracy(after, labels) >= 0.95


def test_helm_test_runs_a_real_pod(release: Release) -> None:
    """`helm test` starts the chart's test pod on a real node; it reads the operator's metrics via the Service.

    The pod is deleted once it succeeds (hook-succeeded), so its verdict is the phase helm reports.
    """
    out = helm("test", release.name, "--namespace", release.namespace, timeout=300)
    assert re.search(r"TEST SUITE:\s+tandem-test-metrics", out), out
    assert re.search(r"Phase:\s+Succeeded", out), out
