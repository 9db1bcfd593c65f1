"""Timing one ONNX model the way a serving replica runs it.

The model's bytes are fetched and sha256-checked with the server's own storage code and its V2 signature read
with the server's `signature_of`, so a model that profiles is a model that serves. The session is opened here
rather than through the server's OnnxModel because the server runs on CPU only, while a profile on a GPU pool
must try onnxruntime's CUDA provider and report honestly whether it got it.

Two bounded phases:
- latency: one request at a time at batch 1, after a warm-up, for percentiles of an unloaded replica;
- throughput: a closed loop of `concurrency` threads (the server's in-flight runs), each running batches of
  `max_batch_size` rows back to back for a fixed time. Rows over wall time is the replica's saturation rate;
  it leaves out the HTTP layer, which is why placement plans replicas below it (tandem.costing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem import storage
from tandem.profiling.result import Device, ProfileResult
from tandem.server import datatypes
from tandem.server.model import Signature, signature_of

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class ProfileError(Exception):
    """The model cannot be profiled: unreadable, a different sha256, or onnxruntime refuses it."""


@dataclass(frozen=True)
class ProfileSettings:
    """The serving settings the profile reproduces, and how long each phase may take."""

    threads: int = 1
    concurrency: int = 2
    max_batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    device: Device = Device.CPU
    warmup_seconds: float = 0.5
    latency_seconds: float = 2.0
    max_latency_samples: int = 5000
    throughput_seconds: float = 3.0


def load_model(uri: str, expected_sha256: str | None) -> tuple[bytes, str]:
    """The model's bytes and their sha256; ProfileError if unreadable or not the expected file."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise ProfileError(f"cannot read model from {uri}: {exc}") from exc
    digest = storage.sha256_hex(data)
    if expected_sha256 and digest != expected_sha256.lower():
        raise ProfileError(f"sha256 mismatch for {uri}: expected {expected_sha256}, got {digest}")
    return data, digest


def open_session(data: bytes, settings: ProfileSettings) -> Any:
    """An onnxruntime session with the server's options; CUDA first when asked for and available."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = [CPU_PROVIDER]
    if settings.device == Device.CUDA and CUDA_PROVIDER in ort.get_available_providers():
        providers = [CUDA_PROVIDER, CPU_PROVIDER]
    try:
        return ort.InferenceSession(data, options, providers=providers)
    except Exception as exc:
        raise ProfileError(f"onnxruntime cannot open the model: {exc}") from exc


def sample_feeds(signature: Signature, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes: the leading dynamic dimension is the batch, other dynamic ones 1.

    Floating-point inputs are random rather than zero, so no kernel takes a zero or denormal shortcut.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(
            (batch if index == 0 else 1) if dim < 0 else dim for index, dim in enumerate(spec.shape)
        )
        dtype = datatypes.NUMPY_DTYPES[spec.datatype]
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        elif spec.datatype in ("FP16", "FP32", "FP64"):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=dtype)
    return feeds


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000.0, q)), 4)


def time_runs(session: Any, feeds: dict[str, np.ndarray], seconds: float, max_samples: int) -> list[float]:
    """Seconds of each run, one at a time, for up to `seconds` or `max_samples` runs (at least 20)."""
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(timings) < max_samples and (len(timings) < 20 or time.perf_counter() < deadline):
        started = time.perf_counter()
        session.run(None, feeds)
        timings.append(time.perf_counter() - started)
    return timings


def closed_loop(
    session: Any, feeds: dict[str, np.ndarray], concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    """(runs completed, wall seconds, each run's seconds) with `concurrency` threads running back to back.

    onnxruntime releases the GIL inside run(), so the threads overlap as the server's executor threads do.
    """
    start = threading.Barrier(concurrency + 1)
    deadline: list[float] = [0.0]
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]

    def worker(timings: list[float]) -> None:
        start.wait()
        while True:
            began = time.perf_counter()
            if began >= deadline[0]:
                return
            session.run(None, feeds)
            timings.append(time.perf_counter() - began)

    threads = [threading.Thread(target=worker, args=(timings,), daemon=True) for timings in per_thread]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    runs = [timing for timings in per_thread for timing in timings]
    return len(runs), elapsed, runs


def profile(data: bytes, sha256: str, settings: ProfileSettings, cpus: int = 1) -> ProfileResult:
    """Measure the model: batch-1 latency percentiles, then the closed-loop throughput of one replica."""
    import onnxruntime as ort

    session = open_session(data, settings)
    providers = list(session.get_providers())
    device = Device.CUDA if CUDA_PROVIDER in providers else Device.CPU
    note = None
    if settings.device == Device.CUDA and device != Device.CUDA:
        available = ", ".join(ort.get_available_providers())
        note = f"CUDA requested but onnxruntime could not use it (available providers: {available}); ran on CPU"
    try:
        signature = signature_of(session)
    except Exception as exc:
        raise ProfileError(str(exc)) from exc
    single = sample_feeds(signature, 1)
    batch_size = max(1, settings.max_batch_size)
    batched = sample_feeds(signature, batch_size, seed=1)
    try:
        time_runs(session, single, settings.warmup_seconds, 10_000)
        if batch_size > 1:
            time_runs(session, batched, settings.warmup_seconds / 2, 1_000)
        latencies = time_runs(session, single, settings.latency_seconds, settings.max_latency_samples)
        runs, elapsed, loaded = closed_loop(session, batched, settings.concurrency, settings.throughput_seconds)
    except Exception as exc:
        raise ProfileError(f"onnxruntime failed on sample inputs: {exc}") from exc
    return ProfileResult(
        sha256=sha256,
        device=device,
        requested_device=settings.device,
        providers=providers,
        threads=settings.threads,
        concurrency=settings.concurrency,
        max_batch_size=batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms if batch_size > 1 else 0.0,
        p50_latency_ms=percentile_ms(latencies, 50),
        p90_latency_ms=percentile_ms(latencies, 90),
        p99_latency_ms=percentile_ms(latencies, 99),
        latency_samples=len(latencies),
        throughput_per_replica=round(runs * batch_size / elapsed, 2) if elapsed > 0 else 0.0,
        loaded_p99_latency_ms=percentile_ms(loaded, 99) if loaded else 0.0,
        throughput_seconds=round(elapsed, 3),
        onnxruntime=str(ort.__version__),
        cpus=max(1, cpus),
        note=note,
    )
