"""The trainer and server images doing their jobs under a pod's restrictions (uid 65532, read-only root,
/tmp as the only writable path besides their volumes, a memory limit): the trainer trains, exports, checks
and publishes digits into a mounted volume; the server serves that model to tritonclient. Bad mounts end
with a clear reason and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as v2

from images.conftest import Image, Pod, logs, remove, state
from support.cluster import free_port, wait_until

MODEL_MOUNT = "/models"
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class Trained:
    volume: Path
    exit_code: int
    output: str
    message: dict[str, Any]


def termination_file(folder: Path) -> Path:
    """What the kubelet mounts at /dev/termination-log: an empty file the container may write."""
    path = folder / "termination-log"
    path.touch()
    path.chmod(0o666)
    return path


@pytest.fixture(scope="module")
def trained(images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One run of the trainer image: `tandem train digits` into a mounted volume, as worker 0 runs it."""
    volume = tmp_path_factory.mktemp("volume")
    volume.chmod(0o777)
    message = termination_file(tmp_path_factory.mktemp("termination"))
    proc = Pod(images["trainer"], memory="3g").run(
        "train", "digits", "--epochs", "8", f"--output=file://{MODEL_MOUNT}/digits/v1",
        f"--checkpoint-uri=file://{MODEL_MOUNT}/digits/checkpoints",
        volumes={volume: MODEL_MOUNT, message: TERMINATION_LOG},
    )
    text = message.read_text()
    return Trained(volume, proc.returncode, proc.stdout + proc.stderr, json.loads(text) if text else {})


@dataclass(frozen=True)
class Served:
    rest: str
    """host:port of V2 REST."""
    grpc: str
    """host:port of V2 gRPC."""


