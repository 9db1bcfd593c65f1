"""Fixtures for the reliability suite: Tandem installed on the session cluster, the operator in-process.

The same fixtures as tests/integration (kept here so this folder runs on its own); `operator` yields the
KopfRunner, whose `.output` holds everything the operator logged, for the tests that grep it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from support.cluster import ExternalCluster, LocalCluster, wait_until
from support.tandem import REPO, ensure_pools


def install_crds(api: k8s.ApiClient) -> None:
    """Apply the generated CRDs (only the CustomResourceDefinition files of manifests/crds) and wait until
    they are Established. Server-side apply, so a concurrent install by another suite does not conflict."""
    from kubernetes import dynamic

    client = dynamic.DynamicClient(api)
    crds = client.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    for path in sorted((REPO / "manifests" / "crds").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if document.get("kind") != "CustomResourceDefinition":
            continue  # the kustomization.yaml
        name = document["metadata"]["name"]
        crds.server_side_apply(body=document, name=name, field_manager="tandem-tests", force_conflicts=True)

        def established(crd_name: str = name) -> bool:
            conditions = crds.get(name=crd_name).to_dict().get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_until(established, timeout=60, what=f"CRD {name} established")


@pytest.fixture(scope="session")
def tandem_api(cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient) -> k8s.ApiClient:
    """The cluster with Tandem's CRDs and the gpu/cpu ComputePools installed."""
    install_crds(kube)
    ensure_pools(kube)
    return kube


@pytest.fixture
def operator(tandem_api: k8s.ApiClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator's kopf handlers in a thread for one test; it must stop cleanly afterwards."""
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3")
    with KopfRunner(["run", "--all-namespaces", "--standalone", "-m", "tandem.handlers"], timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]
