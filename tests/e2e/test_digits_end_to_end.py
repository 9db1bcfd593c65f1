"""From a TrainingJob to served predictions, for real: the digits example on the local executor.

Two worker pods really train (torch.distributed over gloo on CPU, on the local "GPU" node), the model lands
in the shared claim directory, the TrainingJob reports its sha256, an InferenceService serves it from the
local CPU node, and tritonclient gets predictions at the trainer's held-out accuracy. Re-running the
training rolls the service to the new model while a client keeps sending requests, none of them failing.

The client picks a ready endpoint of the Service (from its pods) for every request, as kube-proxy would
(tandem.devexec.endpoints); it never retries.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from e2e.conftest import LocalExecutor
from support.cluster import wait_until
from support.tandem import body, condition, create, get, patch_spec
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB
from tandem.devexec.digits import (
    CPU_POOL,
    GPU_POOL,
    accuracy,
    create_model_volume,
    held_out,
    predict,
    serving_spec,
    training_spec,
)
from tandem.devexec.endpoints import ServiceEndpoints
from tandem.devexec.kubeapi import KubeApi

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]

TRAINING_TIMEOUT = 600
SERVING_TIMEOUT = 180


def wait_status(api: k8s.ApiClient, kind: Any, namespace: str, name: str, check: Any, what: str, timeout: float) -> Any:
    def probe() -> dict[str, Any] | None:
        obj = get(api, kind, namespace, name)
        return obj if check(obj) else None

    return wait_until(probe, timeout=timeout, interval=1.0, what=f"{kind.kind} {name}: {what}")


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

    return wait_status(
        api, TRAINING_JOB, namespace, "digits", done, f"generation {generation} Succeeded", TRAINING_TIMEOUT
    )


def pods(api: k8s.ApiClient, namespace: str, selector: str) -> list[Any]:
    found: list[Any] = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return found


def check_model_file(executor: LocalExecutor, namespace: str, model: dict[str, Any]) -> None:
    """The artifact the status names is on the shared claim, with that sha256."""
    assert model["uri"].startswith("pvc://models/digits/"), model
    path = executor.claim_dir(namespace, "models") / model["uri"].removeprefix("pvc://models/")
    assert path.is_file(), f"{path} missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == model["sha256"]


class SteadyClient(threading.Thread):
    """Sends one-digit requests back to back to a ready endpoint picked per request, counting outcomes."""

    def __init__(self, endpoints: ServiceEndpoints, pixels: Any) -> None:
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.pixels = pixels
        self.stop = threading.Event()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.requests = 0

    def run(self) -> None:
        row = 0
        while not self.stop.is_set():
            address = self.endpoints.pick()
            self.requests += 1
            if address is None:
                self.failures.append("no ready endpoint")
                time.sleep(0.05)
                continue
            try:
                result = predict(address, "digits", self.pixels[row : row + 1])
                self.versions[result.model_version] += 1
            except Exception as exc:
                self.failures.append(f"{address}: {exc!r}")
            row = (row + 1) % len(self.pixels)


def test_digits_trains_serves_and_rolls_out_without_dropping_requests(
    kube: k8s.ApiClient, namespace: str, local_executor: LocalExecutor, e2e_operator: KopfRunner
) -> None:
    pixels, labels = held_out()

    create_model_volume(KubeApi(kube), namespace)  # the claim pvc://models names, bound so pods schedule

    # 1. Two workers really train on the local GPU node and publish the model.
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", training_spec(workers=2)))
    first = trained(kube, namespace, 1)["status"]
    workers = pods(kube, namespace, "tandem.dev/trainingjob=digits,tandem.dev/generation=1")
    assert len(workers) == 2
    assert {pod.spec.node_name for pod in workers} == {"local-gpu-0"}
    assert {pod.status.phase for pod in workers} == {"Succeeded"}
    assert first["pool"] == GPU_POOL
    assert first["workers"]["succeeded"] == 2
    check_model_file(local_executor, namespace, first["model"])
    reported = first["model"]["metrics"]["accuracy"]
    assert reported >= 0.95
    assert first["usage"]["gpuSeconds"] > 0

    # 2. The InferenceService serves it from the local CPU node.
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "digits", serving_spec("digits")))
    ready = wait_status(
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
    assert {pod.spec.node_name for pod in servers} == {"local-cpu-0"}

    endpoints = ServiceEndpoints(KubeApi(kube), namespace, "digits").start()
    try:
        address = endpoints.wait(timeout=60)[0]
        prediction = predict(address, "digits", pixels)
        served = accuracy(prediction, labels)
        # The ONNX model is the trained one: same held-out digits, same accuracy (onnxruntime vs torch
        # may flip at most a borderline digit).
        assert served >= 0.95
        assert abs(served - reported) <= 1.5 / len(labels)

        # 3. Re-run the training; the service rolls to the new model while requests keep flowing.
        client = SteadyClient(endpoints, pixels)
        client.start()
        patch_spec(kube, TRAINING_JOB, namespace, "digits", {"args": ["--seed", "1"]})
        second = trained(kube, namespace, 2)["status"]
        assert second["model"]["sha256"] != first["model"]["sha256"]
        check_model_file(local_executor, namespace, second["model"])

        def rolled(obj: dict[str, Any]) -> bool:
            status = obj.get("status") or {}
            current = [p for p in pods(kube, namespace, "tandem.dev/inferenceservice=digits")]
            return (
                (status.get("model") or {}).get("sha256") == second["model"]["sha256"]
                and (condition(obj, "Ready") or {}).get("status") == "True"
                and len(current) == 1
                and current[0].metadata.annotations.get("tandem.dev/model-sha256") == second["model"]["sha256"]
                and endpoints.addresses() == [f"{current[0].status.pod_ip}:8080"]
            )

        wait_status(kube, INFERENCE_SERVICE, namespace, "digits", rolled, "rolled to the new model", SERVING_TIMEOUT)
        time.sleep(2)  # a few requests against the new model alone
        client.stop.set()
        client.join(timeout=30)
        assert client.failures == [], (
            f"{len(client.failures)} of {client.requests} requests failed: {client.failures[:5]}"
        )
        assert client.requests > 50
        assert len(client.versions) == 2, client.versions  # both models answered, one after the other

        after = predict(endpoints.wait(timeout=10)[0], "digits", pixels)
        assert accuracy(after, labels) >= 0.95
    finally:
        endpoints.close()
