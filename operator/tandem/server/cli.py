"""`tandem serve`: the inference server's entry point. Every option reads its TANDEM_* variable.

This module imports only click and the standard library at import time: `tandem --help` must stay fast and
the serve image must never need torch.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from tandem.server import config as defaults
from tandem.server.options import model_options, runtime_options

log = logging.getLogger("tandem.server")


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (as Go programs do): 1024 would cap open connections first."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            log.warning("cannot raise the open-files limit", extra={"soft": soft, "hard": hard})


def _install_loop() -> None:
    """uvloop when installed (about twice the request rate of asyncio's default loop)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@click.command("serve")
@click.option("--model-name", envvar="TANDEM_MODEL_NAME", required=True, help="V2 model name.")
@model_options
@click.option("--model-version", envvar="TANDEM_MODEL_VERSION", default=None, help="V2 model version.")
@click.option("--host", envvar="TANDEM_HOST", default="0.0.0.0", show_default=True)
@click.option("--http-port", envvar="TANDEM_HTTP_PORT", type=int, default=8080, show_default=True, help="V2 REST.")
@click.option(
    "--grpc-port", envvar="TANDEM_GRPC_PORT", type=int, default=defaults.DEFAULT_GRPC_PORT, show_default=True,
    help="V2 gRPC (inference.GRPCInferenceService).",
)  # fmt: skip
@click.option(
    "--metrics-port",
    envvar="TANDEM_METRICS_PORT",
    type=int,
    default=9090,
    show_default=True,
    help="GET /metrics port; the HTTP port serves /metrics itself when equal.",
)
@runtime_options
@click.option(
    "--access-log/--no-access-log",
    envvar="TANDEM_ACCESS_LOG",
    default=True,
    show_default=True,
    help="JSON access log lines on stdout.",
)
@click.option(
    "--max-request-bytes",
    envvar="TANDEM_MAX_REQUEST_BYTES",
    type=click.IntRange(min=1),
    default=defaults.DEFAULT_MAX_REQUEST_BYTES,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option(
    "--idle-timeout", envvar="TANDEM_IDLE_TIMEOUT_S", type=click.FloatRange(min=0, min_open=True),
    default=defaults.DEFAULT_IDLE_TIMEOUT_S, show_default=True,
    help="Seconds a keep-alive connection may sit idle (HTTP and gRPC).",
)  # fmt: skip
@click.option(
    "--header-timeout", envvar="TANDEM_HEADER_TIMEOUT_S", type=click.FloatRange(min=0, min_open=True),
    default=defaults.DEFAULT_HEADER_TIMEOUT_S, show_default=True,
    help="Seconds from a request's first byte to the end of its headers; then 408.",
)  # fmt: skip
@click.option(
    "--body-timeout", envvar="TANDEM_BODY_TIMEOUT_S", type=click.FloatRange(min=0, min_open=True),
    default=defaults.DEFAULT_BODY_TIMEOUT_S, show_default=True,
    help="Seconds from the end of the headers to the end of the body; then 408.",
)  # fmt: skip
@click.option(
    "--max-connections", envvar="TANDEM_MAX_CONNECTIONS", type=click.IntRange(min=1),
    default=defaults.DEFAULT_MAX_CONNECTIONS, show_default=True,
    help="Open HTTP connections; one more is answered 503 with Retry-After.",
)  # fmt: skip
@click.option(
    "--max-queued-requests", envvar="TANDEM_MAX_QUEUED_REQUESTS", type=click.IntRange(min=0),
    default=defaults.DEFAULT_MAX_QUEUED_REQUESTS, show_default=True,
    help="Infer requests waiting beyond the running ones; one more gets 503 + Retry-After (gRPC UNAVAILABLE).",
)  # fmt: skip
@click.option(
    "--memory-budget-bytes", envvar="TANDEM_MEMORY_BUDGET_BYTES", type=click.IntRange(min=1), default=None,
    help="Bytes that request bodies in flight and the work queued on them may hold (REST and gRPC); a request "
    "beyond it gets 503 + Retry-After (gRPC RESOURCE_EXHAUSTED) before it is parsed [default: half the cgroup "
    "memory limit, or of the machine's memory].",
)  # fmt: skip
@click.option(
    "--max-concurrent-rpcs", envvar="TANDEM_MAX_CONCURRENT_RPCS", type=click.IntRange(min=1), default=None,
    help="gRPC calls in progress at once; one more gets RESOURCE_EXHAUSTED [default: workers + half of "
    f"--max-queued-requests + {defaults.GRPC_SPARE_RPCS}, so REST always finds room in the queue].",
)  # fmt: skip
@click.option(
    "--drain-timeout",
    envvar="TANDEM_DRAIN_TIMEOUT_S",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="Seconds in-flight requests get after SIGTERM.",
)
@click.option("--log-level", envvar="TANDEM_LOG_LEVEL", default="INFO", show_default=True)
def serve(
    model_name: str,
    model_uri: str,
    model_sha256: str | None,
    model_version: str | None,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    threads: int | None,
    workers: int | None,
    max_batch_size: int,
    max_batch_delay_ms: float,
    execution_provider: str,
    access_log: bool,
    max_request_bytes: int,
    idle_timeout: float,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    max_queued_requests: int,
    memory_budget_bytes: int | None,
    max_concurrent_rpcs: int | None,
    drain_timeout: float,
    log_level: str,
) -> None:
    """Serve one ONNX model over the Open Inference Protocol (KServe V2), REST and gRPC."""
    from tandem.cgroup import default_memory_budget, default_threads, lone_run_threads, sized_runtime
    from tandem.server.app import InferenceServer
    from tandem.server.logs import configure_logging
    from tandem.server.providers import ExecutionProvider

    configure_logging(log_level.upper())
    cores = default_threads()
    lone_threads = lone_run_threads(threads, cores)
    threads, workers = sized_runtime(threads, workers, cores)
    config = defaults.ServerConfig(
        model_name=model_name,
        model_uri=model_uri,
        model_sha256=model_sha256 or None,
        model_version=model_version or None,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        threads=threads,
        workers=workers,
        lone_run_threads=lone_threads,
        max_batch_size=max_batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        execution_provider=ExecutionProvider(execution_provider),
        access_log=access_log,
        max_request_bytes=max_request_bytes,
        idle_timeout_s=idle_timeout,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
        max_queued_requests=max_queued_requests,
        memory_budget_bytes=memory_budget_bytes or default_memory_budget(),
        max_concurrent_rpcs=max_concurrent_rpcs,
        drain_timeout_s=drain_timeout,
    )
    log.info("starting", extra={"config": config.__dict__})
    _raise_open_files_limit()
    _install_loop()

    async def main() -> int:
        return await InferenceServer(config).run()

    sys.exit(asyncio.run(main()))
