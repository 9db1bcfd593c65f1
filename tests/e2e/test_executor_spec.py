"""The local executor's translation of pod specs into local processes, without a cluster.

These pin the kubelet semantics the executor promises (docs/executor.md): $(VAR) expansion, downward API,
path rewriting into the pod's directory, termination messages, probes and their thresholds.
"""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.devexec import podspec
from tandem.devexec.executor import Ipam
from tandem.devexec.nodes import EXECUTOR_TAINT, GPU_TAINT, default_nodes, node_body
from tandem.devexec.probes import Prober, check
from tandem.devexec.process import ContainerProcess
from tandem.devexec.runtime import ContainerRuntime, PodRuntime
from tandem.devexec.volumes import PodFilesystem, claim_dir


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "digits-g1-0-abcde",
            "namespace": "team",
            "uid": "0123456789abcdef",
            "labels": {"app": "digits"},
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "spec": {"nodeName": "local-gpu-0", **spec},
        "status": {"podIP": "127.77.0.9"},
    }


def no_keys(kind: str, name: str, key: str) -> str | None:
    return None


def no_data(kind: str, name: str) -> dict[str, str] | None:
    return None


def test_expansion_follows_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert podspec.expand("$(A)-$(B)", env) == "1-two"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(A)", env) == "$(A)"
    assert podspec.expand("cost $5 $(A", env) == "cost $5 $(A"


def test_env_resolves_in_order_with_downward_api_and_config_maps() -> None:
    container = {
        "name": "trainer",
        "env": [
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            {"name": "WHO", "value": "rank-$(RANK)-$(LATER)"},
            {"name": "LATER", "value": "x"},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }

    def keys(kind: str, name: str, key: str) -> str | None:
        return "hunter2" if (kind, name, key) == ("Secret", "s", "token") else None

    env = podspec.resolve_env(pod(), container, {"PATH": "/bin"}, keys, no_data)
    assert env["RANK"] == "1"
    assert env["WHO"] == "rank-1-$(LATER)"  # only variables defined earlier expand
    assert env["IP"] == "127.77.0.9"
    assert env["APP"] == "digits"
    assert env["TOKEN"] == "hunter2"
    assert env["CPU"] == "2"
    assert env["PATH"] == "/bin"


COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_missing_secret_is_a_spec_error_unless_optional() -> None:
    ref = {"name": "s", "key": "k"}
    with pytest.raises(podspec.SpecError, match="has no key"):
        podspec.resolve_env(pod(), {"env": [{"name": "X", "valueFrom": {"secretKeyRef": ref}}]}, {}, no_keys, no_data)
    optional = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {**ref, "optional": True}}}]}
    assert "X" not in podspec.resolve_env(pod(), optional, {}, no_keys, no_data)


def test_argv_expands_and_defaults_to_the_image_entrypoint() -> None:
    env = {"NNODES": "2"}
    assert podspec.argv({"command": ["torchrun", "--nnodes=$(NNODES)"], "args": ["x"]}, env) == [
        "torchrun",
        "--nnodes=2",
        "x",
    ]
    assert podspec.argv({"args": ["serve"]}, env) == ["tandem", "serve"]


def test_headless_service_names_become_the_peer_pods_address() -> None:
    worker = pod(hostname="digits-g1-1", subdomain="digits-g1")
    env = {"MASTER_ADDR": "digits-g1-0.digits-g1", "LR": "0.001", "OTHER": "example.com"}

    def peers(namespace: str, hostname: str, subdomain: str) -> str | None:
        return "127.77.0.2" if (namespace, hostname, subdomain) == ("team", "digits-g1-0", "digits-g1") else None

    resolved = podspec.resolve_peer_names(env, worker, peers)
    assert resolved == {**env, "MASTER_ADDR": "127.77.0.2"}
    with pytest.raises(podspec.NotYet):
        podspec.resolve_peer_names(env, worker, lambda *_: None)


