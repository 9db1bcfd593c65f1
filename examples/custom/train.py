"""The smallest complete TrainingJob script: torch and Tandem's trainer SDK, nothing else.

It fits y = 2·x0 - 3·x1 + 0.5·x2 + 1 on generated data, checkpoints every 50 steps, and publishes the checked
ONNX model. It passes no export sample: the TrainingJob declares `model.export.sampleInputShape: [3]` and
the exporter traces and checks the model on random inputs of that shape. See docs/training.md for the
contract; examples/custom/training.yaml runs it from a ConfigMap in the trainer image.

    TANDEM_MODEL_OUTPUT=file:///tmp/linear TANDEM_SAMPLE_INPUT_SHAPE=3 python examples/custom/train.py
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tandem.trainer.checkpoint import CheckpointStore
from tandem.trainer.distributed import (
    broadcast_from_main,
    init_from_env,
    mean_across_ranks,
    run_on_main,
    seed_everything,
    shutdown,
)
from tandem.trainer.failures import InvalidConfiguration, reported_failures
from tandem.trainer.publish import check_output_writable, export_and_publish

STEPS = int(os.environ.get("STEPS", "300"))
CHECKPOINT_EVERY = 50


def main() -> None:
    with reported_failures():
        output = os.environ.get("TANDEM_MODEL_OUTPUT")
        if not output:
            raise InvalidConfiguration("TANDEM_MODEL_OUTPUT is not set")
        checkpoint_uri = os.environ.get("TANDEM_CHECKPOINT_URI")
        ctx = init_from_env()
        try:
            run_on_main(ctx, lambda: check_output_writable(output, checkpoint_uri))
            seed_everything(0)
            features = torch.randn(1024, 3)
            targets = features @ torch.tensor([[2.0], [-3.0], [0.5]]) + 1.0
            mine = slice(ctx.rank, None, ctx.world_size)  # each worker its own shard
            x, y = features[mine].to(ctx.device), targets[mine].to(ctx.device)

            model = nn.Linear(3, 1).to(ctx.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            store = CheckpointStore(checkpoint_uri) if checkpoint_uri else None
            step = 0
            if store is not None:
                latest = broadcast_from_main(ctx, run_on_main(ctx, store.load_latest))
                if latest is not None:
                    model.load_state_dict(latest.state["model"])
                    optimizer.load_state_dict(latest.state["optimizer"])
                    step = latest.step
            network = DistributedDataParallel(model) if ctx.is_distributed else model

            loss = torch.zeros(())
            while step < STEPS:
                loss = nn.functional.mse_loss(network(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if store is not None and step % CHECKPOINT_EVERY == 0:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    run_on_main(ctx, functools.partial(store.save, step, state))

            export_and_publish(
                ctx,
                model,
                output_uri=output,
                metrics={"mse": mean_across_ranks(ctx, loss), "steps": float(step)},
                input_name="x",
                output_name="y",
            )
        finally:
            shutdown(ctx)


if __name__ == "__main__":
    main()
