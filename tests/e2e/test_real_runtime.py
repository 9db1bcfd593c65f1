"""What the real runtime enforces and reports, seen through Tandem: security context, memory limits, exits,
and a node drain against a service's disruption budget.

These are the failures a process harness hid: a container that cannot write its root filesystem, a kernel
OOM kill, the termination message a real kubelet copies into pod status, and the Job controller applying
the podFailurePolicy to a real container's exit code.
"""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release
from support.cluster import wait_until
from support.digits import CPU_POOL, GPU_POOL, training_spec
from support.models import tiny_model
from support.tandem import body, condition, create, get, wait_for
from support.tools import run, tool
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB

pytestmark = pytest.mark.timeout(600)


def finished(api: k8s.ApiClient, namespace: str, name: str, timeout: float = 300) -> dict[str, Any]:
    done = ("Succeeded", "Failed")
    return wait_for(
        api, TRAINING_JOB, namespace, name, lambda o: (o.get("status") or {}).get("phase") in done, "finished", timeout
    )


def worker_pods(api: k8s.ApiClient, namespace: str, name: str) -> list[Any]:
    pods: list[Any] = (
        k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"tandem.dev/trainingjob={name}").items
    )
    return pods


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = tool("kubectl")
    assert binary is not None, "kubectl not found: run hack/build-tools.sh"
    return run([binary, *args], check=False, timeout=60)


def test_a_worker_runs_as_65532_on_a_read_only_root_with_a_writable_tmp(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    """Checked from inside the running trainer container with `kubectl exec` (through the real kubelet)."""
    spec = training_spec(workers=1, pool=GPU_POOL)
    spec["command"] = ["python3", "-c", "import time; time.sleep(600)"]
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "idle", spec))
    pod = wait_until(
        lambda: next((p for p in worker_pods(kube, namespace, "idle") if p.status.phase == "Running"), None),
        timeout=120,
        what="worker Running",
    )
    probe = (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as exc:\n    print('root:', exc.strerror)\n"
        "open('/tmp/probe', 'w').write('ok')\nprint('tmp: writable')\n"
    )
    out = kubectl("exec", "-n", namespace, pod.metadata.name, "-c", "trainer", "--", "python3", "-c", probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["65532 65532", "root: Read-only file system", "tmp: writable"]


def test_a_worker_over_its_memory_limit_is_oom_killed_and_the_status_says_so(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    spec = training_spec(workers=1, pool=GPU_POOL)
    spec["resources"]["memory"] = "48Mi"  # importing torch alone needs several times that
    spec["backoffLimit"] = 0
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "tight", spec))
    status = finished(kube, namespace, "tight")["status"]
    assert status["phase"] == "Failed"
    [pod] = worker_pods(kube, namespace, "tight")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    failed = condition(get(kube, TRAINING_JOB, namespace, "tight"), "Failed") or {}
    assert "worker 0 was OOMKilled (exit code 137)" in failed.get("message", ""), failed


def test_a_permanent_trainer_failure_fails_the_run_at_once_with_its_termination_message(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    """A missing dataset exits 3 (EXIT_PERMANENT); with backoffLimit 3 the podFailurePolicy still ends the Job
    after the first pod, and the trainer's own words travel from its termination file to the status."""
    spec = training_spec(workers=1, pool=GPU_POOL, args=["--data", "pvc://models/no-such-digits.csv"])
    spec["backoffLimit"] = 3
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "nodata", spec))
    obj = finished(kube, namespace, "nodata")
    assert obj["status"]["phase"] == "Failed"
    pods = worker_pods(kube, namespace, "nodata")
    assert len(pods) == 1, [p.metadata.name for p in pods]  # no retry
    assert pods[0].status.container_statuses[0].state.terminated.exit_code == 3
    failed = condition(obj, "Failed") or {}
    assert failed.get("reason") == "PodFailurePolicy", failed
    message = failed.get("message", "")
    assert message.startswith("worker 0 exited with code 3: "), message
    assert "no-such-digits.csv" in message, message


def test_a_drain_never_takes_the_only_ready_replica_and_says_why(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    data = tiny_model()
    (models.path / "tiny.onnx").write_bytes(data)
    spec = {
        "model": {"uri": f"pvc://{models.claim}/tiny.onnx", "sha256": hashlib.sha256(data).hexdigest()},
        "pool": CPU_POOL,
        "replicas": {"min": 1, "max": 1},
        "resources": {"cpu": "250m", "memory": "512Mi"},
    }
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "solo", spec))
    wait_for(
        kube,
        INFERENCE_SERVICE,
        namespace,
        "solo",
        lambda o: (condition(o, "Ready") or {}).get("status") == "True",
        "Ready",
        180,
    )
    core = k8s.CoreV1Api(kube)
    [pod] = core.list_namespaced_pod(namespace, label_selector="tandem.dev/inferenceservice=solo").items
    try:
        drain = kubectl(
            "drain",
            pod.spec.node_name,
            "--pod-selector",
            "tandem.dev/inferenceservice=solo",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout",
            "20s",
        )
        assert drain.returncode != 0, drain.stdout
        assert "would violate the pod's disruption budget" in drain.stdout + drain.stderr, drain.stderr
    finally:
        kubectl("uncordon", pod.spec.node_name)
    after = core.read_namespaced_pod(pod.metadata.name, namespace)
    assert after.metadata.deletion_timestamp is None
    assert any(c.type == "Ready" and c.status == "True" for c in after.status.conditions)
