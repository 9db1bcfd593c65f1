"""The operator image against the local control plane: it reaches the API server with a kubeconfig,
reconciles, and a SIGTERM (what the kubelet sends first) ends it cleanly and promptly."""

from __future__ import annotations

import contextlib
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from images.conftest import Image, Pod, logs, podman, remove, state
from support.cluster import LocalCluster, free_port, wait_until
from support.tandem import body, create, get
from tandem.api.resources import COMPUTE_POOL, GROUP, VERSION

pytestmark = pytest.mark.cluster


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_operator_image_reconciles_against_the_api_server_and_stops_on_sigterm(
    images: dict[str, Image], cluster: LocalCluster, tandem_api: k8s.ApiClient, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(Path(cluster.kubeconfig).read_bytes())
    kubeconfig.chmod(0o644)  # the container runs as 65532, not as the file's owner
    health, metrics = free_port(), free_port()
    name = f"image-{uuid.uuid4().hex[:6]}"
    container = Pod(images["operator"], memory="512m", network="host").start(
        "operator", f"--health-port={health}", f"--metrics-port={metrics}",
        volumes={kubeconfig: "/etc/tandem/kubeconfig:ro"}, env={"KUBECONFIG": "/etc/tandem/kubeconfig"},
    )
    try:
        wait_until(lambda: healthy(health) or not state(container)["Running"], timeout=120,
                   what="the operator container's /healthz")
        assert state(container)["Running"], logs(container)
        # A pool created now is reconciled by the operator in the container: its status counts the CPU nodes.
        spec = {"nodeSelector": {"tandem.dev/pool": "cpu"}, "role": "serving"}
        create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, name, spec))
        pool = wait_until(lambda: (get(tandem_api, COMPUTE_POOL, None, name).get("status") or {}).get("nodes"),
                          timeout=60, what=f"ComputePool {name} status from the containerised operator")
        assert pool > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
            assert b"tandem_" in answer.read()
        started = time.monotonic()
        podman("stop", "--time", "30", container)  # SIGTERM, then SIGKILL after 30 s as a kubelet would
        stopped_after = time.monotonic() - started
        final = state(container)
        assert final["ExitCode"] == 0, logs(container)
        assert stopped_after < 25, f"took {stopped_after:.0f} s: SIGTERM was not handled"
        assert "Traceback" not in logs(container)
    finally:
        remove(container)
        with contextlib.suppress(ApiException):  # not created if the operator never became healthy
            k8s.CustomObjectsApi(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, name)
