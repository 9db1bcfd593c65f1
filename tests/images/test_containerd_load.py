"""The archives load into containerd, the runtime a kubelet drives, under both tags the chart and tests use."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.conftest import REPO, Image
from support.cluster import stop_process, wait_until

CONFIG = """
version = 2
root = "{state}/root"
state = "{state}/state"
# Image import needs content and snapshots only: no CRI, so no CNI and nothing on the network.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{state}/containerd.sock"
"""


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[Path]:
    """A private containerd (own root, state and socket; hack/images.sh installed it), stopped afterwards."""
    state = tmp_path / "containerd"
    state.mkdir()
    config = state / "config.toml"
    config.write_text(CONFIG.format(state=state))
    socket = state / "containerd.sock"
    with (state / "log").open("w") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: socket.exists() or process.poll() is not None, timeout=60, what="containerd's socket")
        assert process.poll() is None, (state / "log").read_text()[-3000:]
        yield socket
    finally:
        stop_process(process)


def test_server_archive_loads_into_containerd_under_its_version_and_content_tags(
    images: dict[str, Image], containerd: Path
) -> None:
    proc = subprocess.run([str(REPO / "hack" / "images.sh"), "load", "--containerd", str(containerd), "server"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = subprocess.run(["ctr", "--address", str(containerd), "--namespace", "k8s.io", "images", "list", "-q"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert images["server"].ref in listed
    assert "localhost/tandem-server:0.1.0" in listed
    # Unpacked into the snapshotter: a kubelet with imagePullPolicy Never can start it straight away.
    check = subprocess.run(["ctr", "--address", str(containerd), "--namespace", "k8s.io", "images", "check",
                            f"name=={images['server'].ref}"], capture_output=True, text=True, check=True).stdout
    assert "complete" in check
