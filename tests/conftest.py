"""Shared fixtures: one real local control plane per test session (hack/cluster.sh).

`cluster` starts it once (or reuses the one TANDEM_KUBECONFIG points at), `kube` is an ApiClient for it,
`namespace` gives each test its own namespace. Test folders add their own fixtures in their own conftest.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s

# tests/ is on sys.path (pytest's rootdir-of-conftest insertion), so helpers import as `support.*`.
from support.cluster import (
    KUEUE_BUILD_SCRIPT,
    ExternalCluster,
    LocalCluster,
    build_binaries,
    chosen,
    running,
    wait_until,
)
from support.tandem import HANDLERS, api_client, ensure_pools, install_crds

FOLDER_MARKERS: dict[str, tuple[str, ...]] = {
    "e2e": ("e2e", "cluster"),
    "integration": ("cluster",),
    "images": ("images",),
}
"""The markers every test of a folder carries, so `-m` selects by what a test needs without each file saying it."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder before `-m` selects (this hook runs before pytest's own)."""
    for item in items:
        for marker in FOLDER_MARKERS.get(item.path.parent.name, ()):
            item.add_marker(marker)


def _wants_cluster(items: list[pytest.Item]) -> bool:
    return any(item.get_closest_marker("cluster") or "cluster" in getattr(item, "fixturenames", ()) for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing control-plane binaries before any test runs.

    A cold build takes 15-30 minutes; doing it here keeps it out of the per-test timeout, and only when
    a selected test needs a cluster (uses the `cluster` fixture or is marked `cluster`); Kueue's manager
    (4-10 minutes cold) only when a selected test uses the `kueue` fixture.
    """
    if os.environ.get("TANDEM_KUBECONFIG"):
        return
    if not os.environ.get("TANDEM_BIN_DIR") and _wants_cluster(session.items):
        os.environ["TANDEM_BIN_DIR"] = str(build_binaries())
    wants_kueue = any("kueue" in getattr(item, "fixturenames", ()) for item in session.items)
    if not os.environ.get("TANDEM_KUEUE_DIR") and wants_kueue:
        os.environ["TANDEM_KUEUE_DIR"] = str(build_binaries(KUEUE_BUILD_SCRIPT))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster | ExternalCluster]:
    """The session's cluster (kwok nodes only); `.kubeconfig` is its kubeconfig path, also exported as KUBECONFIG.

    Started in a private state dir (so a developer's `hack/cluster.sh up` cluster is never touched) and
    always stopped. tests/e2e overrides it with a cluster of real nodes.
    """
    with running(chosen(lambda: tmp_path_factory.mktemp("cluster"))) as started:
        yield started


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster | ExternalCluster) -> Iterator[k8s.ApiClient]:
    """A kubernetes.client.ApiClient for the session's cluster."""
    with api_client(cluster) as api:
        yield api


@pytest.fixture
def namespace(kube: k8s.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards.

    Waits for its default ServiceAccount: the ServiceAccount admission plugin rejects pods until the
    controller-manager has created it.
    """
    core = k8s.CoreV1Api(kube)
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    wait_until(
        lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
        timeout=60,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def tandem_api(cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient) -> k8s.ApiClient:
    """The cluster with Tandem's CRDs and the gpu/cpu ComputePools installed."""
    install_crds(kube)
    ensure_pools(kube)
    return kube


@pytest.fixture
def operator(tandem_api: k8s.ApiClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator's kopf handlers running in a thread for one test, stopped (and checked) afterwards.

    `.output` holds everything the operator logged, for tests that read it.
    """
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3")
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", HANDLERS], timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]
