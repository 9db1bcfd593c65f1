"""The operator under test: CRDs and pools installed, kopf running the real handlers in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from support.cluster import ExternalCluster, LocalCluster
from support.tandem import ensure_pools, install_crds


@pytest.fixture(scope="session")
def tandem_api(cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient) -> k8s.ApiClient:
    """The cluster with Tandem's CRDs and the gpu/cpu ComputePools installed."""
    install_crds(kube)
    ensure_pools(kube)
    return kube


@pytest.fixture
def operator(tandem_api: k8s.ApiClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator's kopf handlers running in a thread for one test, stopped (and checked) afterwards."""
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3")
    with KopfRunner(
        ["run", "--all-namespaces", "--standalone", "-m", "tandem.handlers"], timeout=60
    ) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]
