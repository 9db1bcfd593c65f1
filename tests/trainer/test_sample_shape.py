"""spec.model.export.sampleInputShape reaches the exporter: random inputs when a script has none, a guard else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tandem.trainer.distributed import init_from_env
from tandem.trainer.failures import InvalidConfiguration
from tandem.trainer.publish import export_and_publish


@pytest.fixture(autouse=True)
def _termination_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 3))


def test_a_declared_shape_exports_without_a_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_SAMPLE_INPUT_SHAPE", "2,3")
    artifact = export_and_publish(init_from_env("cpu"), _model(), output_uri=f"file://{tmp_path}/out", metrics={})
    assert artifact is not None
    assert [tensor.shape for tensor in artifact.inputs] == [[-1, 2, 3]]
    assert artifact.parity_max_abs_diff is not None and artifact.parity_max_abs_diff < 1e-4
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["sha256"] == artifact.sha256


def test_a_sample_of_another_shape_than_declared_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_SAMPLE_INPUT_SHAPE", "6")
    with pytest.raises(InvalidConfiguration, match=r"per-sample shape \[2, 3\].*declares \[6\]"):
        export_and_publish(
            init_from_env("cpu"), _model(), torch.rand(4, 2, 3), output_uri=f"file://{tmp_path}/out", metrics={}
        )
    assert not (tmp_path / "out").exists()


def test_a_sample_of_the_declared_shape_is_exported_and_checked_on_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_SAMPLE_INPUT_SHAPE", "2,3")
    artifact = export_and_publish(
        init_from_env("cpu"), _model(), torch.rand(4, 2, 3), output_uri=f"file://{tmp_path}/out", metrics={}
    )
    assert artifact is not None and artifact.inputs[0].shape == [-1, 2, 3]


def test_no_sample_and_no_declared_shape_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfiguration, match="sampleInputShape"):
        export_and_publish(init_from_env("cpu"), _model(), output_uri=f"file://{tmp_path}/out", metrics={})


@pytest.mark.parametrize("raw", ["64,x", "0", "-1,2"])
def test_a_malformed_declared_shape_is_a_configuration_error(
    raw: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_SAMPLE_INPUT_SHAPE", raw)
    with pytest.raises(InvalidConfiguration, match="TANDEM_SAMPLE_INPUT_SHAPE"):
        export_and_publish(init_from_env("cpu"), _model(), output_uri=f"file://{tmp_path}/out", metrics={})
