"""Timing one model the way a serving replica delivers it: requests to the real server, over HTTP.

The profile Job runs the replica's own server container (same image, CPU limit, threads, batching and
execution provider) beside this profiler, which waits for it to be ready, reads the model's V2 metadata for
its inputs, and sends batch-1 JSON requests as clients would. So the figures include what an in-process
`session.run` loop leaves out (HTTP, JSON decoding, the event loop, dynamic batching) and come from the
execution provider the replica really got, which the server reports on its metrics endpoint, as it reports
its footprint (its resident high-water mark), from which the operator plans a replica's memory.

Two bounded phases:
- latency: one request at a time, after a warm-up, for percentiles of an unloaded replica;
- throughput: a closed loop at the concurrency that keeps every run in flight busy (runs x batch rows),
  answered requests over wall time, with the p99 a request sees at that load.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata as distributions
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tandem.api.profile import Device, ProfileResult
from tandem.profiling.load import LoadError, closed_loop
from tandem.server import datatypes

GPU_PROVIDERS = ("cuda", "tensorrt")
"""How the server names the GPU providers in its execution-provider metric."""
PROVIDER_METRIC = "tandem_model_execution_provider"
PEAK_RESIDENT_METRIC = "tandem_server_peak_resident_bytes"


class ProfileError(Exception):
    """The replica could not be measured: it never became ready, or it refused the sample requests."""


@dataclass(frozen=True)
class ProfileSettings:
    """Where the replica's server listens, the settings it runs with, and how long each phase may take."""

    url: str = "http://127.0.0.1:8080"
    metrics_url: str = "http://127.0.0.1:9090/metrics"
    model: str = "model"
    sha256: str | None = None
    threads: int = 1
    concurrency: int = 1
    max_batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    device: Device = Device.CPU
    ready_seconds: float = 300.0
    warmup_seconds: float = 0.5
    latency_seconds: float = 2.0
    max_latency_samples: int = 5000
    throughput_seconds: float = 3.0


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_ready(settings: ProfileSettings) -> None:
    """Block until the server answers ready; ProfileError with its last answer when it never does.

    A model that cannot load (unreadable, another sha256, refused by onnxruntime) ends the server process;
    its reason is in the server container's log and its terminated state, which the operator reads.
    """
    deadline = time.monotonic() + settings.ready_seconds
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status, body = _get(f"{settings.url}/v2/models/{settings.model}/ready", timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200].decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ProfileError(
        f"the model server did not become ready within {settings.ready_seconds:g}s (last answer: {last}); "
        "the server container's log says why"
    )


def model_metadata(settings: ProfileSettings) -> dict[str, Any]:
    status, body = _get(f"{settings.url}/v2/models/{settings.model}")
    if status != 200:
        raise ProfileError(f"model metadata answered HTTP {status}: {body[:300].decode(errors='replace')}")
    document: dict[str, Any] = json.loads(body)
    return document


def sample_request(document: dict[str, Any], seed: int = 0) -> bytes:
    """A batch-1 V2 JSON request of the declared inputs: dynamic dimensions 1, floats random (no zero shortcut)."""
    rng = np.random.default_rng(seed)
    inputs: list[dict[str, Any]] = []
    for spec in document.get("inputs") or []:
        shape = [1 if int(dim) < 0 else int(dim) for dim in spec["shape"]]
        datatype = str(spec["datatype"])
        size = int(np.prod(shape)) if shape else 1
        data: list[Any]
        if datatype == "BYTES":
            data = [""] * size
        elif datatype in ("FP16", "FP32", "FP64"):
            data = [round(float(value), 6) for value in rng.standard_normal(size)]
        elif datatype == "BOOL":
            data = [False] * size
        elif datatype in datatypes.NUMPY_DTYPES:
            data = [0] * size
        else:
            raise ProfileError(f"input {spec.get('name')!r} has datatype {datatype}, which the profiler cannot fill")
        inputs.append({"name": spec["name"], "shape": shape, "datatype": datatype, "data": data})
    if not inputs:
        raise ProfileError("the model's metadata lists no inputs")
    return json.dumps({"inputs": inputs}, separators=(",", ":")).encode()


