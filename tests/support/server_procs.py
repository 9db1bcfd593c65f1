"""Running `tandem serve` for real: a subprocess on a free loopback port, as the operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from support.cluster import free_port


def start(
    model: Path,
    *,
    name: str = "linear",
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    output: IO[bytes] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `tandem serve` with `args` after the command; its stdout and stderr go to pipes, or to `output`."""
    port = free_port()
    environment = {
        **os.environ,
        "TANDEM_MODEL_NAME": name,
        "TANDEM_MODEL_URI": model.as_uri(),
        "TANDEM_HTTP_PORT": str(port),
        "TANDEM_GRPC_PORT": str(free_port()),
        "TANDEM_METRICS_PORT": str(free_port()),
        "TANDEM_HOST": "127.0.0.1",
        "TANDEM_THREADS": "1",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", "from tandem.cli import main; main()", "serve", *args],
        env=environment,
        stdout=output or subprocess.PIPE,
        stderr=output or subprocess.PIPE,
    )
    return process, port


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited {process.returncode}: {process.stderr.read() if process.stderr else ''!r}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError("server not ready")


@contextmanager
def serving(model: Path, **kwargs: object) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    process, port = start(model, **kwargs)  # type: ignore[arg-type]
    try:
        wait_ready(process, port)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)
