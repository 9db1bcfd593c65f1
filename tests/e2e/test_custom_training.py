"""Bring your own code, and gang restarts, on the real nodes (docs/training.md is the contract these prove).

User scripts reach Tandem's trainer image through a ConfigMap volume (spec.volumes/volumeMounts): the
digits CNN of examples/digits/train.py on two workers, whose model an InferenceService then serves, and
examples/custom/train.py, which uses nothing but torch and the trainer SDK and declares its input shape
instead of passing a sample. Then a worker's container is SIGKILLed mid-training from the host: the other
worker stops with PeerLost, the group restarts from the last checkpoint, and the retry budget pays once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import yaml
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release, service_address
from support.cluster import REPO_ROOT, wait_until
from support.digits import CPU_POOL, GPU_POOL, accuracy, predict, serving_spec, training_spec
from support.tandem import body, condition, create, wait_for
from tandem.api.artifact import EXIT_PEER_LOST
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB
from tandem.datasets import load_digits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TRAINING_TIMEOUT = 600
SCRIPTS = {"digits_cnn.py": REPO_ROOT / "examples/digits/train.py", "train.py": REPO_ROOT / "examples/custom/train.py"}
"""The scripts, under the names the ConfigMap gives them in /app."""


def scripts_config_map(kube: k8s.ApiClient, namespace: str) -> None:
    data = {name: path.read_text() for name, path in SCRIPTS.items()}
    k8s.CoreV1Api(kube).create_namespaced_config_map(
        namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "linear-script"}, "data": data}
    )


def example_held_out() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The digits examples/digits/train.py holds out and reports its accuracy on: its own split (seed 0, the
    last 357), not the built-in trainer's."""
    data = load_digits()
    test = np.random.default_rng(0).permutation(len(data))[-357:]
    return data.features[test], data.labels[test]


def on_real_nodes(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """A spec with the pool, resources and env of the real nodes (support.digits), its own fields kept."""
    real = training_spec(workers=workers)
    return {**spec, "pool": real["pool"], "resources": real["resources"], "env": real["env"], "workers": workers}


def succeeded(kube: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    def done(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        assert status.get("phase") != "Failed", f"{name} failed: {status}"
        return status.get("phase") == "Succeeded"

    finished: dict[str, Any] = wait_for(kube, TRAINING_JOB, namespace, name, done, "Succeeded", TRAINING_TIMEOUT)
    return dict(finished["status"])


def test_user_scripts_run_from_a_config_map_and_their_model_is_served(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    scripts_config_map(kube, namespace)
    example = yaml.safe_load((REPO_ROOT / "examples/custom/training.yaml").read_text())
    linear = on_real_nodes(example["spec"], workers=1)
    cnn = {
        **on_real_nodes(linear, workers=2),
        "command": ["python3", "/app/digits_cnn.py", "--epochs", "5"],
        "model": {"output": "pvc://models/cnn"},
        "checkpoint": {"uri": "pvc://models/cnn/checkpoints"},
    }
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "cnn", cnn))
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "linear", linear))

    fitted = succeeded(kube, namespace, "linear")["model"]
    assert [tensor["shape"] for tensor in fitted["inputs"]] == [[-1, 3]]  # from sampleInputShape alone
    assert fitted["metrics"]["mse"] < 1e-3
    assert models.file(fitted["uri"]).is_file()

    trained = succeeded(kube, namespace, "cnn")
    assert trained["workers"]["succeeded"] == 2
    assert models.file(trained["model"]["uri"]).is_file()
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "cnn", serving_spec("cnn", CPU_POOL)))
    ready = wait_for(
        kube,
        INFERENCE_SERVICE,
        namespace,
        "cnn",
        lambda o: (condition(o, "Ready") or {}).get("status") == "True",
        "Ready",
        180,
    )
    assert ready["status"]["model"]["sha256"] == trained["model"]["sha256"]
    pixels, labels = example_held_out()
    served = predict(service_address(kube, namespace, "cnn"), "cnn", pixels)
    assert accuracy(served, labels) >= 0.9
    assert abs(accuracy(served, labels) - trained["model"]["metrics"]["accuracy"]) <= 1.5 / len(labels)


def container_pids(pod_uid: str) -> list[int]:
    """Host PIDs of a pod's trainer processes: its cgroup names the pod UID, its environment the TrainingJob."""
    forms = (pod_uid, pod_uid.replace("-", "_"))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(form in cgroup for form in forms) and b"TANDEM_TRAININGJOB=" in environ:
            found.append(int(entry.name))
    return found


def test_a_worker_killed_mid_training_restarts_the_group_once_from_its_checkpoint(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    spec = {
        **training_spec(workers=2, args=["--epochs", "60"]),
        "model": {"output": "pvc://models/gang"},
        "checkpoint": {"uri": "pvc://models/gang/checkpoints"},
    }
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "gang", spec))
    pointer = models.file("pvc://models/gang/checkpoints/v1/latest.json")
    core = k8s.CoreV1Api(kube)

    def rank_one_pids() -> list[int] | None:
        if not pointer.exists():
            return None
        pods = core.list_namespaced_pod(namespace, label_selector="tandem.dev/trainingjob=gang").items
        victim = next(p for p in pods if p.metadata.annotations["batch.kubernetes.io/job-completion-index"] == "1")
        return container_pids(victim.metadata.uid) or None

    for pid in wait_until(rank_one_pids, timeout=TRAINING_TIMEOUT, interval=0.05, what="first checkpoint of gang"):
        os.kill(pid, signal.SIGKILL)

    status = succeeded(kube, namespace, "gang")
    assert status["workers"]["failed"] == 1  # the killed worker; its peer's PeerLost exit is not counted
    assert status["model"]["metrics"]["resumed_from_step"] > 0
    pods = core.list_namespaced_pod(namespace, label_selector="tandem.dev/trainingjob=gang").items
    exits = sorted(
        state.terminated.exit_code
        for pod in pods
        for state in [pod.status.container_statuses[0].state]
        if state.terminated is not None
    )
    assert exits == [0, 0, EXIT_PEER_LOST, 128 + signal.SIGKILL], exits
    assert {pod.spec.node_name for pod in pods} == {"real-gpu-0"}
    assert status["pool"] == GPU_POOL