@pytest.fixture
def served(images: dict[str, Image], trained: Trained) -> Iterator[Served]:
    """The server image serving the trained model from the read-only volume; yields its addresses."""
    assert trained.exit_code == 0, trained.output[-4000:]
    port, grpc_port = free_port(), free_port()
    # Host networking, bound to loopback only: nothing leaves the machine and no bridge is needed.
    container = Pod(images["server"], memory="512m", network="host").start(
        "serve", "--model-name", "digits", f"--model-uri=file://{MODEL_MOUNT}/digits/v1/model.onnx",
        f"--model-sha256={trained.message['sha256']}", "--host", "127.0.0.1", f"--http-port={port}",
        f"--grpc-port={grpc_port}", f"--metrics-port={free_port()}",
        volumes={trained.volume: f"{MODEL_MOUNT}:ro"},
    )
    client = v2.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        wait_until(lambda: _ready(client) or _exited(container), timeout=120, what="the server container to be ready")
        assert state(container)["Running"], logs(container)
        yield Served(f"127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    finally:
        client.close()
        remove(container)


def _ready(client: v2.InferenceServerClient) -> bool:
    try:
        return bool(client.is_model_ready("digits"))
    except Exception:
        return False


def _exited(container: str) -> bool:
    return not state(container)["Running"]


def test_trainer_image_trains_exports_checks_and_publishes_into_the_mounted_volume(trained: Trained) -> None:
    assert trained.exit_code == 0, trained.output[-4000:]
    model = trained.volume / "digits" / "v1" / "model.onnx"
    metadata = json.loads((trained.volume / "digits" / "v1" / "metadata.json").read_text())
    assert trained.message["uri"] == f"file://{MODEL_MOUNT}/digits/v1/model.onnx"
    assert trained.message["sha256"] == metadata["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    # The exporter's checks ran inside the image: onnx.checker, then onnxruntime against torch.
    assert metadata["parityMaxAbsDiff"] < 1e-4
    assert metadata["metrics"]["accuracy"] > 0.9
    assert list((trained.volume / "digits" / "checkpoints").iterdir())
    assert "Traceback" not in trained.output


def test_server_image_serves_the_trained_model_to_tritonclient(served: Served, trained: Trained) -> None:
    from tandem.trainer.digits import load_split

    split = load_split(None)
    pixels, labels = split.test_x.numpy(), split.test_y.numpy()
    client = v2.InferenceServerClient(url=served.rest)
    try:
        tensor = v2.InferInput("input", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels.astype(np.float32), binary_data=True)
        result = client.infer("digits", [tensor], outputs=[v2.InferRequestedOutput("logits", binary_data=True)])
    finally:
        client.close()
    logits = result.as_numpy("logits")
    assert logits is not None
    model = trained.volume / "digits" / "v1" / "model.onnx"
    expected = onnxruntime.InferenceSession(str(model)).run(["logits"], {"input": pixels.astype(np.float32)})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    # The trainer measured the same held-out digits with torch: at most a tie may flip one of them.
    assert accuracy == pytest.approx(trained.message["metrics"]["accuracy"], abs=1.5 / len(labels))


def test_server_image_serves_v2_grpc_beside_rest(served: Served, trained: Trained) -> None:
    import tritonclient.grpc as v2grpc

    model = trained.volume / "digits" / "v1" / "model.onnx"
    pixels = np.random.default_rng(0).random((4, 64), dtype=np.float32)
    client = v2grpc.InferenceServerClient(url=served.grpc)
    try:
        assert client.is_server_ready() and client.is_model_ready("digits")
        tensor = v2grpc.InferInput("input", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        result = client.infer("digits", [tensor], outputs=[v2grpc.InferRequestedOutput("logits")])
    finally:
        client.close()
    expected = onnxruntime.InferenceSession(str(model)).run(["logits"], {"input": pixels})[0]
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def _serve(image: Image, trained: Trained, *args: str) -> tuple[str, int, int]:
    """Start a server image on the trained digits model; (container, REST port, metrics port) once it is ready."""
    port, metrics_port = free_port(), free_port()
    container = Pod(image, memory="2g", network="host").start(
        "serve", "--model-name", "digits", f"--model-uri=file://{MODEL_MOUNT}/digits/v1/model.onnx",
        "--host", "127.0.0.1", f"--http-port={port}", f"--grpc-port={free_port()}", f"--metrics-port={metrics_port}",
        *args, volumes={trained.volume: f"{MODEL_MOUNT}:ro"},
    )
    client = v2.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        wait_until(lambda: _ready(client) or _exited(container), timeout=180, what="the server container to be ready")
    finally:
        client.close()
    assert state(container)["Running"], logs(container)
    return container, port, metrics_port


def _providers_in_metrics(metrics_port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return re.findall(r'^tandem_model_execution_provider\{model="digits",provider="(\w+)",version=""\} 1\.0$', text,
                      flags=re.M)


def _warnings(output: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "warning"]


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_gpu_server_image_without_a_gpu_serves_on_cpu(
    images: dict[str, Image], trained: Trained, requested: str
) -> None:
    """The GPU image on a node without a GPU (this machine): auto picks CPU quietly; a forced cuda tries the CUDA
    provider for real, which cannot load without the driver, and falls back to CPU with a warning. Both serve."""
    assert trained.exit_code == 0, trained.output[-4000:]
    container, port, metrics_port = _serve(images["server-gpu"], trained, f"--execution-provider={requested}")
    try:
        pixels = np.random.default_rng(0).random((4, 64), dtype=np.float32)
        client = v2.InferenceServerClient(url=f"127.0.0.1:{port}")
        try:
            tensor = v2.InferInput("input", list(pixels.shape), "FP32")
            tensor.set_data_from_numpy(pixels, binary_data=True)
            result = client.infer("digits", [tensor], outputs=[v2.InferRequestedOutput("logits", binary_data=True)])
        finally:
            client.close()
        model = trained.volume / "digits" / "v1" / "model.onnx"
        expected = onnxruntime.InferenceSession(str(model)).run(["logits"], {"input": pixels})[0]
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        assert _providers_in_metrics(metrics_port) == ["cpu"]
        output = logs(container)
    finally:
        remove(container)
    warnings = _warnings(output)
    if requested == "auto":
        assert warnings == [], output[-4000:]
    else:
        assert [w["message"] for w in warnings] == ["execution provider fallback"], output[-4000:]
        # Without a driver onnxruntime-gpu drops CUDA at session creation, after its own line naming libcuda.so.1:
        # the libraries its CUDA provider needs before the driver (cuBLAS, cuRAND, the CUDA runtime) were found.
        assert "dropped cuda" in warnings[0]["reason"], warnings[0]
        assert "libcuda.so.1" in output
    assert "Traceback" not in output


def test_server_image_without_its_model_exits_with_a_clear_error(images: dict[str, Image], tmp_path: Path) -> None:
    proc = Pod(images["server"], memory="512m").run(
        "serve", "--model-name", "digits", f"--model-uri=file://{MODEL_MOUNT}/missing/model.onnx",
        volumes={tmp_path: f"{MODEL_MOUNT}:ro"}, timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "/models/missing/model.onnx" in output
    assert "Traceback" not in output


def test_trainer_image_without_a_writable_output_fails_with_its_reason(
    images: dict[str, Image], tmp_path: Path
) -> None:
    # /out is not mounted: it would land on the read-only root filesystem.
    message = termination_file(tmp_path)
    proc = Pod(images["trainer"], memory="3g").run(
        "train", "digits", "--epochs", "1", "--output=file:///out/model", volumes={message: TERMINATION_LOG},
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode in (3, 4), output[-4000:]
    failure = json.loads(message.read_text())
    assert failure["reason"] == "OutputUnwritable"
    assert "/out/model" in failure["error"]
    assert "Traceback" not in output


def test_a_memory_limit_is_enforced_on_the_trainer(images: dict[str, Image]) -> None:
    # The limit is real: a trainer that cannot import torch in 64 MiB is OOM-killed, not swapped or ignored.
    pod = Pod(images["trainer"], memory="64m")
    proc = pod.run("train", "digits", "--epochs", "1", "--output=file:///tmp/model", timeout=300)
    assert proc.returncode == 137, proc.stdout + proc.stderr