def test_mounts_are_links_and_paths_into_them_are_rewritten(tmp_path: Path) -> None:
    spec = pod(
        volumes=[
            {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models"}},
            {"name": "tmp", "emptyDir": {}},
        ]
    )
    container = {
        "name": "trainer",
        "volumeMounts": [{"name": "pvc-models", "mountPath": "/mnt/pvc/models"}, {"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePath": "/dev/termination-log",
    }
    fs = PodFilesystem(tmp_path, spec)
    fs.prepare(no_data)
    fs.mount(container)
    (fs.root / "mnt/pvc/models/digits").mkdir()
    assert (claim_dir(tmp_path, "team", "models") / "digits").is_dir()  # shared by every pod of the namespace
    assert fs.localize(container, "/mnt/pvc") == str(fs.root / "mnt/pvc")
    assert fs.localize(container, "/mnt/pvc/models/digits/v1") == str(fs.root / "mnt/pvc/models/digits/v1")
    assert fs.localize(container, "/dev/termination-log") == fs.termination_file(container)
    assert fs.localize(container, "/etc/passwd") == "/etc/passwd"
    assert fs.localize(container, "pvc://models/x") == "pvc://models/x"
    assert fs.localize_argv(container, ["--out=/tmp/a", "/mnt/pvc/models"]) == [
        f"--out={fs.root}/tmp/a",
        f"{fs.root}/mnt/pvc/models",
    ]


def test_termination_message_from_the_file_or_the_log_tail(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    script = "import os,sys; open(os.environ['MSG'],'w').write('{\"sha256\": \"abc\"}'); sys.exit(0)"
    proc = ContainerProcess(
        [sys.executable, "-c", script], {"MSG": str(message)}, tmp_path, tmp_path / "a.log", message, "File"
    )
    exit_ = wait_exit(proc)
    assert (exit_.code, exit_.reason, exit_.message) == (0, "Completed", '{"sha256": "abc"}')

    message.write_text("")
    failing = ContainerProcess(
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        {},
        tmp_path,
        tmp_path / "b.log",
        message,
        "FallbackToLogsOnError",
    )
    exit_ = wait_exit(failing)
    assert (exit_.code, exit_.reason, exit_.message.strip()) == (3, "Error", "boom")


def test_sigterm_reaches_the_process_group_and_sigkill_follows(tmp_path: Path) -> None:
    stubborn = (
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    proc = ContainerProcess([sys.executable, "-c", stubborn], {}, tmp_path, tmp_path / "c.log", tmp_path / "m", "File")
    deadline = time.monotonic() + 20
    while "up" not in (tmp_path / "c.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.terminate()
    time.sleep(0.3)
    assert proc.poll() is None
    proc.kill()
    exit_ = wait_exit(proc)
    assert (exit_.code, exit_.signal, exit_.reason) == (137, 9, "Killed")


def wait_exit(proc: ContainerProcess, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while (exit_ := proc.poll()) is None:
        assert time.monotonic() < deadline, "process did not exit"
        time.sleep(0.05)
    return exit_


class Health(http.server.BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:
        self.send_response(200 if Health.ready else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.HTTPServer(("127.77.0.200", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_probe_against_the_pod_address_and_named_port(health_server: int) -> None:
    container = {"name": "server", "ports": [{"name": "http", "containerPort": health_server}]}
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "failureThreshold": 2, "periodSeconds": 1}
    Health.ready = False
    assert not check(probe, container, "127.77.0.200", {})
    Health.ready = True
    assert check(probe, container, "127.77.0.200", {})
    assert not check(probe, container, "127.77.0.201", {})  # nothing listens there


def test_probe_thresholds() -> None:
    prober = Prober({"failureThreshold": 2, "successThreshold": 1, "periodSeconds": 5, "initialDelaySeconds": 3}, 100)
    assert not prober.due(102) and prober.due(103)
    prober.record(True, 103)
    assert prober.success and prober.next_due == 108
    prober.record(False, 108)
    assert prober.success and not prober.failed  # one failure is below the threshold
    prober.record(False, 113)
    assert not prober.success and prober.failed


def test_pod_status_for_a_finished_worker(tmp_path: Path) -> None:
    from tandem.devexec.process import Exit

    spec = pod(restartPolicy="Never", containers=[{"name": "trainer", "image": "tandem-trainer:dev"}])
    spec["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    container = ContainerRuntime(spec=spec["spec"]["containers"][0], done=True)
    container.last_exit = Exit(0, None, 1.0, 2.0, '{"sha256": "abc"}')
    runtime = PodRuntime(pod=spec, ip="127.77.0.9", fs=PodFilesystem(tmp_path, spec), containers=[container])
    runtime.prepared = True
    status = runtime.status()
    assert status["phase"] == "Succeeded"
    assert status["podIP"] == "127.77.0.9"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0 and terminated["message"] == '{"sha256": "abc"}'
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")
    assert any(c["type"] == "PodScheduled" for c in status["conditions"])


def test_addresses_are_distinct_loopback_ones() -> None:
    ipam = Ipam("127.77.0.0/16")
    first, second = ipam.claim(), ipam.claim()
    assert first != second and first.startswith("127.77.")
    assert ipam.claim(first) != first  # taken
    ipam.release(first)
    assert ipam.claim(first) == first
    with pytest.raises(ValueError):
        Ipam("10.0.0.0/24")


def test_nodes_take_only_pods_that_tolerate_the_executor_taint() -> None:
    gpu, cpu = default_nodes(1, 1)
    assert node_body(gpu)["spec"]["taints"] == [GPU_TAINT, EXECUTOR_TAINT]
    assert node_body(cpu)["spec"]["taints"] == [EXECUTOR_TAINT]
    assert "kwok.x-k8s.io/node" not in node_body(gpu)["metadata"]["annotations"]
    assert gpu.resources["nvidia.com/gpu"] == "8" and "nvidia.com/gpu" not in cpu.resources
