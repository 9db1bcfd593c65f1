"""Data-parallel training under torchrun (gloo on CPU), as the operator runs workers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from trainer_support import SMALL_RUN, TrainerRun, held_out_digits, onnx_logits, run_trainer_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerRun, Path]:
    folder = tmp_path_factory.mktemp("two-workers")
    args = [*SMALL_RUN, "--output", f"file://{folder}/out", "--checkpoint-uri", f"file://{folder}/ckpt"]
    run = run_trainer_process(args, folder / "termination-log", workers=2)
    assert run.returncode == 0, run.log
    return run, folder


def test_two_workers_train_the_same_model_as_one_worker_with_the_same_global_batch(
    two_workers: tuple[TrainerRun, Path], reference_small_run: Path
) -> None:
    """DDP averages per-rank mean gradients, so two ranks of 4 samples must step like one process of 8.

    Reduction order differs, so equality is numerical (float32 rounding, 5e-6 on logits here), not bitwise.
    """
    run, folder = two_workers
    assert run.termination is not None
    assert run.termination["metrics"]["world_size"] == 2
    assert run.termination["metrics"]["steps"] == 540

    features, _ = held_out_digits()
    alone = onnx_logits(reference_small_run / "model.onnx", features)
    together = onnx_logits(folder / "out" / "model.onnx", features)
    np.testing.assert_allclose(together, alone, atol=1e-4, rtol=0)
    assert (together.argmax(axis=1) == alone.argmax(axis=1)).all()


def test_only_rank_zero_writes_checkpoints_and_publishes_exactly_once(two_workers: tuple[TrainerRun, Path]) -> None:
    run, folder = two_workers
    assert re.findall(r"rank (\d) INFO tandem\.trainer\.publish: published", run.log) == ["0"]
    checkpoint_writers = set(re.findall(r"rank (\d) INFO tandem\.trainer\.checkpoint: checkpoint saved", run.log))
    assert checkpoint_writers == {"0"}
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["metadata.json", "model.onnx"]


def test_when_rank_zero_cannot_write_the_output_every_worker_fails_with_its_reason_instead_of_hanging(
    tmp_path: Path,
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("a file where a folder should be")
    args = [*SMALL_RUN, "--output", f"file://{not_a_folder}/models"]
    run = run_trainer_process(args, tmp_path / "termination-log", workers=2, timeout=240)
    assert run.returncode != 0
    assert "rank 0 ERROR tandem.trainer.failures: training failed (OutputUnwritable)" in run.log
    assert "rank 1 ERROR tandem.trainer.failures: training failed (OutputUnwritable): rank 0 failed" in run.log
    assert "epoch 1/" not in run.log
