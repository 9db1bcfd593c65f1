"""End-to-end fixtures: a cluster with real nodes, Tandem installed on it by its Helm chart, model storage.

The e2e tests run on their own local cluster (hack/cluster.sh with real nodes, no kwok nodes), started
for this package and stopped after it: pods run in real containers from the images hack/images.sh built,
the operator runs in its own pod under the chart's ServiceAccount, and clients reach workloads through
Services and kube-proxy.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import ExternalCluster, LocalCluster, chosen, running, wait_until
from support.digits import MODEL_CLAIM, RELEASE_VALUES, bound_directory, model_claim
from support.tandem import api_client
from support.tools import run, tool

RELEASE = "tandem"
RELEASE_NAMESPACE = "tandem-system"
CHART = Path(__file__).resolve().parents[2] / "charts" / "tandem"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `last` move behind this package's other tests, still inside the package, so its cluster
    and release are the ones the other tests used."""
    here = Path(__file__).parent
    last = [item for item in items if item.get_closest_marker("last") and item.path.parent == here]
    rest = [item for item in items if item not in last]
    ours = [index for index, item in enumerate(rest) if item.path.parent == here]
    if last and ours:
        items[:] = rest[: ours[-1] + 1] + last + rest[ours[-1] + 1 :]


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | ExternalCluster]:
    """A local cluster of two real nodes (real-gpu-0, real-cpu-0) for this package, or TANDEM_KUBECONFIG's."""
    handle = chosen(lambda: tmp_path_factory.mktemp("real-cluster"), gpu_nodes=0, cpu_nodes=0, real_nodes=True)
    with running(handle) as started:
        yield started


@pytest.fixture(scope="package")
def kube(cluster: LocalCluster | ExternalCluster) -> Iterator[k8s.ApiClient]:
    """The root conftest's `kube`, again at package scope: a session-scoped one cannot use this package's cluster."""
    with api_client(cluster) as api:
        yield api


def helm(*args: str, timeout: float = 600) -> str:
    """Run helm (hack/build-tools.sh builds it); fail with its output."""
    binary = tool("helm")
    assert binary is not None, "helm not found: run hack/build-tools.sh"
    return run([binary, *args], timeout=timeout).stdout


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    def operator_log(self, kube: k8s.ApiClient, lines: int = 200) -> str:
        """The end of the operator pods' logs (through the kubelet, as `kubectl logs` reads them)."""
        core = k8s.CoreV1Api(kube)
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector="app.kubernetes.io/name=tandem").items
            return "\n".join(
                core.read_namespaced_pod_log(pod.metadata.name, self.namespace, tail_lines=lines) for pod in pods
            )
        except ApiException as exc:
            return f"(no operator log: {exc.reason})"


@pytest.fixture(scope="package")
def release(kube: k8s.ApiClient) -> Iterator[Release]:
    """`helm install` of charts/tandem with the real nodes' values (hack/node/tandem-values.yaml), waited on."""
    installed = Release(RELEASE, RELEASE_NAMESPACE)
    try:
        helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--values",
            str(RELEASE_VALUES),
            "--wait",
            "--timeout",
            "5m",
        )
        yield installed
    finally:
        print(f"--- operator log (tail) ---\n{installed.operator_log(kube)}")
        helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "3m")


@dataclass(frozen=True)
class ModelVolume:
    """The claim `models` of a test namespace and the directory behind its volume (what the nodes mount)."""

    claim: str
    path: Path

    def file(self, uri: str) -> Path:
        """The file a pvc://models/... URI names."""
        return self.path / uri.removeprefix(f"pvc://{self.claim}/")


@pytest.fixture
def models(kube: k8s.ApiClient, namespace: str) -> ModelVolume:
    """The claim `models` in the test's namespace, bound by the cluster's default StorageClass."""
    k8s.CoreV1Api(kube).create_namespaced_persistent_volume_claim(namespace, model_claim())
    return ModelVolume(MODEL_CLAIM, bound_directory(kube, namespace))


def service_address(api: k8s.ApiClient, namespace: str, name: str, timeout: float = 60) -> str:
    """The Service's ClusterIP and port, once it answers a readiness check from this machine.

    Ready replicas are not yet a reachable Service: the EndpointSlice and kube-proxy's rules follow a moment
    later, and until then the ClusterIP refuses connections (a CI run's load saw 72 refusals in that window).
    """
    service = k8s.CoreV1Api(api).read_namespaced_service(name, namespace)
    port = next(p.port for p in service.spec.ports if p.name == "http")
    address = f"{service.spec.cluster_ip}:{port}"
    wait_until(lambda: _answers_ready(service.spec.cluster_ip, port), timeout=timeout, what=f"{address} answering")
    return address


def _answers_ready(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", "/v2/health/ready")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


TINY_REQUEST = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})
"""One infer request for support.models.tiny_model and the models of its signature."""


class Load(threading.Thread):
    """Infer requests back to back through the Service's ClusterIP from `workers` threads, a new connection
    for each request, so kube-proxy spreads them over every ready replica."""

    def __init__(self, address: str, model: str, workers: int = 4, request: str = TINY_REQUEST) -> None:
        super().__init__(daemon=True)
        self.request = request
        self.host, port = address.split(":")
        self.port = int(port)
        self.path = f"/v2/models/{model}/infer"
        self.workers = workers
        self.stop = threading.Event()
        self.answered = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def failure_kinds(self) -> list[tuple[str, int]]:
        """The commonest failures (an HTTP status, or the client's exception), with their counts."""
        return Counter(self.failures).most_common(3)

    def _send(self) -> None:
        while not self.stop.is_set():
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                connection.connect()
                # Closed with a reset, not into TIME_WAIT: a replica answering 500 at once would otherwise let
                # two threads use up this machine's ephemeral ports in a minute (EADDRNOTAVAIL in a run).
                connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.request("POST", self.path, self.request, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                with self._lock:
                    if response.status == 200:
                        self.answered += 1
                    else:
                        self.failures.append(f"HTTP {response.status}")
            except OSError as exc:
                with self._lock:
                    self.failures.append(repr(exc))
            finally:
                connection.close()

    def run(self) -> None:
        threads = [threading.Thread(target=self._send, daemon=True) for _ in range(self.workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)