def _server_samples(settings: ProfileSettings) -> list[Sample]:
    """The samples of the server's metrics page, or [] when it cannot be read or is not Prometheus text."""
    try:
        status, body = _get(settings.metrics_url)
        if status != 200:
            return []
        return [sample for family in text_string_to_metric_families(body.decode()) for sample in family.samples]
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return []


def execution_providers(samples: list[Sample]) -> list[str]:
    """The providers the server says the model runs on (its metrics), or [] when it does not say."""
    return [
        sample.labels["provider"]
        for sample in samples
        if sample.name == PROVIDER_METRIC and sample.value == 1.0 and "provider" in sample.labels
    ]


def peak_resident_bytes(samples: list[Sample]) -> int | None:
    """The server process's resident high-water mark from its metrics, or None when it does not say."""
    peak = next((int(sample.value) for sample in samples if sample.name == PEAK_RESIDENT_METRIC), 0)
    return peak or None


def percentile_ms(seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000.0, q)), 4)


def one_at_a_time(settings: ProfileSettings, body: bytes, seconds: float, max_samples: int) -> list[float]:
    """Seconds of each request sent alone, for `seconds` (at least 20 requests, at most `max_samples`)."""
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(timings) < max_samples and (len(timings) < 20 or time.perf_counter() < deadline):
        rest = max(0.05, deadline - time.perf_counter())
        timings += closed_loop(settings.url, settings.model, body, 1, rest).latencies[: max_samples - len(timings)]
    return timings


def _onnxruntime_version() -> str:
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return distributions.version(name)
        except distributions.PackageNotFoundError:
            continue
    return ""


def profile(settings: ProfileSettings) -> ProfileResult:
    """Measure the replica: unloaded batch-1 latency, then closed-loop throughput at its concurrency."""
    wait_ready(settings)
    body = sample_request(model_metadata(settings))
    try:
        closed_loop(settings.url, settings.model, body, settings.concurrency, settings.warmup_seconds)
        latencies = one_at_a_time(settings, body, settings.latency_seconds, settings.max_latency_samples)
        loaded = closed_loop(settings.url, settings.model, body, settings.concurrency, settings.throughput_seconds)
    except LoadError as exc:
        raise ProfileError(f"the server refused the sample requests: {exc}") from exc
    metrics = _server_samples(settings)  # after the throughput phase: the footprint under load
    providers = execution_providers(metrics)
    device = Device.CUDA if any(provider in GPU_PROVIDERS for provider in providers) else Device.CPU
    note = None
    if not providers:
        note = "the server did not report its execution provider; counted as CPU"
    elif settings.device == Device.CUDA and device != Device.CUDA:
        note = f"CUDA requested but the server runs the model on {', '.join(providers)}"
    batch = max(1, settings.max_batch_size)
    return ProfileResult(
        sha256=settings.sha256,
        device=device,
        requested_device=settings.device,
        providers=providers,
        threads=settings.threads,
        concurrency=settings.concurrency,
        max_batch_size=batch,
        max_batch_delay_ms=settings.max_batch_delay_ms if batch > 1 else 0.0,
        p50_latency_ms=percentile_ms(latencies, 50),
        p90_latency_ms=percentile_ms(latencies, 90),
        p99_latency_ms=percentile_ms(latencies, 99),
        latency_samples=len(latencies),
        throughput_per_replica=round(loaded.rate, 2),
        loaded_p99_latency_ms=percentile_ms(loaded.latencies, 99) if loaded.latencies else 0.0,
        throughput_seconds=round(loaded.seconds, 3),
        onnxruntime=_onnxruntime_version(),
        peak_resident_bytes=peak_resident_bytes(metrics),
        note=note,
    )
