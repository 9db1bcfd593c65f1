"""`hack/cluster.sh down` leaves nothing of the real nodes behind, even with pods running on them.

The real nodes change the machine (links, iptables chains, cgroups, mount namespaces, ip_forward, kubelet
and containerd processes and ports); a teardown that forgets one breaks the next cluster or the machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from support.cluster import REPO_ROOT, LocalCluster, pid_is_alive, port_is_open, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODES_SCRIPT = REPO_ROOT / "hack" / "nodes.sh"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that name `path`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(path) in cmdline and pid_is_alive(int(proc.name)):
            found.append(cmdline)
    return found


def sleeper(node: str) -> dict[str, Any]:
    """A pod on one real node: a sandbox, a veth, cgroups and a container process for down to remove."""
    tolerations = [
        {"key": "tandem.dev/real-node", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists"},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"sleeper-{node}"},
        "spec": {
            "nodeName": node,
            "tolerations": tolerations,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "sleep",
                    "image": "localhost/tandem-server:0.1.0",
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", "import time; time.sleep(3600)"],
                }
            ],
        },
    }


def test_down_removes_every_trace_of_the_real_nodes(tmp_path: Path) -> None:
    if subprocess.run(["ip", "link", "show", "tandem-api"], capture_output=True).returncode == 0:
        pytest.skip("another cluster on this machine runs real nodes (link tandem-api exists)")
    forward_before = IP_FORWARD.read_text()
    cluster = LocalCluster(tmp_path / "real", gpu_nodes=0, cpu_nodes=0, real_nodes=True)
    nodes_dir = cluster.state_dir / "nodes"
    try:
        cluster.up()
        api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        core = k8s.CoreV1Api(api)
        for node in ("real-gpu-0", "real-cpu-0"):
            core.create_namespaced_pod("default", sleeper(node))
        wait_until(
            lambda: all(p.status.phase == "Running" for p in core.list_namespaced_pod("default").items),
            timeout=120,
            what="a running pod on each real node",
        )
        pids = [int(path.read_text()) for path in (nodes_dir / "pids").glob("*.pid")]
        # The kubelets' healthz ports (127.0.0.1); their serving ports are on the bridges, gone with them.
        ports = [int(path.read_text().split()[1]) for path in nodes_dir.glob("*/ports")]
        assert len(pids) == 6  # two containerds, two kubelets, kube-proxy, the volume provisioner
        assert all(pid_is_alive(pid) for pid in pids) and all(port_is_open(port) for port in ports)
        api.close()
    finally:
        cluster.down()
    leftovers = subprocess.run([str(NODES_SCRIPT), "leftovers"], env=cluster.env(), capture_output=True, text=True)
    assert (leftovers.returncode, leftovers.stdout) == (0, ""), leftovers.stdout + leftovers.stderr
    assert [pid for pid in pids if pid_is_alive(pid)] == []
    assert processes_naming(cluster.state_dir) == []  # children too: the provisioner's kubectl watches
    assert [port for port in ports if port_is_open(port)] == []
    assert IP_FORWARD.read_text() == forward_before
