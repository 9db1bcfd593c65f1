"""Python handle on the local control plane started by hack/cluster.sh.

Tests talk to a real kube-apiserver, scheduler and controller-manager (with kwok simulating the nodes),
never to a mock; this module only starts, stops and describes such a cluster so fixtures and tests that
need a second, private cluster (e.g. to check teardown) share one implementation with the shell script.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "hack" / "cluster.sh"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-tools.sh"
KUEUE_BUILD_SCRIPT = REPO_ROOT / "hack" / "build-kueue.sh"
METRICS_BUILD_SCRIPT = REPO_ROOT / "hack" / "build-metrics.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

T = TypeVar("T")


class ClusterError(RuntimeError):
    """hack/cluster.sh failed; the message carries its output so a CI log shows why."""


def wait_until(
    check: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy and return it.

    Tests wait on observable state (a condition, a phase) instead of sleeping a fixed time, so they are
    both fast on an idle machine and patient on a loaded 2-core one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(
    proc: subprocess.Popen[str] | subprocess.Popen[bytes], grace: float = 30.0, group: bool = False
) -> None:
    """SIGTERM, as a kubelet would, then SIGKILL after `grace` seconds; a process already gone is left alone.

    With `group`, both signals go to the process group of a process started in a session of its own
    (start_new_session), so that the workers a server forks stop with it.
    """
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pid_is_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie (a zombie holds no port and no memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def build_binaries(script: Path = BUILD_SCRIPT) -> Path:
    """Build (or find cached) control-plane binaries, or Kueue's (`KUEUE_BUILD_SCRIPT`), or the metrics
    pipeline's (`METRICS_BUILD_SCRIPT`), and return their directory.

    Separate from `LocalCluster.up` so a cold build (15-30 min) can run before pytest's per-test timeout
    starts counting.
    """
    proc = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{script} failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass
class LocalCluster:
    """A cluster whose state (certificates, etcd data, pids, logs, kubeconfig) lives in `state_dir`.

    Several can run at once: each `up` picks free ports.
    """

    state_dir: Path
    gpu_nodes: int = 2
    cpu_nodes: int = 3
    real_nodes: bool = False
    """Also start the real nodes (hack/nodes.sh): one cluster on the machine at a time can have them."""
    metrics: bool = False
    """Also start the metrics pipeline (hack/lib/metrics.sh: metrics-server, Prometheus, prometheus-adapter),
    which needs the real nodes; `metrics_pipeline("up")` starts it later on a running cluster."""
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def env(self) -> dict[str, str]:
        """Environment for hack/cluster.sh (and for subprocesses that should use this cluster)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            TANDEM_CLUSTER_DIR=str(self.state_dir),
            TANDEM_GPU_NODES=str(self.gpu_nodes),
            TANDEM_CPU_NODES=str(self.cpu_nodes),
            TANDEM_REAL_NODES="1" if self.real_nodes else "0",
            TANDEM_METRICS="1" if self.metrics else "0",
            KUBECONFIG=str(self.kubeconfig),
        )
        return env

    def _run(self, command: str, timeout: float, *args: str) -> str:
        proc = subprocess.run(
            [str(CLUSTER_SCRIPT), command, *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            invocation = " ".join([command, *args])
            raise ClusterError(f"hack/cluster.sh {invocation} failed ({proc.returncode}):\n{proc.stdout}")
        return proc.stdout

    def up(self, timeout: float = 600.0) -> str:
        """Start the cluster (or keep the running one) and wait for all nodes Ready; returns the log."""
        return self._run("up", timeout)

    def down(self, timeout: float = 120.0) -> str:
        """Stop every component; the script fails if a port stays open."""
        return self._run("down", timeout)

    def kueue(self, action: str, timeout: float = 300.0) -> str:
        """Start ("up") or stop ("down") Kueue's manager in this running cluster (hack/lib/kueue.sh)."""
        return self._run("kueue", timeout, action)

    def metrics_pipeline(self, action: str, timeout: float = 600.0) -> str:
        """Start ("up") or stop ("down") the metrics pipeline in this running cluster (hack/lib/metrics.sh)."""
        return self._run("metrics", timeout, action)

    def is_running(self) -> bool:
        try:
            self._run("status", 30.0)
        except ClusterError:
            return False
        return True

    def pids(self) -> dict[str, int]:
        """Recorded pid of each component (read before `down`, which removes the records)."""
        pids = {}
        for name in COMPONENTS:
            path = self.state_dir / "pids" / f"{name}.pid"
            if path.exists():
                pids[name] = int(path.read_text().strip())
        return pids

    def ports(self, state_file: str = "state.env") -> dict[str, int]:
        """Ports the components listen on, from state.env (or the metrics pipeline's, metrics/state.env)."""
        state = self.state_dir / state_file
        ports = {}
        for line in state.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.endswith("_PORT"):
                ports[key.removesuffix("_PORT").lower()] = int(value)
        return ports

    def __enter__(self) -> LocalCluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


@dataclass
class ExternalCluster:
    """A cluster someone else runs (TANDEM_KUBECONFIG): used as is, never stopped by the tests."""

    kubeconfig: Path


def chosen(state_dir: Callable[[], Path], **options: Any) -> LocalCluster | ExternalCluster:
    """The cluster TANDEM_KUBECONFIG names, else a local one to start in `state_dir()` with `options`."""
    external = os.environ.get("TANDEM_KUBECONFIG")
    return ExternalCluster(Path(external)) if external else LocalCluster(state_dir(), **options)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def running(handle: LocalCluster | ExternalCluster) -> Iterator[LocalCluster | ExternalCluster]:
    """Start a local cluster (an external one is used as is), export KUBECONFIG, and always stop it.

    Stopped on failure, on Ctrl-C (pytest runs fixture teardown) and, as a last resort, at exit.
    """
    previous = os.environ.get("KUBECONFIG")
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if isinstance(handle, LocalCluster) and not stopped:
            stopped = True
            handle.down()

    atexit.register(stop)
    # `timeout pytest ...` and CI cancellations send SIGTERM, which would skip teardown and leave the
    # components running: turn it into the KeyboardInterrupt pytest already tears down on.
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    if previous_sigterm == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        if isinstance(handle, LocalCluster):
            handle.up()
        os.environ["KUBECONFIG"] = str(handle.kubeconfig)
        yield handle
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        stop()
        atexit.unregister(stop)
        if previous_sigterm == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
