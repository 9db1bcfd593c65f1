"""The built-in example, run as the default container command runs it: `tandem train digits`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trainer_support import TrainerRun, held_out_digits, onnx_logits, run_trainer_process

from tandem.api.artifact import ModelArtifact

pytestmark = pytest.mark.slow

STATED_ACCURACY = 0.95


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerRun, Path]:
    """One run with every default, shared by the tests that read its results."""
    folder = tmp_path_factory.mktemp("digits")
    output = folder / "model"
    run = run_trainer_process([], folder / "termination-log", env={"TANDEM_MODEL_OUTPUT": f"file://{output}"})
    assert run.returncode == 0, run.log
    return run, output


def test_trains_to_the_stated_held_out_accuracy_on_cpu_in_well_under_a_minute(
    default_run: tuple[TrainerRun, Path],
) -> None:
    run, _ = default_run
    assert run.termination is not None
    metrics = run.termination["metrics"]
    assert metrics["accuracy"] >= STATED_ACCURACY
    assert metrics["train_seconds"] < 20
    assert run.seconds < 60, f"the whole run, export included, took {run.seconds:.0f}s"


def test_the_termination_message_is_the_metadata_and_describes_the_published_file(
    default_run: tuple[TrainerRun, Path],
) -> None:
    run, output = default_run
    metadata: dict[str, Any] = json.loads((output / "metadata.json").read_text())
    assert run.termination == metadata
    artifact = ModelArtifact.model_validate(metadata)
    model_bytes = (output / "model.onnx").read_bytes()
    assert artifact.uri == f"file://{output}/model.onnx"
    assert artifact.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert artifact.size_bytes == len(model_bytes)
    assert [(t.name, t.datatype, t.shape) for t in artifact.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, t.shape) for t in artifact.outputs] == [("logits", "FP32", [-1, 10])]
    assert artifact.opset is not None and artifact.opset >= 17
    assert artifact.parity_max_abs_diff is not None and artifact.parity_max_abs_diff <= 1e-4
    assert {"torch", "onnx", "onnxruntime"} <= set(artifact.versions)
    assert artifact.metrics["resumed_from_step"] == 0


def test_the_published_model_takes_raw_pixels_at_any_batch_size_and_scores_what_training_reported(
    default_run: tuple[TrainerRun, Path],
) -> None:
    run, output = default_run
    assert run.termination is not None
    features, labels = held_out_digits()
    one_by_one = np.concatenate([onnx_logits(output / "model.onnx", features[i : i + 1]) for i in range(5)])
    all_at_once = onnx_logits(output / "model.onnx", features)
    np.testing.assert_allclose(one_by_one, all_at_once[:5], atol=1e-5)
    accuracy = float(np.mean(all_at_once.argmax(axis=1) == labels))
    assert accuracy == pytest.approx(run.termination["metrics"]["accuracy"], abs=1e-6)
