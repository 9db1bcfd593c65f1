"""Helpers for running the trainer the way a pod runs it: a fresh process, configured by environment.

Runs are subprocesses (under torchrun where a test needs workers) so that exit codes, termination messages
and process-group set-up are the real ones. OMP_NUM_THREADS=1 keeps a tiny MLP fast on a shared 2-core box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SMALL_RUN = ["--epochs", "3", "--batch-size", "8", "--seed", "3"]
"""A short run (540 optimizer steps) for tests about behaviour rather than accuracy."""


def checkpointed_small_run(folder: Path) -> list[str]:
    """SMALL_RUN writing its model under `folder`/out and a checkpoint every 25 steps under `folder`/ckpt."""
    return [
        *SMALL_RUN,
        "--output", f"file://{folder}/out",
        "--checkpoint-uri", f"file://{folder}/ckpt",
        "--checkpoint-every", "25",
    ]  # fmt: skip


def first_checkpoint(folder: Path, *workers: subprocess.Popen[Any]) -> Path:
    """The pointer file of a checkpointed_small_run(`folder`), once its first checkpoint is published: the moment
    to stop a run that must resume from one. Fails if a worker ends first or nothing comes within 240 s."""
    from tandem.trainer.checkpoint import POINTER_FILE  # imports torch: not at import, which every trainer test does

    pointer = folder / "ckpt" / POINTER_FILE
    deadline = time.monotonic() + 240
    while not pointer.exists():
        assert all(worker.poll() is None for worker in workers), "a worker ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    return pointer


DIST_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class TrainerRun:
    returncode: int
    log: str
    termination: dict[str, Any] | None
    seconds: float


def trainer_env(termination_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_") and k not in DIST_VARIABLES}
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TANDEM_TERMINATION_MESSAGE_PATH=str(termination_path),
    )
    env.update(extra or {})
    return env


def trainer_command(args: list[str], workers: int | None = None) -> list[str]:
    if workers is None:
        return [sys.executable, "-m", "tandem.trainer", "digits", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(workers),
        "-m", "tandem.trainer", "digits", *args,
    ]  # fmt: skip


def read_termination(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() and path.read_text() else None


def run_trainer_process(
    args: list[str],
    termination: Path,
    *,
    env: dict[str, str] | None = None,
    workers: int | None = None,
    timeout: float = 300,
) -> TrainerRun:
    """Run `tandem train digits ARGS` to completion and collect its exit code, log and termination message."""
    started = time.monotonic()
    done = subprocess.run(
        trainer_command(args, workers),
        env=trainer_env(termination, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return TrainerRun(done.returncode, done.stdout, read_termination(termination), time.monotonic() - started)


def held_out_digits() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    from tandem.trainer.digits import load_split

    split = load_split(None)
    return split.test_x.numpy(), split.test_y.numpy()


def onnx_logits(model_path: Path, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    result: npt.NDArray[np.float32] = session.run(None, {session.get_inputs()[0].name: batch})[0]
    return result
