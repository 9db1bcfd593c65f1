"""`tandem profile`: measure one ONNX model with a replica's settings, print JSON, write the termination message.

The operator runs it as a short Job on each candidate pool of a `placement: auto` InferenceService, with the
same image, CPU limit, threads and batching as a serving replica, and reads the JSON back from the pod's
termination message. Every option reads the TANDEM_* variable the serving Deployment uses for the same
setting. Imports only click at import time, like `tandem serve`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tandem.server.options import model_options, runtime_options


def _write_message(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:  # a missing /dev/termination-log outside a pod must not hide the result
        click.echo(f"cannot write termination message to {path}: {exc}", err=True)


@click.command("profile")
@model_options
@runtime_options
@click.option(
    "--device",
    envvar="TANDEM_PROFILE_DEVICE",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="Device to ask onnxruntime for; the JSON says which one it got.",
)
@click.option(
    "--latency-seconds",
    envvar="TANDEM_PROFILE_LATENCY_SECONDS",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Length of the batch-1 latency phase (at least 20 runs).",
)
@click.option(
    "--throughput-seconds",
    envvar="TANDEM_PROFILE_THROUGHPUT_SECONDS",
    type=click.FloatRange(min=0.01),
    default=3.0,
    show_default=True,
    help="Length of the closed-loop throughput phase.",
)
@click.option(
    "--termination-message-path",
    envvar="TANDEM_TERMINATION_MESSAGE_PATH",
    default=None,
    help="Also write the JSON here (the pod's terminationMessagePath).",
)
def profile(
    model_uri: str,
    model_sha256: str | None,
    threads: int | None,
    workers: int | None,
    max_batch_size: int,
    max_batch_delay_ms: float,
    device: str,
    latency_seconds: float,
    throughput_seconds: float,
    termination_message_path: str | None,
) -> None:
    """Measure latency percentiles and throughput of one replica; print JSON."""
    from tandem.cgroup import available_cpus, default_threads, sized_runtime
    from tandem.profiling.measure import ProfileError, ProfileSettings, load_model
    from tandem.profiling.measure import profile as measure
    from tandem.profiling.result import Device, ProfileFailure

    threads, workers = sized_runtime(threads, workers, default_threads())
    settings = ProfileSettings(
        threads=threads,
        concurrency=workers,
        max_batch_size=max(1, max_batch_size),
        max_batch_delay_ms=max_batch_delay_ms,
        device=Device(device),
        latency_seconds=latency_seconds,
        throughput_seconds=throughput_seconds,
    )
    try:
        data, sha256 = load_model(model_uri, model_sha256 or None)
        result = measure(data, sha256, settings, cpus=available_cpus())
    except ProfileError as exc:
        failure = ProfileFailure(error=str(exc)[:3000]).model_dump_json(by_alias=True)
        _write_message(termination_message_path, failure)
        click.echo(failure, err=True)
        sys.exit(1)
    text = result.model_dump_json(by_alias=True, exclude_none=True)
    _write_message(termination_message_path, text)
    click.echo(json.dumps(json.loads(text), indent=2))
