"""`tandem profile`: measure a running model server the way its clients reach it; print JSON and write the
termination message.

The operator runs it in a profile Job beside the replica's own server container (a native sidecar in the same
pod, so it talks to it on loopback) on each candidate pool of a `placement: auto` InferenceService, and reads
the JSON back from the pod's termination message. It measures whatever answers at --url, so it also measures
a server started by hand. Imports only click at import time, like `tandem serve`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _write_message(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:  # a missing /dev/termination-log outside a pod must not hide the result
        click.echo(f"cannot write termination message to {path}: {exc}", err=True)


@click.command("profile")
@click.option("--url", envvar="TANDEM_PROFILE_URL", default="http://127.0.0.1:8080", show_default=True,
              help="The model server's HTTP address.")
@click.option("--metrics-url", envvar="TANDEM_PROFILE_METRICS_URL", default="http://127.0.0.1:9090/metrics",
              show_default=True, help="Its metrics, where it reports the execution provider the model runs on.")
@click.option("--model-name", envvar="TANDEM_MODEL_NAME", default="model", show_default=True,
              help="The served model's name.")
@click.option("--model-sha256", envvar="TANDEM_MODEL_SHA256", default=None,
              help="The model's sha256, as the server checked it; reported in the JSON.")
@click.option("--concurrency", envvar="TANDEM_PROFILE_CONCURRENCY", type=click.IntRange(min=1), default=1,
              show_default=True, help="Requests in flight in the throughput phase (runs in flight x batch size).")
@click.option("--threads", envvar="TANDEM_THREADS", type=click.IntRange(min=1), default=1, show_default=True,
              help="The server's intra-op threads, for the record.")
@click.option("--max-batch-size", envvar="TANDEM_MAX_BATCH_SIZE", type=click.IntRange(min=0), default=1,
              show_default=True, help="The server's dynamic batching, for the record.")
@click.option("--max-batch-delay-ms", envvar="TANDEM_MAX_BATCH_DELAY_MS", type=click.FloatRange(min=0),
              default=0.0, show_default=True, help="The server's batch delay, for the record.")
@click.option("--device", envvar="TANDEM_PROFILE_DEVICE", type=click.Choice(["cpu", "cuda"]), default="cpu",
              show_default=True, help="Device the replica should run on; the JSON says which one it got.")
@click.option("--ready-seconds", envvar="TANDEM_PROFILE_READY_SECONDS", type=click.FloatRange(min=0),
              default=300.0, show_default=True, help="How long to wait for the server to load its model.")
@click.option("--latency-seconds", envvar="TANDEM_PROFILE_LATENCY_SECONDS", type=click.FloatRange(min=0),
              default=2.0, show_default=True, help="Length of the one-at-a-time latency phase (at least 20).")
@click.option("--throughput-seconds", envvar="TANDEM_PROFILE_THROUGHPUT_SECONDS",
              type=click.FloatRange(min=0.01), default=3.0, show_default=True,
              help="Length of the closed-loop throughput phase.")
@click.option("--termination-message-path", envvar="TANDEM_TERMINATION_MESSAGE_PATH", default=None,
              help="Also write the JSON here (the pod's terminationMessagePath).")
def profile(
    url: str,
    metrics_url: str,
    model_name: str,
    model_sha256: str | None,
    concurrency: int,
    threads: int,
    max_batch_size: int,
    max_batch_delay_ms: float,
    device: str,
    ready_seconds: float,
    latency_seconds: float,
    throughput_seconds: float,
    termination_message_path: str | None,
) -> None:
    """Measure latency percentiles and throughput of one running replica; print JSON."""
    from tandem.api.profile import Device, ProfileFailure
    from tandem.profiling.measure import ProfileError, ProfileSettings
    from tandem.profiling.measure import profile as measure

    settings = ProfileSettings(
        url=url.rstrip("/"),
        metrics_url=metrics_url,
        model=model_name,
        sha256=(model_sha256 or "").lower() or None,
        threads=threads,
        concurrency=concurrency,
        max_batch_size=max(1, max_batch_size),
        max_batch_delay_ms=max_batch_delay_ms,
        device=Device(device),
        ready_seconds=ready_seconds,
        latency_seconds=latency_seconds,
        throughput_seconds=throughput_seconds,
    )
    try:
        result = measure(settings)
    except ProfileError as exc:
        failure = ProfileFailure(error=str(exc)[:3000]).model_dump_json(by_alias=True)
        _write_message(termination_message_path, failure)
        click.echo(failure, err=True)
        sys.exit(1)
    text = result.model_dump_json(by_alias=True, exclude_none=True)
    _write_message(termination_message_path, text)
    click.echo(json.dumps(json.loads(text), indent=2))
