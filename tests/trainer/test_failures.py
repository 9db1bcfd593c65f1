"""Every known way a run fails ends in a clear message, a non-zero exit and a TrainingFailure message."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_support import SMALL_RUN, TrainerRun

from tandem.api.artifact import EXIT_PERMANENT, EXIT_RETRYABLE
from tandem.datasets import digits_uri
from tandem.storage import resolve
from tandem.trainer import export
from tandem.trainer.digits import SPLIT_SEED, DigitsMLP
from tandem.trainer.distributed import init_from_env
from tandem.trainer.failures import TERMINATION_PATH_ENV, reported_failures, write_termination_message
from tandem.trainer.publish import export_and_publish

RunTrainer = Callable[..., TrainerRun]


def assert_failed(run: TrainerRun, exit_code: int, reason: str, *mentions: str) -> str:
    assert run.returncode == exit_code, run.log
    assert run.termination is not None, run.log
    assert set(run.termination) == {"reason", "error"}
    assert run.termination["reason"] == reason
    for mention in mentions:
        assert mention in run.termination["error"]
    assert f"training failed ({reason})" in run.log
    return str(run.termination["error"])


@pytest.mark.slow
@pytest.mark.parametrize("at_fault", ["--output", "--checkpoint-uri"])
def test_an_unwritable_output_or_checkpoint_uri_fails_before_any_training(
    run_trainer: RunTrainer, tmp_path: Path, at_fault: str
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("a file where a folder should be")
    uris = {"--output": f"file://{tmp_path}/out", "--checkpoint-uri": f"file://{tmp_path}/ckpt"}
    uris[at_fault] = f"file://{not_a_folder}/models"
    run = run_trainer([*SMALL_RUN, *(item for pair in uris.items() for item in pair)])
    assert_failed(run, EXIT_RETRYABLE, "OutputUnwritable", uris[at_fault])
    assert "epoch 1/" not in run.log


@pytest.mark.slow
def test_a_missing_dataset_fails_naming_where_it_was_looked_for(run_trainer: RunTrainer, tmp_path: Path) -> None:
    missing = f"file://{tmp_path}/no-such-digits.csv"
    run = run_trainer([*SMALL_RUN, "--output", f"file://{tmp_path}/out", "--data", missing])
    assert_failed(run, EXIT_PERMANENT, "DatasetMissing", missing)


@pytest.mark.slow
def test_a_nan_loss_stops_training_at_the_step_that_met_it_and_publishes_nothing(
    run_trainer: RunTrainer, tmp_path: Path
) -> None:
    rows = Path(resolve(digits_uri())).read_text().splitlines()
    first_training_row = int(np.random.default_rng(SPLIT_SEED).permutation(len(rows))[0])
    row = rows[first_training_row]
    rows[first_training_row] = "nan" + row[row.index(",") :]
    corrupt = tmp_path / "digits-with-a-nan.csv"
    corrupt.write_text("\n".join(rows) + "\n")
    run = run_trainer(
        [
            *SMALL_RUN,
            "--output", f"file://{tmp_path}/out",
            "--checkpoint-uri", f"file://{tmp_path}/ckpt",
            "--data", f"file://{corrupt}",
        ]
    )  # fmt: skip
    assert_failed(run, EXIT_PERMANENT, "NaNLoss", "loss is nan at step 1")
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert list((tmp_path / "ckpt").glob("*.pt")) == []


def test_an_export_that_fails_the_parity_check_is_reported_and_not_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter that emits a graph computing something else than the model must be caught by parity."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("TANDEM_TERMINATION_MESSAGE_PATH", str(termination))
    torch.manual_seed(0)
    trained, impostor = DigitsMLP(), DigitsMLP()
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda _model, sample, **kw: real_export(impostor, sample, **kw))
    samples = torch.rand(8, 64) * 16
    with pytest.raises(SystemExit) as exited, reported_failures():
        output = f"file://{tmp_path}/out"
        export_and_publish(init_from_env("cpu"), trained, samples[:4], [samples.numpy()], output_uri=output, metrics={})
    assert exited.value.code == EXIT_PERMANENT
    failure = json.loads(termination.read_text())
    assert failure["reason"] == "ParityCheckFailed"
    assert "onnxruntime and torch outputs differ by" in failure["error"]
    assert not (tmp_path / "out").exists()


def test_an_honest_export_passes_the_parity_check_within_1e_4_even_where_both_sides_give_nan() -> None:
    torch.manual_seed(0)
    model = DigitsMLP()
    samples = (torch.rand(16, 64) * 16).numpy()
    proto = export.export_onnx(model, torch.from_numpy(samples[:4]))
    with_a_nan = samples.copy()
    with_a_nan[3, 5] = np.nan
    diff = export.parity_max_abs_diff(model, proto.SerializeToString(), [samples[:1], samples, with_a_nan])
    assert 0 <= diff <= 1e-4


def test_workers_of_one_pod_failing_together_leave_one_whole_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun's processes share the pod's termination file; messages of different lengths written at once
    (as when rank 0's failure fails every rank) leave exactly one of them, never a mix."""
    path = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_PATH_ENV, str(path))
    messages = [{"reason": "OutputUnwritable", "error": "x" * length} for length in (10, 400, 40, 4000)]
    for _ in range(50):
        start = threading.Barrier(len(messages))

        def write(message: dict[str, object], start: threading.Barrier = start) -> None:
            start.wait()
            write_termination_message(message)

        writers = [threading.Thread(target=write, args=(message,)) for message in messages]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert json.loads(path.read_text()) in messages
