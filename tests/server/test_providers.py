"""Execution provider selection: CUDA (TensorRT first) where the container has a GPU, CPU otherwise, and a
forced GPU provider that cannot load falls back to CPU with a warning instead of taking the replica down."""

from __future__ import annotations

import logging
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from support import server_procs as servers
from tandem.server import providers
from tandem.server.model import OnnxModel, SessionSettings
from tandem.server.providers import CPU, CUDA, TENSORRT, ExecutionProvider, plan_providers

AUTO, CPU_ONLY, FORCE_CUDA, FORCE_TRT = (ExecutionProvider.AUTO, ExecutionProvider.CPU, ExecutionProvider.CUDA,
                                         ExecutionProvider.TENSORRT)  # fmt: skip
CPU_BUILD = (CPU,)
"""What the CPU onnxruntime wheel offers (less AzureExecutionProvider, which never runs a model)."""
CUDA_BUILD = (CUDA, CPU)
TRT_BUILD = (TENSORRT, CUDA, CPU)

# requested, offered by onnxruntime, GPU visible -> providers asked for, warns
PLANS = [
    ("auto-cpu-build-no-gpu", AUTO, CPU_BUILD, False, (CPU,), False),
    ("auto-cpu-build-on-a-gpu-node-warns-of-an-idle-gpu", AUTO, CPU_BUILD, True, (CPU,), True),
    ("auto-gpu-build-on-a-cpu-node", AUTO, CUDA_BUILD, False, (CPU,), False),
    ("auto-gpu-build-on-a-gpu-node", AUTO, CUDA_BUILD, True, (CUDA, CPU), False),
    ("auto-tensorrt-first-where-it-loads", AUTO, TRT_BUILD, True, (TENSORRT, CUDA, CPU), False),
    ("auto-tensorrt-build-on-a-cpu-node", AUTO, TRT_BUILD, False, (CPU,), False),
    ("cpu-even-on-a-gpu-node", CPU_ONLY, TRT_BUILD, True, (CPU,), False),
    ("cuda-on-a-gpu-node", FORCE_CUDA, CUDA_BUILD, True, (CUDA, CPU), False),
    ("cuda-forced-is-tried-without-a-visible-device", FORCE_CUDA, CUDA_BUILD, False, (CUDA, CPU), False),
    ("cuda-forced-on-the-cpu-build", FORCE_CUDA, CPU_BUILD, True, (CPU,), True),
    ("cuda-forced-never-picks-tensorrt", FORCE_CUDA, TRT_BUILD, True, (CUDA, CPU), False),
    ("tensorrt-with-cuda-behind-it", FORCE_TRT, TRT_BUILD, True, (TENSORRT, CUDA, CPU), False),
    ("tensorrt-missing-falls-to-cuda", FORCE_TRT, CUDA_BUILD, True, (CUDA, CPU), True),
    ("tensorrt-forced-on-the-cpu-build", FORCE_TRT, CPU_BUILD, False, (CPU,), True),
]


@pytest.mark.parametrize(("requested", "offered", "gpu", "asked", "warns"), [row[1:] for row in PLANS],
                         ids=[row[0] for row in PLANS])  # fmt: skip
def test_the_plan_asks_for_the_gpu_only_where_it_can_run_and_always_ends_on_cpu(
    requested: ExecutionProvider, offered: tuple[str, ...], gpu: bool, asked: tuple[str, ...], warns: bool
) -> None:
    plan = plan_providers(requested, offered, gpu)
    assert plan.providers == asked
    assert plan.providers[-1] == CPU
    assert (plan.warning is not None) == warns


def test_a_forced_provider_that_is_missing_says_which_and_what_onnxruntime_offers() -> None:
    warning = plan_providers(FORCE_CUDA, CPU_BUILD, True).warning
    assert warning is not None
    assert "cuda requested" in warning and "CUDAExecutionProvider" in warning and "CPUExecutionProvider" in warning
    assert "running on CPU" in warning


# device visibility
@pytest.mark.parametrize(("visible", "devices", "expected"), [
    (None, [], False),
    ("", [], False),
    ("void", [], False),
    ("none", [], False),
    ("NONE", [], False),
    ("all", [], True),
    ("GPU-5f3e1a2b-0000-0000-0000-000000000000", [], True),
    ("0,1", [], True),
    (None, ["nvidia0"], True),
    (None, ["nvidiactl", "nvidia-uvm", "nvidia-modeset"], False),
    ("void", ["nvidia3"], True),
])  # fmt: skip
def test_a_gpu_is_visible_through_nvidia_visible_devices_or_a_device_node(
    tmp_path: Path, visible: str | None, devices: list[str], expected: bool
) -> None:
    for device in devices:
        (tmp_path / device).touch()
    environ = {} if visible is None else {"NVIDIA_VISIBLE_DEVICES": visible}
    assert providers.gpu_visible(environ, tmp_path) is expected


