"""A published version is written once: the same run started again announces its first model, and another
run at the same output is refused before it writes anything.

The cases it guards: a run whose completion went unrecorded is started again at the same `vN` and trains a
model with other weights; a TrainingJob deleted and made again (same name, generation 1, same output) with
another spec. Services already serve the first model, and status must name exactly one model per version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tandem.trainer.distributed import init_from_env
from tandem.trainer.failures import OutputUnwritable
from tandem.trainer.publish import check_output_writable, export_and_publish

RUN = "0b7e7d4c-8a55-4c8e-9d7e-3f1f3a5f2f10/1"


@pytest.fixture(autouse=True)
def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    monkeypatch.setenv("TANDEM_RUN", RUN)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3))


def _publish(tmp_path: Path, seed: int) -> str:
    artifact = export_and_publish(
        init_from_env("cpu"), _model(seed), torch.rand(2, 4), output_uri=f"file://{tmp_path}/out", metrics={}
    )
    assert artifact is not None
    return artifact.sha256


def test_the_same_run_publishing_again_announces_its_first_model_and_writes_nothing(tmp_path: Path) -> None:
    first = _publish(tmp_path, seed=0)
    model = tmp_path / "out" / "model.onnx"
    written = model.stat().st_mtime_ns

    second = _publish(tmp_path, seed=1)

    assert second == first
    assert hashlib.sha256(model.read_bytes()).hexdigest() == first
    assert model.stat().st_mtime_ns == written
    message = json.loads((tmp_path / "termination-log").read_text())
    assert (message["sha256"], message["run"]) == (first, RUN)


def test_another_run_at_a_published_output_is_refused_before_training_and_at_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _publish(tmp_path, seed=0)
    monkeypatch.setenv("TANDEM_RUN", "c3a1f7de-0d0e-4b3a-8a57-7d1c1f0e9b22/1")
    refused = r"holds a model another run published \(0b7e7d4c-.*/1\), which is never replaced"
    with pytest.raises(OutputUnwritable, match=refused):
        check_output_writable(f"file://{tmp_path}/out")
    with pytest.raises(OutputUnwritable, match=refused):
        _publish(tmp_path, seed=1)
    assert hashlib.sha256((tmp_path / "out" / "model.onnx").read_bytes()).hexdigest() == first


def test_a_model_without_its_metadata_was_never_published_and_is_replaced(tmp_path: Path) -> None:
    """model.onnx goes first and metadata.json last: a run that stopped between them published nothing."""
    first = _publish(tmp_path, seed=0)
    (tmp_path / "out" / "metadata.json").unlink()
    second = _publish(tmp_path, seed=1)
    assert second != first
    assert hashlib.sha256((tmp_path / "out" / "model.onnx").read_bytes()).hexdigest() == second


def test_metadata_that_is_not_an_artifact_stops_the_publish_and_replaces_nothing(tmp_path: Path) -> None:
    first = _publish(tmp_path, seed=0)
    (tmp_path / "out" / "metadata.json").write_text("{not json")
    with pytest.raises(OutputUnwritable, match=r"cannot tell whether .*metadata\.json was published"):
        _publish(tmp_path, seed=1)
    assert hashlib.sha256((tmp_path / "out" / "model.onnx").read_bytes()).hexdigest() == first
