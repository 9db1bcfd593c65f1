"""The digits example as the end-to-end test and the demo drive it: pools, resources and a V2 client.

Shared so the test (the specification) and the demo (the show) run exactly the same path, on the local
cluster's real nodes (hack/nodes.sh): real-gpu-0 and real-cpu-0, labelled tandem.dev/pool=real-gpu|real-cpu
and tainted tandem.dev/real-node so that nothing else lands on them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from kubernetes import client as k8s

from support.cluster import wait_until

GPU_POOL = "real-gpu"
CPU_POOL = "real-cpu"
MODEL_CLAIM = "models"
RELEASE_VALUES = Path(__file__).resolve().parents[2] / "hack" / "node" / "tandem-values.yaml"
"""The Helm values that install Tandem on the real nodes; their pools are the ones used here."""


def real_pools() -> dict[str, dict[str, Any]]:
    """ComputePool specs for the real nodes, as the release values define them."""
    pools = yaml.safe_load(RELEASE_VALUES.read_text())["computePools"]
    return {name: pool["spec"] for name, pool in pools.items() if pool.get("enabled")}


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
        # (61 vs 3000 samples/s).
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }


def serving_spec(training_job: str, pool: str = CPU_POOL) -> dict[str, Any]:
    return {
        "model": {"fromTrainingJob": {"name": training_job}},
        "pool": pool,
        "replicas": {"min": 1, "max": 1},
        # Half a core: the CPU node's two cores then fit the old replica, its surge replacement during a
        # rollout, CoreDNS and the operator.
        "resources": {"cpu": "500m", "memory": "1Gi"},
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


def model_claim(name: str = MODEL_CLAIM) -> dict[str, Any]:
    """The claim `pvc://models/...` names: ReadWriteMany, of the cluster's default StorageClass (on the local
    cluster, tandem-shared: a directory both real nodes mount, hack/node/volumes.py)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def bound_directory(api: k8s.ApiClient, namespace: str, claim: str = MODEL_CLAIM, timeout: float = 60) -> Path:
    """Wait until the claim is Bound and return the directory behind its volume (a hostPath on this machine)."""
    core = k8s.CoreV1Api(api)

    def volume_name() -> str | None:
        found = core.read_namespaced_persistent_volume_claim(claim, namespace)
        return str(found.spec.volume_name) if found.status.phase == "Bound" else None

    name = wait_until(volume_name, timeout=timeout, what=f"claim {namespace}/{claim} Bound")
    return Path(core.read_persistent_volume(name).spec.host_path.path)
