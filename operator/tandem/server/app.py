"""Assembles the server (model, data plane, REST routes on the HTTP front, the gRPC front) and runs its lifecycle.

Order matters for Kubernetes: listen first, so the liveness probe passes while a large model downloads;
load and warm up in a worker thread; only then does /v2/health/ready answer 200. A model that cannot be
loaded (unreadable URI, sha256 mismatch, onnxruntime refusal) is logged and the process exits 1 without
ever becoming ready. SIGTERM: not ready, stop accepting, finish in-flight requests (REST and gRPC at once), exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from tandem.server.budget import (
    GRPC_READERS,
    MemoryBudget,
    grpc_message_bytes,
    requests_share,
    rest_charge,
    wide_session_max_model_bytes,
)
from tandem.server.config import ServerConfig
from tandem.server.dataplane import DataPlane
from tandem.server.errors import ModelLoadError
from tandem.server.grpcserver import GrpcFront
from tandem.server.httpserver import HttpServer, Request, Response, error_response
from tandem.server.logs import AccessLog
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel, SessionSettings
from tandem.server.rest import RestApp

log = logging.getLogger("tandem.server")


class InferenceServer:
    def __init__(self, config: ServerConfig, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.executor = ThreadPoolExecutor(max_workers=max(1, config.workers), thread_name_prefix="ort")
        self.dataplane = DataPlane(
            self.executor, self.metrics.batch, max_in_flight=max(1, config.workers) + config.max_queued_requests
        )
        self.budget = self._budget(config.memory_budget_bytes)
        self.model = OnnxModel(
            config.model_name,
            config.model_uri,
            sha256=config.model_sha256,
            version=config.model_version,
            session=SessionSettings(
                intra_op_threads=config.threads,
                lone_run_threads=config.lone_run_threads,
                spinning=config.spinning,
                execution_provider=config.execution_provider,
                wide_session_max_model_bytes=(
                    None
                    if config.memory_budget_bytes is None
                    else wide_session_max_model_bytes(config.memory_budget_bytes)
                ),
            ),
        )
        self.dataplane.add(self.model)
        self.shared_metrics_port = config.metrics_port == config.http_port
        self.rest = RestApp(self.dataplane, self.metrics, serve_metrics=self.shared_metrics_port)
        if access_log is None and config.access_log:
            access_log = AccessLog(on_drop=self.metrics.access_log_dropped.inc)
        self.access_log = access_log
        self.http = HttpServer(
            self.rest,
            max_request_bytes=config.max_request_bytes,
            access_log=self.access_log,
            idle_timeout_s=config.idle_timeout_s,
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            max_connections=config.max_connections,
            budget=self.budget,
            charge=rest_charge,
        )
        limit = config.memory_budget_bytes
        self.grpc = GrpcFront(
            self.dataplane,
            self.metrics,
            max_message_bytes=config.max_request_bytes
            if limit is None
            else grpc_message_bytes(limit, config.max_request_bytes),
            idle_timeout_s=config.idle_timeout_s,
            access_log=self.access_log,
            max_concurrent_rpcs=config.grpc_concurrent_rpcs,
            budget=self.budget,
            readers=None if limit is None else GRPC_READERS,
            read_timeout_s=config.body_timeout_s,
        )
        self.http_port = config.http_port
        self.grpc_port = config.grpc_port
        self.metrics_port = config.metrics_port
        self._stop = asyncio.Event()

    def _budget(self, limit: int | None) -> MemoryBudget | None:
        """The memory budget both fronts charge requests to, all of `limit` but the room kept for reading gRPC
        messages, published as metrics; None without a limit."""
        if limit is None:
            return None
        budget = MemoryBudget(
            requests_share(limit, self.config.max_request_bytes), on_refuse=self.metrics.memory_refused.inc
        )
        self.metrics.memory_budget.set(limit)
        self.metrics.memory_held.set_function(lambda: budget.held)
        return budget

    def _metrics_only(self, request: Request) -> Response:
        if request.path.rstrip("/") == "/metrics" and request.method in ("GET", "HEAD"):
            return self.rest.metrics_response()
        return error_response(404, f"only /metrics is served on this port, not {request.path}")

    async def start(self) -> None:
        """Listen on the HTTP, gRPC (and metrics) ports; the model is not loaded yet."""
        self.http_port = await self.http.listen(self.config.host, self.config.http_port)
        self.grpc_port = await self.grpc.listen(self.config.host, self.config.grpc_port)
        if not self.shared_metrics_port:
            self.metrics_port = await self.http.listen(self.config.host, self.config.metrics_port, self._metrics_only)
        log.info(
            "listening",
            extra={"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port},
        )

    async def load(self) -> None:
        """Load and warm up the model in a worker thread; ModelLoadError if it cannot be served."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.model.load)
        if self.config.batching:
            self.dataplane.enable_batching(
                self.model, self.config.max_batch_size, self.config.max_batch_delay_ms / 1000, self.config.workers
            )
        self.metrics.serving(self.model.name)
        self.metrics.model_ready.labels(self.model.name).set(1)
        self.metrics.execution_provider.labels(
            self.model.name, self.model.version or "", self.model.execution_provider or "cpu"
        ).set(1)
        log.info(
            "ready",
            extra={
                "model": self.model.name,
                "sha256": self.model.sha256,
                "execution_provider": self.model.execution_provider,
            },
        )

    def stop(self) -> None:
        """Ask `run` to drain and return (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def run(self) -> int:
        """Serve until stopped; the process exit code: 0 after a clean drain, 1 if the model failed."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        await self.start()
        loader = asyncio.ensure_future(self.load())
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([loader, stopper], return_when=asyncio.FIRST_COMPLETED)
        if loader.done() and loader.exception() is not None:
            error = loader.exception()
            message = str(error) if isinstance(error, ModelLoadError) else repr(error)
            log.error("model failed to load; not becoming ready", extra={"error": message})
            stopper.cancel()
            await self.shutdown()
            return 1
        await stopper
        log.info("SIGTERM: draining", extra={"in_flight_connections": len(self.http.connections)})
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        self.rest.draining = True
        self.grpc.draining = True
        self.metrics.model_ready.labels(self.model.name).set(0)
        drained, _ = await asyncio.gather(
            self.http.drain(self.config.drain_timeout_s), self.grpc.drain(self.config.drain_timeout_s)
        )
        if self.access_log is not None:
            self.access_log.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped", extra={"drained": drained})
