"""Server settings, one field per `tandem serve` option (and so per TANDEM_* environment variable)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.server.providers import ExecutionProvider

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_GRPC_PORT = 8081
"""KServe's gRPC port, so clients and probes written for KServe find it where they expect."""
DEFAULT_IDLE_TIMEOUT_S = 75.0
"""Longer than the idle timeouts of common proxies and load balancers (60 s), so the server is never the
side that closes a keep-alive connection the proxy is about to reuse."""
DEFAULT_HEADER_TIMEOUT_S = 10.0
"""From a request's first byte to the end of its headers: headers are small; only a slow-loris takes longer."""
DEFAULT_BODY_TIMEOUT_S = 60.0
"""From the end of the headers to the end of the body: a 64 MiB body at 1 MiB/s still fits."""
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_URL_BYTES = 8 * 1024
"""Bytes of a request target (path and query); a longer one is answered 414 and the connection closed. nginx
and Apache refuse request lines over 8 KiB too; a V2 path is under 200 bytes, so only an attack or a bug
sends more."""
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
"""Bytes of a request's head (request line and headers); a larger one is answered 431 and the connection
closed, as soon as the limit is crossed. Four times Node's and h11's 16 KiB and above nginx's 4 x 8 KiB
buffers, so the headers proxies and tracing libraries add never reach it; a connection holds at most twice
this much of a head (when it begins in the same read as the end of the request before it) before it is
refused."""
GRPC_SPARE_RPCS = 32
"""gRPC calls allowed beyond gRPC's share of the infer requests the data plane admits, so health and metadata
calls still get through when inference is full."""
GRPC_SHARE_OF_QUEUE = 1 / 2
"""Share of the data plane's queue that gRPC calls may fill by default. grpcio holds a call before the data plane
sees it, so a flood of gRPC calls bounded only by the whole queue fills it and REST clients get 503: with half,
REST always finds room."""
DEFAULT_MAX_QUEUED_REQUESTS = 256
"""Infer requests waiting beyond the ones running: at a few thousand requests per second, well under 100 ms
of queue, which absorbs any burst a Service spreads over a replica and refuses a flood before it is a
latency disaster."""


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    model_uri: str
    model_sha256: str | None = None
    model_version: str | None = None
    host: str = "0.0.0.0"
    http_port: int = 8080
    grpc_port: int = DEFAULT_GRPC_PORT
    """V2 gRPC port; 0 picks a free one."""
    metrics_port: int = 9090
    """Port for GET /metrics; equal to http_port to serve it beside the V2 routes instead."""
    threads: int = 1
    """onnxruntime intra-op threads per run; `tandem serve` sizes it and `workers` with cgroup.sized_runtime."""
    workers: int = 2
    """onnxruntime runs in flight at once (executor threads)."""
    lone_run_threads: int = 0
    """Intra-op threads for a run that starts while no other is in progress (`lonerun`); 0: every run uses
    `threads`. `tandem serve` sets it to the CPU limit unless --threads is given."""
    max_batch_size: int = 0
    """Dynamic batching: rows per batched run; 0 or 1 turns batching off."""
    max_batch_delay_ms: float = 0.0
    """Dynamic batching: how long a free run waits for a batch to fill; 0 runs whatever is waiting at once."""
    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    """onnxruntime provider to ask for; `providers.plan_providers` decides what `auto` and a fallback give."""
    access_log: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open HTTP connections; one more is answered 503 with Retry-After."""
    max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS
    """Infer requests (REST and gRPC) waiting beyond the `workers` running; one more gets 503 / UNAVAILABLE."""
    memory_budget_bytes: int | None = None
    """Bytes that requests (bodies in flight, the work queued on them, REST and gRPC together) may hold
    (`budget`); None: no budget. `tandem serve` derives it from the cgroup memory limit unless given."""
    max_concurrent_rpcs: int | None = None
    """gRPC calls in progress at once; one more is answered RESOURCE_EXHAUSTED by grpcio before its message
    is read. None: the infer requests the data plane runs (`workers`), GRPC_SHARE_OF_QUEUE of those it queues
    (`max_queued_requests`), plus GRPC_SPARE_RPCS."""
    drain_timeout_s: float = 25.0
    """On SIGTERM, how long in-flight requests may take before connections are cut (pods get 30 s)."""
    spinning: bool = False
    """onnxruntime thread spinning; off so idle pool threads do not steal CPU from request parsing."""

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @property
    def grpc_concurrent_rpcs(self) -> int:
        if self.max_concurrent_rpcs is not None:
            return self.max_concurrent_rpcs
        return max(1, self.workers) + int(self.max_queued_requests * GRPC_SHARE_OF_QUEUE) + GRPC_SPARE_RPCS
