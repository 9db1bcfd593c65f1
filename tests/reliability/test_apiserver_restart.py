"""The kube-apiserver restarted under a running operator, on a private cluster whose etcd keeps its data.

Expected outcome: while the API server is down the operator only retries (it does not exit); once the API
server is back on the same port, the operator's watches reconnect and a TrainingJob created after the restart
gets its child Job and a current status; the one created before still has exactly one Job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from support.cluster import CLUSTER_SCRIPT, LocalCluster, pid_is_alive, port_is_open, stop_process, wait_until
from support.tandem import REPO, body, create, ensure_pools, get, install_crds
from tandem.api.resources import TRAINING_JOB

pytestmark = pytest.mark.cluster

SPEC: dict[str, Any] = {
    "model": {"output": "s3://models/rel"},
    "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
    "podMetadata": {"annotations": {"tandem.dev/fake-duration": "300s"}},
}


@pytest.fixture
def private_cluster(tmp_path: Path, cluster: object) -> Iterator[LocalCluster]:
    """A second cluster of our own (the session's `cluster` fixture only ensures the binaries exist)."""
    local = LocalCluster(tmp_path / "cluster", gpu_nodes=1, cpu_nodes=1)
    local.up()
    try:
        yield local
    finally:
        local.down()


def restart_apiserver(local: LocalCluster) -> None:
    """SIGKILL the kube-apiserver's process group and start it again with the script's own function."""
    pid = local.pids()["kube-apiserver"]
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not pid_is_alive(pid), timeout=30, what="apiserver gone")
    port = local.ports()["api"]
    wait_until(lambda: not port_is_open(port), timeout=30, what="apiserver port closed")
    script = f'source "{CLUSTER_SCRIPT}"; resolve_bin; source "$DIR/state.env"; start_apiserver'
    subprocess.run(["bash", "-c", script], env=local.env(), check=True, timeout=120)
    assert local.pids()["kube-apiserver"] != pid


def test_operator_reconnects_after_the_apiserver_restarts(private_cluster: LocalCluster, tmp_path: Path) -> None:
    """Expected: see the module docstring."""
    api = k8s_config.new_client_from_config(config_file=str(private_cluster.kubeconfig))
    install_crds(api)
    ensure_pools(api)
    namespace = "default"
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(private_cluster.kubeconfig), "TANDEM_RESYNC_SECONDS": "3"}
    with log.open("wb") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    batch = k8s.BatchV1Api(api)
    try:
        create(api, TRAINING_JOB, namespace, body(TRAINING_JOB, "before", SPEC))
        wait_until(lambda: batch.list_namespaced_job(namespace).items, timeout=60, what="the first Job")

        restart_apiserver(private_cluster)
        assert operator.poll() is None, log.read_text()[-3000:]

        create(api, TRAINING_JOB, namespace, body(TRAINING_JOB, "after", SPEC))

        def after_converged() -> bool:
            obj = get(api, TRAINING_JOB, namespace, "after")
            status = obj.get("status") or {}
            return bool(status.get("jobName")) and status.get("observedGeneration") == obj["metadata"]["generation"]

        wait_until(after_converged, timeout=120, interval=0.5, what="the TrainingJob created after the restart")
        owners = sorted(j.metadata.labels["tandem.dev/trainingjob"] for j in batch.list_namespaced_job(namespace).items)
        assert owners == ["after", "before"]
        assert operator.poll() is None, log.read_text()[-3000:]
    finally:
        stop_process(operator)
        api.close()
