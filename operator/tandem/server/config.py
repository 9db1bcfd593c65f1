"""Server settings, one field per `tandem serve` option (and so per TANDEM_* environment variable)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    model_name: str
    model_uri: str
    model_sha256: str | None = None
    model_version: str | None = None
    host: str = "0.0.0.0"
    http_port: int = 8080
    metrics_port: int = 9090
    """Port for GET /metrics; equal to http_port to serve it beside the V2 routes instead."""
    threads: int = 1
    """onnxruntime intra-op threads."""
    workers: int = 2
    """onnxruntime runs in flight at once (executor threads); see docs/server.md for why 2."""
    max_batch_size: int = 0
    """Dynamic batching: rows per batched run; 0 or 1 turns batching off."""
    max_batch_delay_ms: float = 2.0
    """Dynamic batching: longest a request waits for others."""
    access_log: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    drain_timeout_s: float = 25.0
    """On SIGTERM, how long in-flight requests may take before connections are cut (pods get 30 s)."""
    spinning: bool = False
    """onnxruntime thread spinning; off so idle pool threads do not steal CPU from request parsing."""

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1
