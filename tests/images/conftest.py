"""Fixtures for the image tests: the images of this tree (built or reused by hack/images.sh) and a podman
that runs them as a kubelet would run Tandem's pods: uid 65532, read-only root filesystem, a tmpfs at /tmp
standing in for the emptyDir, all capabilities dropped, no privilege escalation and a memory limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))


@dataclass(frozen=True)
class Image:
    name: str
    ref: str
    archive: Path


def podman_env() -> dict[str, str]:
    """podman with the sandbox's containers.conf, as hack/images.sh sets it up."""
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers" / "containers.conf")}


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # conmon drops an `oom` marker file in its working directory when a container is OOM-killed.
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout,
                          cwd=CACHE / "containers")
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Pod:
    """Runs an image the way Tandem's pods run: the same restrictions every workload pod gets."""

    image: Image
    memory: str = "1g"
    network: str = "none"
    entrypoint: str | None = None

    def options(self, volumes: dict[Path, str], env: dict[str, str], name: str) -> list[str]:
        args = ["--entrypoint", self.entrypoint] if self.entrypoint else []
        args += [
            "--name", name, "--user", "65532:65532", "--read-only", "--read-only-tmpfs=false",
            "--tmpfs", "/tmp:rw,mode=1777,size=512m", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--memory", self.memory, "--memory-swap", self.memory, f"--network={self.network}",
        ]
        for source, target in volumes.items():
            args += ["--volume", f"{source}:{target}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        return args

    def run(
        self, *command: str, volumes: dict[Path, str] | None = None, env: dict[str, str] | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; returns the finished process (exit code, stdout, stderr) without judging it."""
        name = f"tandem-test-{uuid.uuid4().hex[:8]}"
        options = self.options(volumes or {}, env or {}, name)
        return podman("run", "--rm", *options, self.image.ref, *command, check=False, timeout=timeout)

    def start(self, *command: str, volumes: dict[Path, str] | None = None, env: dict[str, str] | None = None) -> str:
        """Start detached; returns the container's name. `stop()` it."""
        name = f"tandem-test-{uuid.uuid4().hex[:8]}"
        podman("run", "--detach", *self.options(volumes or {}, env or {}, name), self.image.ref, *command)
        return name


def state(container: str) -> dict[str, object]:
    """podman's State of a container: Running, ExitCode, OOMKilled..."""
    result: dict[str, object] = json.loads(podman("inspect", "--format", "{{json .State}}", container).stdout)
    return result


def logs(container: str) -> str:
    proc = podman("logs", container, check=False)
    return proc.stdout + proc.stderr


def remove(container: str) -> None:
    podman("rm", "--force", "--time", "0", container, check=False)


@pytest.fixture(scope="session")
def images() -> dict[str, Image]:
    """The four images of this tree, built by the documented entry point (seconds when nothing changed)."""
    if os.geteuid() != 0:
        pytest.skip("building and running the images needs root (mmdebstrap, buildah, podman)")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.skip("no podman and no apt-get to install it")
    proc = subprocess.run([str(REPO / "hack" / "images.sh"), "build"], capture_output=True, text=True,
                          timeout=3600, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"hack/images.sh build exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    built = {}
    for line in proc.stdout.splitlines():
        name, ref, archive = line.split()
        built[name] = Image(name, ref, Path(archive))
    assert set(built) == {"operator", "trainer", "server", "server-gpu"}, proc.stdout
    return built


@pytest.fixture
def writable_dir(tmp_path: Path) -> Iterator[Path]:
    """A host directory that uid 65532 may write, as a volume the pod owns."""
    folder = tmp_path / "volume"
    folder.mkdir()
    os.chown(folder, 65532, 65532)
    yield folder
