"""Prometheus metrics, tandem_ prefixed, in a registry of the server's own (so tests can run several).

Label children are cached: `Counter.labels()` costs a dict build and a lock per call, which shows at
thousands of requests per second on one core.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025,
    0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "tandem_inference_requests",
            "Inference requests by model and HTTP status code.",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tandem_inference_request_duration_seconds",
            "Time from a complete infer request to its response, by model.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "tandem_inference_batch_size",
            "Rows per onnxruntime run, by model (above 1 with dynamic batching or batched requests).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "tandem_inference_in_flight",
            "Infer requests received and not yet answered, by model.",
            ["model"],
            registry=self.registry,
        )
        self.model_ready = Gauge(
            "tandem_model_ready",
            "1 when the model is loaded and warmed up.",
            ["model"],
            registry=self.registry,
        )
        self.execution_provider = Gauge(
            "tandem_model_execution_provider",
            "1 for the onnxruntime execution provider (cpu, cuda, tensorrt) that runs the model after any fallback.",
            ["model", "version", "provider"],
            registry=self.registry,
        )
        self.access_log_dropped = Counter(
            "tandem_server_access_log_dropped",
            "Access-log lines dropped because stdout was not read fast enough (the log never blocks serving).",
            registry=self.registry,
        )
        self.memory_budget = Gauge(
            "tandem_server_memory_budget_bytes",
            "Bytes that requests (bodies in flight and the work queued on them, REST and gRPC) may hold.",
            registry=self.registry,
        )
        self.memory_held = Gauge(
            "tandem_server_memory_held_bytes",
            "Bytes of the memory budget charged to requests not yet answered.",
            registry=self.registry,
        )
        self.memory_refused = Counter(
            "tandem_server_memory_refused",
            "Requests refused before they were parsed because the memory budget could not hold them (503/413, "
            "gRPC RESOURCE_EXHAUSTED).",
            registry=self.registry,
        )
        self.peak_resident = Gauge(
            "tandem_server_peak_resident_bytes",
            "Most memory the server process has held resident since it started (its high-water mark): the "
            "footprint the operator plans a replica's memory from.",
            registry=self.registry,
        )
        self.peak_resident.set_function(peak_resident_bytes)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self._batch: dict[str, Histogram] = {}
        self._in_flight: dict[str, Gauge] = {}

    def serving(self, model: str) -> None:
        """Create the model's request and in-flight series at zero when it loads, as Prometheus advises for
        labelled metrics: a replica no request has reached yet reports a rate of 0 instead of no series, which
        an autoscaler reading it through prometheus-adapter needs in order to scale in."""
        self._requests.setdefault((model, 200), self.requests.labels(model, "200"))
        self._in_flight.setdefault(model, self.in_flight.labels(model))

    def started(self, model: str) -> None:
        gauge = self._in_flight.get(model)
        if gauge is None:
            gauge = self._in_flight[model] = self.in_flight.labels(model)
        gauge.inc()

    def finished(self, model: str, code: int, seconds: float) -> None:
        key = (model, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(model, str(code))
        counter.inc()
        histogram = self._latency.get(model)
        if histogram is None:
            histogram = self._latency[model] = self.latency.labels(model)
        histogram.observe(seconds)
        self._in_flight[model].dec()

    def batch(self, model: str, rows: int) -> None:
        histogram = self._batch.get(model)
        if histogram is None:
            histogram = self._batch[model] = self.batch_size.labels(model)
        histogram.observe(rows)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def peak_resident_bytes() -> float:
    """The process's resident high-water mark (VmHWM), in bytes; 0 where /proc does not say.

    Not getrusage's ru_maxrss: Linux carries that over exec, so a server started by a larger process would
    report its parent's peak."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 0.0

