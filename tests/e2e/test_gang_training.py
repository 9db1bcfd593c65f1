"""Gangs on the real nodes: ranks that finish seconds apart all exit 0, and a gang the pool cannot hold whole
waits whole (docs/training.md, "Gangs").

The skew is forced, not hoped for: tests/trainer/scripts/skewed_teardown.py has rank 0 sleep before exporting
and again after publishing while rank 1 has nothing left to do; before the ordered teardown rank 1 left the
group and exited while rank 0 still held it, and rank 0 then died in gloo's teardown (exit 139) after
publishing. The README's example asks two workers of 2 CPUs each, and the local GPU node has 2 CPUs: it must
wait as one gang, saying why, with no worker started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release
from support.cluster import REPO_ROOT
from support.digits import training_spec
from support.tandem import body, condition, create, wait_for
from tandem.api.resources import TRAINING_JOB

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SKEWED = REPO_ROOT / "tests" / "trainer" / "scripts" / "skewed_teardown.py"


def worker_pods(kube: k8s.ApiClient, namespace: str, job: str) -> list[k8s.V1Pod]:
    pods: list[k8s.V1Pod] = k8s.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return pods


def exit_code(pod: k8s.V1Pod) -> int | None:
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated:
            return int(status.state.terminated.exit_code)
    return None


def test_ranks_that_finish_seconds_apart_succeed_with_every_pod_exiting_0(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume
) -> None:
    script = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "skew"},
              "data": {"skewed_teardown.py": SKEWED.read_text()}}  # fmt: skip
    k8s.CoreV1Api(kube).create_namespaced_config_map(namespace, script)
    spec: dict[str, Any] = {
        **training_spec(workers=2),
        "command": ["python3", "/app/skewed_teardown.py"],
        "model": {"output": "pvc://models/skew"},
        "volumes": [{"name": "code", "configMap": {"name": "skew"}}],
        "volumeMounts": [{"name": "code", "mountPath": "/app", "readOnly": True}],
    }
    spec["env"] = [*spec["env"], {"name": "SKEW_SECONDS", "value": "5"}]
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "skew", spec))

    def finished(obj: dict[str, Any]) -> bool:
        return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    done = wait_for(kube, TRAINING_JOB, namespace, "skew", finished, "the run finished", timeout=600)
    pods = worker_pods(kube, namespace, "skew-g1")
    codes = sorted((pod.metadata.name, exit_code(pod)) for pod in pods)
    assert done["status"]["phase"] == "Succeeded", (done["status"], codes)
    assert [code for _, code in codes] == [0, 0], codes
    assert done["status"]["workers"] == {"active": 0, "succeeded": 2, "failed": 0}
    assert models.file(done["status"]["model"]["uri"]).is_file()


def test_the_readme_example_waits_as_one_gang_on_a_gpu_node_with_room_for_half_of_it(
    kube: k8s.ApiClient, namespace: str, release: Release
) -> None:
    documents = list(yaml.safe_load_all(Path(REPO_ROOT / "examples/digits/training.yaml").read_text()))
    example = next(document for document in documents if document["kind"] == "TrainingJob")
    create(kube, TRAINING_JOB, namespace, example)
    waiting = wait_for(
        kube, TRAINING_JOB, namespace, "digits",
        lambda o: (condition(o, "Running") or {}).get("reason") == "WaitingForCapacity", "the gang waiting",
    )  # fmt: skip
    assert waiting["status"]["phase"] == "Queued"
    assert waiting["status"]["pool"] == "real-gpu"
    message = condition(waiting, "Running")["message"]  # type: ignore[index]
    assert "all 2 workers of cpu 2, memory 4Gi, nvidia.com/gpu 1 each" in message
    assert "real-gpu-0" in message
    assert k8s.BatchV1Api(kube).read_namespaced_job("digits-g1", namespace).spec.suspend is True
    assert worker_pods(kube, namespace, "digits-g1") == [], "part of the gang was started"
