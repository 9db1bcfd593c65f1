"""Click options that `tandem serve` and `tandem profile` share.

A profile must measure a replica with exactly the settings the serving Deployment passes, so both commands
read the same TANDEM_* variables with the same defaults from this one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def model_options(command: F) -> F:
    """--model-uri and --model-sha256."""
    command = click.option(
        "--model-sha256", envvar="TANDEM_MODEL_SHA256", default=None, help="Refuse a model that differs."
    )(command)
    return click.option(
        "--model-uri", envvar="TANDEM_MODEL_URI", required=True, help="file://, pvc:// or s3:// model.onnx."
    )(command)


def runtime_options(command: F) -> F:
    """onnxruntime threads, runs in flight, dynamic batching and execution provider."""
    for option in reversed(
        [
            click.option(
                "--threads",
                envvar="TANDEM_THREADS",
                type=click.IntRange(min=1),
                default=None,
                help="onnxruntime intra-op threads per run [default: 1, and the cgroup CPU limit, rounded up, for a "
                "run that starts while the server is idle].",
            ),
            click.option(
                "--workers",
                envvar="TANDEM_WORKERS",
                type=click.IntRange(min=1),
                default=None,
                help="onnxruntime runs in flight at once [default: the cgroup CPU limit, rounded up, divided by "
                "--threads].",
            ),
            click.option(
                "--max-batch-size",
                envvar="TANDEM_MAX_BATCH_SIZE",
                type=click.IntRange(min=0),
                default=0,
                show_default=True,
                help="Dynamic batching rows per run; 0 or 1 is off.",
            ),
            click.option(
                "--max-batch-delay-ms",
                envvar="TANDEM_MAX_BATCH_DELAY_MS",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="Dynamic batching: how long a free run waits for a batch to fill (0: never waits).",
            ),
            click.option(
                "--execution-provider",
                envvar="TANDEM_EXECUTION_PROVIDER",
                type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
                default="auto",
                show_default=True,
                help="onnxruntime execution provider. auto: CUDA (TensorRT first where it loads) when the "
                "container sees a GPU, else CPU. A forced provider that cannot load falls back to CPU with a "
                "warning.",
            ),
        ]
    ):
        command = option(command)
    return command
