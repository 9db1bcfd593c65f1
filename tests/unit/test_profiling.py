"""`tandem profile` on a tiny ONNX model made here: the JSON the operator reads back, and its failure mode."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tandem.cli import main
from tandem.profiling.result import ProfileFailure, ProfileResult

FAST = ["--latency-seconds", "0.2", "--throughput-seconds", "0.3"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """input[batch, 8] x W[8, 3] + b: small enough that timings are noise, real enough to run."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [8, 3], rng.standard_normal(24).astype(np.float32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [3], np.zeros(3, dtype=np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    onnx.save(model, str(path))
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["profile", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_profile_prints_sane_figures_and_writes_the_termination_message(tiny_model: Path, tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    sha256 = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    code, out, _ = run(
        "--model-uri", f"file://{tiny_model}", "--model-sha256", sha256, "--threads", "1",
        "--termination-message-path", str(message), *FAST,
    )
    assert code == 0
    printed = ProfileResult.model_validate_json(out)
    written = ProfileResult.model_validate_json(message.read_text())
    assert printed == written
    assert len(message.read_bytes()) < 4096
    assert printed.sha256 == sha256
    assert (printed.device, printed.requested_device, printed.threads) == ("cpu", "cpu", 1)
    assert printed.providers[0] == "CPUExecutionProvider"
    assert 0 < printed.p50_latency_ms <= printed.p90_latency_ms <= printed.p99_latency_ms < 1000
    assert printed.latency_samples >= 20
    assert printed.throughput_per_replica > 10
    assert printed.throughput_seconds >= 0.3
    assert printed.slo_latency_ms == printed.p99_latency_ms


def test_batching_measures_full_batches_and_bounds_latency_by_the_delay(tiny_model: Path) -> None:
    code, out, _ = run(
        "--model-uri", f"file://{tiny_model}", "--threads", "1", "--max-batch-size", "16",
        "--max-batch-delay-ms", "5", *FAST,
    )
    assert code == 0
    result = ProfileResult.model_validate_json(out)
    assert (result.max_batch_size, result.max_batch_delay_ms) == (16, 5.0)
    assert result.slo_latency_ms >= 5.0 + result.loaded_p99_latency_ms - 1e-9


def test_a_gpu_profile_without_a_usable_gpu_reports_the_device_it_got(tiny_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider; the fallback is what is tested here")
    code, out, _ = run("--model-uri", f"file://{tiny_model}", "--device", "cuda", "--threads", "1", *FAST)
    assert code == 0
    result = ProfileResult.model_validate_json(out)
    assert (result.requested_device, result.device) == ("cuda", "cpu")
    assert result.note is not None and "ran on CPU" in result.note


def test_a_different_model_fails_with_a_readable_message(tiny_model: Path, tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    code, _, err = run(
        "--model-uri", f"file://{tiny_model}", "--model-sha256", "0" * 64,
        "--termination-message-path", str(message), *FAST,
    )
    assert code == 1
    failure = ProfileFailure.model_validate_json(message.read_text())
    assert "sha256 mismatch" in failure.error
    assert json.loads(err)["error"] == failure.error


def test_a_missing_model_fails_with_a_readable_message(tmp_path: Path) -> None:
    code, _, err = run("--model-uri", f"file://{tmp_path}/absent.onnx", *FAST)
    assert code == 1
    assert "cannot read model" in json.loads(err)["error"]
