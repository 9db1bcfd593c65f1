"""A user's own training script on Tandem's trainer SDK: the shape any TrainingJob script can take.

It trains a small CNN on the shipped digits (as 1x8x8 images, unlike the built-in MLP) and uses the SDK for
everything that is not the model: joining the workers, checking storage first, checkpoints, a NaN guard,
and the checked ONNX export that the operator picks up. Run it alone, under torchrun, or as a TrainingJob
command (`python /app/train.py`); the SDK reads the same environment in each case:

    python examples/digits/train.py --output file:///tmp/digits-cnn
    torchrun --standalone --nproc-per-node 2 examples/digits/train.py --output file:///tmp/digits-cnn
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tandem.datasets import DIGITS_MAX_PIXEL, load_digits
from tandem.trainer.checkpoint import CheckpointStore
from tandem.trainer.distributed import (
    broadcast_from_main,
    init_from_env,
    mean_across_ranks,
    run_on_main,
    seed_everything,
    shutdown,
)
from tandem.trainer.failures import NaNLoss, reported_failures
from tandem.trainer.publish import check_output_writable, export_and_publish


class DigitsCNN(nn.Module):
    """Raw pixel counts (batch, 64) -> 1x8x8 image -> two 3x3 convolutions -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classify = nn.Linear(32 * 4 * 4, 10)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        images = (pixels / DIGITS_MAX_PIXEL).reshape(-1, 1, 8, 8)
        logits: torch.Tensor = self.classify(self.features(images).flatten(1))
        return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.environ.get("TANDEM_MODEL_OUTPUT"), required=False)
    parser.add_argument("--checkpoint-uri", default=os.environ.get("TANDEM_CHECKPOINT_URI"))
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("TANDEM_EPOCHS", "10")))
    parser.add_argument("--batch-size", type=int, default=32, help="global batch, split across workers")
    args = parser.parse_args()

    with reported_failures():  # any failure: TrainingFailure termination message and a non-zero exit
        ctx = init_from_env()
        try:
            run_on_main(ctx, lambda: check_output_writable(args.output, args.checkpoint_uri))
            data = load_digits()
            order = np.random.default_rng(0).permutation(len(data))
            train, test = order[:-357], order[-357:]
            x, y = torch.from_numpy(data.features[train]), torch.from_numpy(data.labels[train])
            test_x, test_y = torch.from_numpy(data.features[test]), torch.from_numpy(data.labels[test])

            seed_everything(0)
            model = DigitsCNN().to(ctx.device)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            store = CheckpointStore(args.checkpoint_uri) if args.checkpoint_uri else None
            step = 0
            if store is not None:
                checkpoint = broadcast_from_main(ctx, run_on_main(ctx, store.load_latest))
                if checkpoint is not None:
                    model.load_state_dict(checkpoint.state["model"])
                    optimizer.load_state_dict(checkpoint.state["optimizer"])
                    step = checkpoint.step
            network = DistributedDataParallel(model) if ctx.is_distributed else model

            per_rank = args.batch_size // ctx.world_size
            sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
                TensorDataset(y), num_replicas=ctx.world_size, rank=ctx.rank, seed=0
            )
            steps_per_epoch = math.ceil(len(sampler) / per_rank)
            for epoch in range(step // steps_per_epoch, args.epochs):
                sampler.set_epoch(epoch)
                indices = torch.tensor(list(sampler))
                for batch in range(step % steps_per_epoch, steps_per_epoch):
                    chosen = indices[batch * per_rank : (batch + 1) * per_rank]
                    loss = nn.functional.cross_entropy(network(x[chosen].to(ctx.device)), y[chosen].to(ctx.device))
                    if not math.isfinite(mean_across_ranks(ctx, loss)):
                        raise NaNLoss(f"loss is not finite at step {step + 1}")
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                if store is not None:
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    run_on_main(ctx, functools.partial(store.save, step, state))

            model.eval()
            with torch.no_grad():
                accuracy = (model(test_x.to(ctx.device)).argmax(1).cpu() == test_y).float().mean().item()
            held_out = test_x.numpy()
            export_and_publish(
                ctx,
                model,
                sample=test_x[:4],
                parity_batches=[held_out[:1], held_out],
                output_uri=args.output,
                metrics={"accuracy": accuracy, "steps": float(step)},
                input_name="input",
                output_name="logits",
            )
        finally:
            shutdown(ctx)


if __name__ == "__main__":
    main()
