"""A worker stopped by SIGTERM (Kueue preempting its run, a suspend, a deleted pod) says where the run resumes.

The message is how the operator learns the checkpoint step of a preempted run (TrainingJob
status.checkpoint); exit 143 is what the Job's podFailurePolicy ignores, so preemptions cost no retries.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_support import (
    SMALL_RUN,
    checkpointed_small_run,
    first_checkpoint,
    read_termination,
    run_trainer_process,
    trainer_command,
    trainer_env,
)

from tandem.render.training import EXIT_STOPPED as POLICY_IGNORES
from tandem.trainer.failures import EXIT_STOPPED

SMALL_RUN_STEPS = 540


def test_the_stop_exit_code_is_the_one_the_job_failure_policy_ignores() -> None:
    assert EXIT_STOPPED == POLICY_IGNORES == 128 + signal.SIGTERM


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_reports_its_newest_checkpoint_and_the_next_start_resumes_from_it(
    tmp_path: Path,
) -> None:
    args = checkpointed_small_run(tmp_path)
    stopped_message = tmp_path / "stopped-termination"
    worker = subprocess.Popen(
        trainer_command(args), env=trainer_env(stopped_message), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    pointer = first_checkpoint(tmp_path, worker)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == EXIT_STOPPED

    saved = json.loads(pointer.read_text())["step"]
    message = read_termination(stopped_message)
    assert message is not None
    assert message["reason"] == "Stopped"
    assert message["checkpoint"] == {"step": saved, "uri": f"file://{tmp_path}/ckpt/step-{saved:09d}.pt"}
    assert f"resumes from checkpoint step {saved}" in message["error"]
    assert 0 < saved < SMALL_RUN_STEPS
    assert not (tmp_path / "out" / "model.onnx").exists()

    resumed = run_trainer_process(args, tmp_path / "resumed-termination")
    assert resumed.returncode == 0, resumed.log
    assert resumed.termination is not None
    assert resumed.termination["metrics"]["resumed_from_step"] == saved
    assert resumed.termination["metrics"]["steps"] == SMALL_RUN_STEPS


HELD_STOP = """
import os, signal
from tandem.trainer.failures import note_checkpoint, reported_failures, stops_held

with reported_failures():
    note_checkpoint(1, "file:///ckpt/step-000000001.pt")
    with stops_held():  # as a save holds it: the pointer moves to step 2, SIGTERM arrives, the note follows
        os.kill(os.getpid(), signal.SIGTERM)
        note_checkpoint(2, "file:///ckpt/step-000000002.pt")
    raise SystemExit("still running after the held stop")
"""


def test_a_sigterm_between_a_saves_pointer_and_its_note_names_the_checkpoint_the_pointer_names(
    tmp_path: Path,
) -> None:
    stopped_message = tmp_path / "stopped-termination"
    held = subprocess.run(
        [sys.executable, "-c", HELD_STOP], env=trainer_env(stopped_message), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert held.returncode == EXIT_STOPPED, held.stderr
    message = read_termination(stopped_message)
    assert message is not None
    assert message["checkpoint"] == {"step": 2, "uri": "file:///ckpt/step-000000002.pt"}


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_says_it_knows_of_none(tmp_path: Path) -> None:
    args = [*SMALL_RUN, "--output", f"file://{tmp_path}/out"]
    stopped_message = tmp_path / "stopped-termination"
    worker = subprocess.Popen(
        trainer_command(args), env=trainer_env(stopped_message), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    assert worker.stdout is not None
    for line in worker.stdout:  # stopped once it trains, not while Python is still importing torch
        if "epoch 1/" in line:
            break
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == EXIT_STOPPED
    message = read_termination(stopped_message)
    assert message is not None
    assert message["reason"] == "Stopped"
    assert "checkpoint" not in message
    assert "knows of no checkpoint" in message["error"]
