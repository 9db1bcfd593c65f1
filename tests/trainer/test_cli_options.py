"""`tandem train digits` takes its settings from TANDEM_* variables, as the operator sets them in pods."""

from __future__ import annotations

import pytest
import torch

from tandem.trainer import digits, export
from tandem.trainer.cli import train
from tandem.trainer.distributed import init_from_env

OPERATOR_ENVIRONMENT = {
    "TANDEM_MODEL_OUTPUT": "pvc://models/digits",
    "TANDEM_CHECKPOINT_URI": "s3://bucket/checkpoints",
    "TANDEM_CHECKPOINT_RESUME": "false",
    "TANDEM_EXPORT_OPSET": "18",
    "TANDEM_EPOCHS": "7",
    "TANDEM_BATCH_SIZE": "64",
    "TANDEM_AMP": "true",
    "TANDEM_DEVICE": "cpu",
}


def _params(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], args: list[str]) -> dict[str, object]:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    command = train.commands["digits"]
    with command.make_context("digits", args) as context:
        return dict(context.params)


def test_every_option_the_operator_sets_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = _params(monkeypatch, OPERATOR_ENVIRONMENT, [])
    assert params["output"] == "pvc://models/digits"
    assert params["checkpoint_uri"] == "s3://bucket/checkpoints"
    assert params["resume"] is False
    assert params["opset"] == 18
    assert params["epochs"] == 7
    assert params["batch_size"] == 64
    assert params["amp"] is True
    assert params["device"] == "cpu"


def test_user_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(monkeypatch, OPERATOR_ENVIRONMENT, ["--epochs", "20", "--resume"])
    assert params["epochs"] == 20
    assert params["resume"] is True


def test_checkpoints_resume_by_default_so_a_restarted_pod_continues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_CHECKPOINT_RESUME", raising=False)
    assert _params(monkeypatch, {}, [])["resume"] is True


def test_amp_trains_under_bf16_autocast_and_keeps_fp32_weights_for_export() -> None:
    result = digits.train(init_from_env("cpu"), digits.DigitsConfig(epochs=2, amp=True), None, resume=False)
    assert result.metrics["accuracy"] > 0.8
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}


def test_the_requested_opset_is_the_one_exported() -> None:
    proto = export.export_onnx(digits.DigitsMLP(), torch.rand(4, 64), opset=18)
    assert export.opset_of(proto) == 18
