"""`tandem profile` against a real `tandem serve`: the figures the operator reads, and how it fails.

The profiler measures whatever server answers at its URL, as it does beside the replica's server container
in a profile Job; here that server is a subprocess on loopback.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.cluster import free_port
from support.server_procs import serving
from tandem.api.profile import ProfileFailure, ProfileResult
from tandem.cli import main
from tandem.profiling import load

FAST = ["--latency-seconds", "0.3", "--throughput-seconds", "0.5"]

def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["profile", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[tuple[int, int]]:
    """(HTTP port, metrics port) of `tandem serve` with the linear model, one thread, no batching."""
    metrics = free_port()
    # No access log: the test never reads the pipe, so its lines would only be dropped.
    env = {"TANDEM_METRICS_PORT": str(metrics), "TANDEM_ACCESS_LOG": "false"}
    with serving(model_dir / "linear.onnx", env=env) as (_, port):
        yield port, metrics


@pytest.fixture(scope="module")
def batching_server(model_dir: Path) -> Iterator[tuple[int, int]]:
    metrics = free_port()
    env = {
        "TANDEM_METRICS_PORT": str(metrics), "TANDEM_ACCESS_LOG": "false", "TANDEM_MAX_BATCH_SIZE": "8",
        "TANDEM_WORKERS": "1",
    }
    with serving(model_dir / "linear.onnx", env=env) as (_, port):
        yield port, metrics


def profile_args(ports: tuple[int, int], *extra: str) -> list[str]:
    port, metrics = ports
    return [
        "--url", f"http://127.0.0.1:{port}", "--metrics-url", f"http://127.0.0.1:{metrics}/metrics",
        "--model-name", "linear", *FAST, *extra,
    ]

def test_a_profile_measures_the_server_over_http_and_writes_the_termination_message(
    server: tuple[int, int], tmp_path: Path
) -> None:
    message = tmp_path / "termination-log"
    code, out, _ = run(
        *profile_args(server, "--model-sha256", "AB" * 32, "--concurrency", "2"),
        "--termination-message-path", str(message),
    )
    assert code == 0
    result = ProfileResult.model_validate_json(message.read_text())
    assert result == ProfileResult.model_validate(json.loads(out))
    assert result.sha256 == "ab" * 32
    assert (result.device, result.providers) == ("cpu", ["cpu"])  # as the server reports it, not assumed
    assert result.concurrency == 2 and result.max_batch_size == 1
    assert result.latency_samples >= 20
    assert 0 < result.p50_latency_ms <= result.p90_latency_ms <= result.p99_latency_ms
    assert result.throughput_per_replica > 0 and result.loaded_p99_latency_ms > 0
    assert result.slo_latency_ms == max(result.p99_latency_ms, result.loaded_p99_latency_ms)
    assert result.onnxruntime
    assert len(message.read_text()) < 4096  # what Kubernetes keeps of a termination message

def high_water_mark(pid: int) -> int:
    """The kernel's count of a process's most resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_a_profile_reports_the_servers_footprint_as_the_kernel_counts_it(model_dir: Path) -> None:
    metrics = free_port()
    env = {"TANDEM_METRICS_PORT": str(metrics), "TANDEM_ACCESS_LOG": "false"}
    with serving(model_dir / "linear.onnx", env=env) as (process, port):
        before = high_water_mark(process.pid)
        code, out, _ = run(*profile_args((port, metrics)))
        after = high_water_mark(process.pid)
    assert code == 0
    result = ProfileResult.model_validate(json.loads(out))
    assert result.peak_resident_bytes is not None and before <= result.peak_resident_bytes <= after


def test_a_batching_server_is_measured_with_its_batches_and_their_delay(batching_server: tuple[int, int]) -> None:
    code, out, _ = run(*profile_args(batching_server, "--concurrency", "8", "--max-batch-size", "8"))
    assert code == 0
    result = ProfileResult.model_validate(json.loads(out))
    assert (result.max_batch_size, result.concurrency) == (8, 8)
    with urllib.request.urlopen(f"http://127.0.0.1:{batching_server[1]}/metrics", timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    figures = dict(line.rsplit(" ", 1) for line in lines if line.startswith("tandem_inference_batch"))
    rows = float(figures['tandem_inference_batch_size_sum{model="linear"}'])
    runs = float(figures['tandem_inference_batch_size_count{model="linear"}'])
    assert rows > runs  # the server formed batches of more than one row while the profile ran


def test_a_gpu_profile_of_a_cpu_server_says_what_it_got(server: tuple[int, int]) -> None:
    code, out, _ = run(*profile_args(server, "--device", "cuda"))
    assert code == 0
    result = ProfileResult.model_validate(json.loads(out))
    assert (result.requested_device, result.device) == ("cuda", "cpu")
    assert result.note is not None and "CUDA requested" in result.note

def test_a_server_that_never_gets_ready_fails_with_a_readable_message(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    code, _, err = run(
        "--url", f"http://127.0.0.1:{free_port()}", "--ready-seconds", "0.5",
        "--termination-message-path", str(message), *FAST,
    )
    assert code == 1
    failure = ProfileFailure.model_validate_json(message.read_text())
    assert "did not become ready within 0.5s" in failure.error and "server container's log" in failure.error
    assert failure.error in err

def test_a_model_name_the_server_does_not_serve_is_named_in_the_failure(server: tuple[int, int]) -> None:
    code, _, err = run(*profile_args(server)[:4], "--model-name", "absent", "--ready-seconds", "0.5", *FAST)
    assert code == 1 and "HTTP 404" in err

def test_the_fixed_rate_load_sends_every_request_and_checks_each_answer(server: tuple[int, int]) -> None:
    url = f"http://127.0.0.1:{server[0]}"
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    sent = load.fixed_rate(url, "linear", body.encode(), rate=100, seconds=0.5, connections=4)
    assert len(sent.latencies) == 50 and sent.seconds >= 0.49
    wrong = json.dumps({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]})
    with pytest.raises(load.LoadError, match="answered 400"):
        load.fixed_rate(url, "linear", wrong.encode(), rate=50, seconds=0.2, connections=2)
    with pytest.raises(load.LoadError, match="answered 400"):
        load.closed_loop(url, "linear", wrong.encode(), concurrency=2, seconds=0.2)
