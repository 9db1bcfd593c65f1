"""One container as a local process group: start, signal, reap, and its termination message.

Each container runs in its own session (`start_new_session`) so SIGTERM and SIGKILL reach everything it
started (torchrun's children, for instance), as a container runtime's stop would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MESSAGE_LIMIT = 4096
"""Kubelet's limit on a termination message."""
LOG_TAIL_LINES = 80
LOG_TAIL_BYTES = 2048
"""FallbackToLogsOnError: the last 80 lines, at most 2048 bytes, as kubelet takes them."""


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Exit:
    code: int
    signal: int | None
    started_at: float
    finished_at: float
    message: str

    @property
    def reason(self) -> str:
        if self.signal == signal.SIGKILL:
            return "Killed"
        return "Completed" if self.code == 0 else "Error"


class ContainerProcess:
    """A started container; `poll` returns its Exit once it is gone."""

    def __init__(
        self, args: list[str], env: dict[str, str], cwd: Path, log_path: Path, termination_file: Path, policy: str
    ) -> None:
        self.log_path = log_path
        self.termination_file = termination_file
        self.policy = policy
        self.started_at = time.time()
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.term_sent_at: float | None = None
        self.killed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> Exit | None:
        code = self.popen.poll()
        if code is None:
            return None
        # The main process is gone; anything it left in its group goes too, as when a container exits.
        self._signal_group(signal.SIGKILL)
        return Exit(
            code=128 - code if code < 0 else code,
            signal=-code if code < 0 else None,
            started_at=self.started_at,
            finished_at=time.time(),
            message=self.termination_message(code),
        )

    def terminate(self) -> None:
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        self.killed = True
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)

    def termination_message(self, code: int) -> str:
        try:
            message = self.termination_file.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            message = ""
        if not message.strip() and code != 0 and self.policy == "FallbackToLogsOnError":
            message = log_tail(self.log_path)
        return message


def log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    lines = data.splitlines()[-LOG_TAIL_LINES:]
    return b"\n".join(lines)[-LOG_TAIL_BYTES:].decode(errors="replace")
