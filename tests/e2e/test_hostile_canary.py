"""A tenant's canary that answers the operator's metrics scrape with hostility, on the real nodes (issue 27).

A tenant chooses an InferenceService's image. Here it is hostile_metrics_server.py on the images' Debian base:
Ready on its HTTP port, and on its metrics port, in turn, a redirect (to a listener of this test, where a
followed redirect would arrive), a 1 GiB body, a body that drips a byte a second, and garbage. Under trial, the
operator installed by the chart must read none of it into memory, follow nothing, keep reconciling another
tenant's service as usual, and end the trial the way it ends one whose figures cannot be read: rolled back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release
from e2e.test_canary import put
from support.cluster import wait_until
from support.digits import CPU_POOL
from support.models import tiny_model
from support.tandem import body, condition, create, patch_spec, wait_for
from support.tools import run
from tandem.api.resources import INFERENCE_SERVICE

pytestmark = pytest.mark.timeout(600)

HOSTILE_IMAGE = "localhost/tandem-hostile-canary:test"
SCRIPT = Path(__file__).with_name("hostile_metrics_server.py")
NODE_SOCKETS = Path("/run/tandem-nodes")
HOST_ON_CPU_BRIDGE = "10.88.1.1"
"""This machine's address on the CPU node's bridge (hack/nodes.sh): pods reach it, and so does a redirect."""
WINDOW_S = 40
MiB = 1 << 20


@pytest.fixture(scope="module")
def hostile_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The hostile server on the Debian base that hack/images.sh built, imported into every real node."""
    bases = [name for name in run(["buildah", "images", "--format", "{{.Name}}:{{.Tag}}"], timeout=300).stdout.split()
             if name.startswith("localhost/tandem-base:")]
    assert bases, "no tandem-base image: run hack/images.sh build"
    container = run(["buildah", "from", "--quiet", "--pull=never", bases[0]], timeout=300).stdout.strip()
    # A replica's container runs `tandem serve` in whatever image the tenant names: here that is the script.
    run(["buildah", "copy", "--quiet", "--chmod", "0755", container, SCRIPT, "/usr/local/bin/tandem"], timeout=300)
    run(["buildah", "config", "--user", "65532:65532", "--env", "PATH=/usr/local/bin:/usr/bin:/bin",
         "--entrypoint", '["tandem"]', "--cmd", '["serve"]', container], timeout=300)
    run(["buildah", "commit", "--quiet", "--rm", container, HOSTILE_IMAGE], timeout=300)
    archive = tmp_path_factory.mktemp("hostile") / "hostile.tar"
    run(["buildah", "push", "--quiet", HOSTILE_IMAGE, f"oci-archive:{archive}:{HOSTILE_IMAGE}"], timeout=300)
    for sock in NODE_SOCKETS.glob("*/containerd.sock"):
        run(["ctr", "--address", sock, "--namespace", "k8s.io", "images", "import", archive], timeout=300)
    return HOSTILE_IMAGE


class Listener(threading.Thread):
    """Counts the connections that arrive at a port of this machine: where a followed redirect would go."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        # Bound to the kernel's pick directly: a port probed free on loopback may be taken on another address.
        self.sock = socket.create_server(("0.0.0.0", 0))
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0

    def run(self) -> None:
        while True:
            try:
                accepted, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            accepted.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    started = Listener()
    started.start()
    yield started
    started.sock.close()


def operator_rss() -> int:
    """VmRSS of the operator's process (`tandem operator` in the chart's pod), read from this machine's /proc."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if "operator" in map(bytes.decode, args) and any(arg.endswith(b"/tandem") for arg in args):
                status = (proc / "status").read_text()
                return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024
        except (OSError, StopIteration, UnicodeDecodeError):
            continue
    raise AssertionError("no `tandem operator` process on this machine")


def ready(obj: dict[str, Any]) -> bool:
    return (condition(obj, "Ready") or {}).get("status") == "True"


def test_a_hostile_canary_is_rolled_back_unread_and_the_operator_serves_everyone_else_as_usual(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume, release: Release, hostile_image: str,
    listener: Listener,
) -> None:
    first, second = put(models, "v1.onnx", tiny_model(0)), put(models, "v2.onnx", tiny_model(1))
    spec = {
        "model": first,
        "image": hostile_image,
        "env": [{"name": "HOSTILE_REDIRECT", "value": f"{HOST_ON_CPU_BRIDGE}:{listener.port}"}],
        "pool": CPU_POOL,
        "replicas": {"min": 1, "max": 1},
        "resources": {"cpu": "100m", "memory": "128Mi"},
        "rollout": {"canaryPercent": 50, "canarySeconds": WINDOW_S, "maxErrorRate": 0.05},
    }
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "hostile", spec))
    wait_for(kube, INFERENCE_SERVICE, namespace, "hostile", ready, "the hostile image Ready", timeout=180)
    before = operator_rss()

    patch_spec(kube, INFERENCE_SERVICE, namespace, "hostile", {"model": second})
    core = k8s.CoreV1Api(kube)
    selector = "tandem.dev/inferenceservice=hostile,tandem.dev/track=canary"
    wait_until(lambda: any(p.status.phase == "Running" for p in core.list_namespaced_pod(namespace,
               label_selector=selector).items), timeout=180, what="the hostile canary running")

    started = time.monotonic()
    bystander = {"model": first, "pool": CPU_POOL, "resources": {"cpu": "100m", "memory": "256Mi"}}
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "bystander", bystander))
    wait_for(kube, INFERENCE_SERVICE, namespace, "bystander", ready, "another tenant's service Ready", timeout=180)
    bystander_s = time.monotonic() - started

    rolled = wait_for(kube, INFERENCE_SERVICE, namespace, "hostile",
                      lambda o: (condition(o, "Canary") or {}).get("reason") == "RolledBack", "rolled back",
                      timeout=WINDOW_S + 180)
    after = operator_rss()
    message = (condition(rolled, "Canary") or {}).get("message", "")
    print(f"\nbystander Ready {bystander_s:.0f}s after creation during the trial; operator RSS {before / MiB:.0f} "
          f"-> {after / MiB:.0f} MiB; redirect target contacted {listener.connections} times; canary: {message}")

    assert listener.connections == 0
    assert after - before < 64 * MiB
    assert rolled["status"]["model"]["sha256"] == first["sha256"]
    (operator_pod,) = core.list_namespaced_pod(release.namespace, label_selector="app.kubernetes.io/name=tandem").items
    assert operator_pod.status.container_statuses[0].restart_count == 0
