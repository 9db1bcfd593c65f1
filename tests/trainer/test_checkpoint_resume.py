"""Checkpoints: a killed run resumes where its last checkpoint left off, and never from a torn one."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from trainer_support import (
    checkpointed_small_run,
    first_checkpoint,
    held_out_digits,
    onnx_logits,
    run_trainer_process,
    trainer_command,
    trainer_env,
)

from tandem import storage
from tandem.trainer import digits
from tandem.trainer.checkpoint import POINTER_FILE, CheckpointStore
from tandem.trainer.distributed import init_from_env
from tandem.trainer.failures import CheckpointUnreadable, InvalidConfiguration

SMALL_RUN_STEPS = 540


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_from_that_step_and_ends_with_the_uninterrupted_model(
    tmp_path: Path, reference_small_run: Path
) -> None:
    args = checkpointed_small_run(tmp_path)
    victim = subprocess.Popen(
        trainer_command(args),
        env=trainer_env(tmp_path / "killed-termination"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pointer = first_checkpoint(tmp_path, victim)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = json.loads(pointer.read_text())["step"]
    assert 0 < killed_at < SMALL_RUN_STEPS
    assert not (tmp_path / "out" / "model.onnx").exists()

    resumed = run_trainer_process(args, tmp_path / "resumed-termination")
    assert resumed.returncode == 0, resumed.log
    assert f"resumed from checkpoint at step {killed_at} of {SMALL_RUN_STEPS}" in resumed.log
    assert resumed.termination is not None
    assert resumed.termination["metrics"]["resumed_from_step"] == killed_at
    assert resumed.termination["metrics"]["steps"] == SMALL_RUN_STEPS

    features, _ = held_out_digits()
    np.testing.assert_allclose(
        onnx_logits(tmp_path / "out" / "model.onnx", features),
        onnx_logits(reference_small_run / "model.onnx", features),
        atol=1e-6,
        rtol=0,
    )


def _state(value: float) -> dict[str, Any]:
    return {"weight": torch.full((3,), value)}


def test_a_run_that_dies_between_checkpoint_and_pointer_writes_resumes_from_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(f"file://{tmp_path}")
    store.save(10, _state(1.0))
    real_write = storage.write_bytes_atomic

    def die_on_pointer(uri: str, data: bytes, **options: Any) -> None:
        if uri.endswith(POINTER_FILE):
            raise KeyboardInterrupt("killed")
        real_write(uri, data, **options)

    monkeypatch.setattr(storage, "write_bytes_atomic", die_on_pointer)
    with pytest.raises(KeyboardInterrupt):
        store.save(20, _state(2.0))
    monkeypatch.undo()
    latest = store.load_latest()
    assert latest is not None and latest.step == 10
    assert torch.equal(latest.state["weight"], torch.full((3,), 1.0))


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}", keep=2)
    for step in (1, 2, 3, 4):
        store.save(step, _state(float(step)))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step-000000003.pt", "step-000000004.pt"]


def test_a_folder_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    assert CheckpointStore(f"file://{tmp_path}/never-written").load_latest() is None


def test_a_corrupt_checkpoint_is_reported_rather_than_silently_restarting(tmp_path: Path) -> None:
    store = CheckpointStore(f"file://{tmp_path}")
    path = Path(storage.resolve(store.save(5, _state(5.0))))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointUnreadable, match=r"step-000000005\.pt"):
        store.load_latest()


def test_resuming_with_a_different_batch_size_is_refused(tmp_path: Path) -> None:
    ctx = init_from_env("cpu")
    store = CheckpointStore(f"file://{tmp_path}")
    digits.train(ctx, digits.DigitsConfig(epochs=1, batch_size=32), store, resume=True)
    with pytest.raises(InvalidConfiguration, match="batch size"):
        digits.train(ctx, digits.DigitsConfig(epochs=2, batch_size=64), store, resume=True)
