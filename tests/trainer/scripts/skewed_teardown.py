"""A run whose ranks finish seconds apart, as they do on real clusters: rank 0 is slow, rank 1 has nothing to do.

Rank 0 sleeps before exporting (rank 1 waits for the outcome of the export) and again after publishing,
then writes SKEW_MARKER: without an ordered teardown rank 1 would leave the group and exit while rank 0
still holds it. Used by tests/trainer/test_gang.py as processes and by tests/e2e/test_gang_training.py in
the trainer image, from a ConfigMap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from tandem.trainer.distributed import init_from_env, seed_everything, shutdown
from tandem.trainer.failures import reported_failures
from tandem.trainer.publish import export_and_publish

SKEW_SECONDS = float(os.environ.get("SKEW_SECONDS", "5"))
MARKER = os.environ.get("SKEW_MARKER")


def main() -> None:
    with reported_failures():
        ctx = init_from_env("cpu")
        try:
            seed_everything(0)
            model = nn.Linear(3, 1)
            if ctx.is_main:
                time.sleep(SKEW_SECONDS)
            export_and_publish(
                ctx, model, torch.randn(4, 3), output_uri=os.environ["TANDEM_MODEL_OUTPUT"], metrics={},
                input_name="x", output_name="y",
            )  # fmt: skip
            if ctx.is_main:
                time.sleep(SKEW_SECONDS)
                if MARKER:
                    Path(MARKER).write_text("rank 0 finished its work\n")
        finally:
            shutdown(ctx)


if __name__ == "__main__":
    main()
