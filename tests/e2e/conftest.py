"""End-to-end fixtures: the local executor on the session cluster, pools on its nodes, and the operator.

The executor is a subprocess (as a node agent would be); the operator runs in-process under KopfRunner,
as in the integration tests.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import ExternalCluster, LocalCluster, wait_until
from support.tandem import body, create, install_crds, resource_api
from tandem.api.resources import COMPUTE_POOL, GROUP, VERSION
from tandem.devexec.digits import local_pools

NODES = ("local-gpu-0", "local-cpu-0")


@dataclass
class LocalExecutor:
    """The running executor: where its pods' directories and logs are, and its own log."""

    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.state_dir / "pvc" / namespace / claim

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def node_ready(core: k8s.CoreV1Api, name: str) -> bool:
    try:
        node: Any = core.read_node(name)
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


@pytest.fixture(scope="session")
def local_executor(
    cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalExecutor]:
    """`python -m tandem.devexec` serving local-gpu-0 and local-cpu-0; stopped (nodes removed) afterwards."""
    state = tmp_path_factory.mktemp("devexec")
    log_path = state / "executor.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tandem.devexec",
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--state-dir",
                str(state),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    executor = LocalExecutor(state, log_path, process)
    core = k8s.CoreV1Api(kube)
    try:
        wait_until(lambda: all(node_ready(core, n) for n in NODES), timeout=60, what="executor nodes Ready")
        yield executor
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        print(f"--- executor log ({log_path}) ---\n{executor.log_tail()}")


@pytest.fixture(scope="session")
def local_pools_installed(kube: k8s.ApiClient, local_executor: LocalExecutor) -> Iterator[list[str]]:
    """CRDs, and the local-gpu / local-cpu ComputePools on the executor's nodes (removed afterwards)."""
    install_crds(kube)
    names = []
    for name, spec in local_pools().items():
        try:
            create(kube, COMPUTE_POOL, None, body(COMPUTE_POOL, name, spec))
        except ApiException as exc:
            if exc.status != 409:
                raise
        names.append(name)
    yield names
    for name in names:
        try:
            resource_api(kube).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def e2e_operator(local_pools_installed: list[str]) -> Iterator[KopfRunner]:
    """The operator's handlers in a thread for one test, checked for a clean exit afterwards."""
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", "tandem.handlers"], timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]