def test_tensorrt_counts_only_where_its_runtime_library_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    ort = SimpleNamespace(get_available_providers=lambda: [TENSORRT, CUDA, CPU])
    monkeypatch.setattr(providers, "TENSORRT_LIBRARIES", ("libnvinfer-not-installed.so.10",))
    assert providers.usable_providers(ort) == [CUDA, CPU]
    monkeypatch.setattr(providers, "TENSORRT_LIBRARIES", ("libnvinfer-not-installed.so.10", "libc.so.6"))
    assert providers.usable_providers(ort) == [TENSORRT, CUDA, CPU]


def test_provider_names_are_the_option_values() -> None:
    assert [providers.short_name(name) for name in (CPU, CUDA, TENSORRT)] == ["cpu", "cuda", "tensorrt"]
    assert providers.short_name("OpenVINOExecutionProvider") == "openvino"


# a real model on this GPU-less machine
def test_cuda_requested_without_a_gpu_serves_on_cpu_with_a_warning(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri(),
                      session=SessionSettings(execution_provider=FORCE_CUDA))  # fmt: skip
    model.load()
    assert model.ready
    assert model.execution_provider == "cpu"
    fallbacks = [r for r in caplog.records if r.name == "tandem.server.providers" and r.levelno == logging.WARNING]
    assert len(fallbacks) == 1
    assert "cuda requested" in fallbacks[0].reason  # type: ignore[attr-defined]
    loaded = next(r for r in caplog.records if r.getMessage() == "model loaded")
    assert (loaded.execution_provider, loaded.requested_provider) == ("cpu", "cuda")  # type: ignore[attr-defined]


def test_auto_without_a_gpu_runs_on_cpu_without_a_warning(
    model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
    model.load()
    assert model.execution_provider == "cpu"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# onnxruntime failing on its side (a GPU build on a node whose driver or device is missing)
class FakeSession:
    def __init__(self, running: list[str]) -> None:
        self.running = running

    def get_providers(self) -> list[str]:
        return self.running


def fake_ort(*, offered: list[str], refuses: set[str], drops: set[str]) -> Any:
    """An onnxruntime whose sessions refuse (raise for) or silently drop the providers named."""
    asked: list[list[str]] = []

    def session(data: bytes, options: Any, *, providers: list[str], enable_fallback: int) -> FakeSession:
        assert enable_fallback == 0  # onnxruntime's own fallback would print() and hide the cause
        asked.append(list(providers))
        if providers[0] in refuses:
            raise RuntimeError(f"Failed to load library libonnxruntime_providers_{providers[0]}.so\nmore")
        return FakeSession([p for p in providers if p not in drops])

    return SimpleNamespace(get_available_providers=lambda: offered, InferenceSession=session, asked=asked)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.reason for r in caplog.records if r.levelno == logging.WARNING]  # type: ignore[attr-defined]


def test_a_provider_that_fails_to_load_is_dropped_for_the_next_one(caplog: pytest.LogCaptureFixture) -> None:
    ort = fake_ort(offered=[CUDA, CPU], refuses={CUDA}, drops=set())
    session = providers.open_session(ort, b"model", None, FORCE_CUDA, "digits")
    assert providers.running_provider(session) == "cpu"
    assert ort.asked == [[CUDA, CPU], [CPU]]
    assert warnings_of(caplog) == [f"cuda failed to load: Failed to load library libonnxruntime_providers_{CUDA}.so"]


def test_a_provider_onnxruntime_drops_silently_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    ort = fake_ort(offered=[CUDA, CPU], refuses=set(), drops={CUDA})
    session = providers.open_session(ort, b"model", None, FORCE_CUDA, "digits")
    assert providers.running_provider(session) == "cpu"
    assert [w.split(" (")[0] for w in warnings_of(caplog)] == ["onnxruntime dropped cuda at session creation"]


def test_a_model_cpu_cannot_open_is_still_an_error() -> None:
    ort = fake_ort(offered=[CUDA, CPU], refuses={CUDA, CPU}, drops=set())
    with pytest.raises(RuntimeError, match="providers_CPUExecutionProvider"):
        providers.open_session(ort, b"model", None, FORCE_CUDA, "digits")


# the process
def test_the_server_exposes_the_provider_each_model_runs_on_in_its_metrics(model_dir: Path) -> None:
    metrics_port = servers.free_port()
    env = {"TANDEM_EXECUTION_PROVIDER": "cuda", "TANDEM_METRICS_PORT": str(metrics_port),
           "TANDEM_MODEL_VERSION": "3"}  # fmt: skip
    with servers.serving(model_dir / "linear.onnx", env=env) as (process, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            metrics = reply.read().decode()
        process.kill()
        _, stderr = process.communicate(timeout=30)
    assert 'tandem_model_execution_provider{model="linear",provider="cpu",version="3"} 1.0' in metrics
    assert b'"level":"warning"' in stderr
    assert b"cuda requested" in stderr


def test_an_unknown_provider_is_refused_before_anything_loads() -> None:
    from tandem.server.cli import serve

    result = CliRunner().invoke(serve, ["--model-name", "m", "--model-uri", "file:///nope", "--execution-provider",
                                        "gpu"])  # fmt: skip
    assert result.exit_code == 2
    assert "'gpu' is not one of 'auto', 'cpu', 'cuda', 'tensorrt'" in result.output
