"""The digits example as the end-to-end test and the demo drive it: pools, resources and a V2 client.

Shared so the test (the specification) and the demo (the show) run exactly the same path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tandem.devexec.nodes import EXECUTOR_LABEL, EXECUTOR_TAINT, EXECUTOR_VALUE, GPU_TAINT

GPU_POOL = "local-gpu"
CPU_POOL = "local-cpu"
MODEL_CLAIM = "models"


def toleration(taint: dict[str, str]) -> dict[str, str]:
    return {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}


def local_pools() -> dict[str, dict[str, Any]]:
    """ComputePool specs for the executor's nodes: they select and tolerate `tandem.dev/executor=local`."""
    return {
        GPU_POOL: {
            "nodeSelector": {"tandem.dev/pool": "gpu", EXECUTOR_LABEL: EXECUTOR_VALUE},
            "accelerator": "nvidia.com/gpu",
            "tolerations": [toleration(GPU_TAINT), toleration(EXECUTOR_TAINT)],
            "role": "training",
            "price": {"acceleratorHour": 2.5, "coreHour": 0.02},
            "power": {"wattsPerAccelerator": 700, "wattsPerCore": 5},
        },
        CPU_POOL: {
            "nodeSelector": {"tandem.dev/pool": "cpu", EXECUTOR_LABEL: EXECUTOR_VALUE},
            "tolerations": [toleration(EXECUTOR_TAINT)],
            "role": "serving",
            "price": {"coreHour": 0.03},
            "power": {"wattsPerCore": 6},
        },
    }


def training_spec(workers: int = 2, args: list[str] | None = None, pool: str = GPU_POOL) -> dict[str, Any]:
    """The example TrainingJob: `tandem train digits` on `workers` pods, model to pvc://models/digits."""
    return {
        "pool": pool,
        "workers": workers,
        "args": list(args or []),
        "resources": {"gpus": 1, "cpu": "1", "memory": "2Gi"},
        "model": {"output": f"pvc://{MODEL_CLAIM}/digits"},
        # One torch thread per worker, matching the 1-CPU request. torch sizes its pool by the cores it
        # sees, not by a CPU limit; two gloo workers on a shared 2-core machine then ran 50x slower
        # (61 vs 3000 samples/s). See docs/executor.md.
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }


def serving_spec(training_job: str, pool: str = CPU_POOL) -> dict[str, Any]:
    return {
        "model": {"fromTrainingJob": {"name": training_job}},
        "pool": pool,
        "replicas": {"min": 1, "max": 1},
        "resources": {"cpu": "1", "memory": "1Gi"},
    }


def held_out() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The trainer's held-out digits (same split, same seed), as raw pixel counts and labels."""
    from tandem.trainer.digits import load_split

    split = load_split(None)
    return split.test_x.numpy(), split.test_y.numpy()


@dataclass(frozen=True)
class Prediction:
    labels: npt.NDArray[np.int64]
    model_version: str
    seconds: float


def predict(address: str, model: str, pixels: npt.NDArray[np.float32], timeout: float = 10.0) -> Prediction:
    """One V2 infer call with tritonclient (a client nobody here wrote); raises on any failure."""
    import tritonclient.http as v2

    client = v2.InferenceServerClient(url=address, connection_timeout=timeout, network_timeout=timeout)
    try:
        tensor = v2.InferInput("input", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(pixels, dtype=np.float32), binary_data=False)
        started = time.perf_counter()
        result = client.infer(model, [tensor], outputs=[v2.InferRequestedOutput("logits", binary_data=False)])
        seconds = time.perf_counter() - started
        logits = result.as_numpy("logits")
        if logits is None:
            raise RuntimeError(f"{address}: response has no logits output")
        version = str(result.get_response().get("model_version", ""))
        return Prediction(labels=logits.argmax(axis=1), model_version=version, seconds=seconds)
    finally:
        client.close()


def accuracy(prediction: Prediction, labels: npt.NDArray[np.int64]) -> float:
    return float((prediction.labels == labels).mean())


def model_volume(namespace: str, claim: str = MODEL_CLAIM) -> list[dict[str, Any]]:
    """A PersistentVolume pre-bound to a claim, and the claim: what `pvc://models/...` needs to schedule.

    The scheduler only places a pod whose claim is bound; the dev cluster has no provisioner, so the
    volume is created bound (claimRef + volumeName). The executor maps the claim to its own directory
    (<state>/pvc/<namespace>/<claim>); the hostPath here only describes that.
    """
    volume = f"{claim}-{namespace}"[:63]
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume, "labels": {"tandem.dev/executor": "local"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "",
                "hostPath": {"path": f"/tandem-devexec/pvc/{namespace}/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]


def create_model_volume(api: Any, namespace: str) -> None:
    """Create `model_volume(namespace)` through a tandem.devexec.kubeapi.KubeApi (existing objects kept)."""
    from kubernetes.client.exceptions import ApiException

    for obj in model_volume(namespace):
        path = (
            "/api/v1/persistentvolumes"
            if obj["kind"] == "PersistentVolume"
            else f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"
        )
        try:
            api.call("POST", path, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise
