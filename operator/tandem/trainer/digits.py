"""The built-in example: an MLP that classifies the shipped UCI handwritten digits.

It is small enough to train on a CPU in seconds and real enough to show the runtime's behaviour: it reaches
0.96-0.97 held-out accuracy in 15 epochs (0.961 to 0.969 over seeds 0-4; the tests hold it to at least 0.95).

Data-parallel training here is exactly equivalent to single-process training with the same global batch:
the model has no dropout or batch norm, the 1440 training samples divide evenly among 1, 2, 4, 8 or 16
workers (so DistributedSampler never pads), each rank takes `batch_size / world_size` samples of the same
seeded permutation, and DDP averages the per-rank mean gradients into the global mean.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset
from torch.utils.data.distributed import DistributedSampler

from tandem.datasets import DIGITS_CLASSES, DIGITS_FEATURES, DatasetError, load_digits
from tandem.trainer.checkpoint import CheckpointStore
from tandem.trainer.distributed import (
    DistContext,
    broadcast_from_main,
    mean_across_ranks,
    run_on_main,
    seed_everything,
)
from tandem.trainer.failures import DatasetInvalid, DatasetMissing, InvalidConfiguration, NaNLoss

HELD_OUT = 357
"""Samples kept out of training for the reported accuracy (about 20%), leaving 1440 to train on."""
STD_FLOOR = 0.5
"""Added to each pixel's standard deviation (pixels range 0..16)."""
SPLIT_SEED = 1998
"""Fixed apart from the training seed, so every run is scored on the same held-out digits."""

log = logging.getLogger(__name__)


class Standardize(nn.Module):
    """(x - mean) / std with the training set's statistics, kept as buffers so they travel in the ONNX graph.

    Standardising lifts held-out accuracy from about 0.93 to 0.96 at the same epochs; keeping it in the
    model means clients send raw pixel counts (0..16) and never need to know the statistics.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def fit(self, x: torch.Tensor) -> None:
        # The floor keeps always-blank border pixels (std 0) from dividing by zero.
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0) + STD_FLOOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DigitsMLP(nn.Module):
    """64 raw pixel counts -> standardise -> two ReLU layers -> 10 logits."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.standardize = Standardize(DIGITS_FEATURES)
        self.layers = nn.Sequential(
            nn.Linear(DIGITS_FEATURES, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, DIGITS_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(self.standardize(pixels))
        return logits


@dataclass(frozen=True)
class DigitsConfig:
    epochs: int = 15
    batch_size: int = 32
    """Global batch: the samples in one optimizer step summed over all workers."""
    learning_rate: float = 1e-3
    seed: int = 0
    hidden: int = 128
    amp: bool = False
    """bf16 autocast for the forward pass (the exported model stays fp32)."""
    checkpoint_every: int = 0
    """Optimizer steps between checkpoints; 0 checkpoints at the end of each epoch."""
    data_uri: str | None = None
    """A digits CSV to use instead of the shipped one."""


@dataclass
class DigitsSplit:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass
class TrainResult:
    model: nn.Module
    """The trained model, unwrapped from DDP."""
    metrics: dict[str, float] = field(default_factory=dict)
    held_out: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, DIGITS_FEATURES), np.float32))


def load_split(data_uri: str | None) -> DigitsSplit:
    """The digits, shuffled once with SPLIT_SEED, with the last HELD_OUT samples held out."""
    try:
        data = load_digits(data_uri)
    except DatasetError as exc:
        raise (DatasetMissing if exc.missing else DatasetInvalid)(str(exc)) from exc
    if len(data) <= HELD_OUT:
        raise DatasetInvalid(f"{data.source} has {len(data)} samples; more than {HELD_OUT} are needed")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(data))
    train, test = order[:-HELD_OUT], order[-HELD_OUT:]
    return DigitsSplit(
        train_x=torch.from_numpy(data.features[train]),
        train_y=torch.from_numpy(data.labels[train]),
        test_x=torch.from_numpy(data.features[test]),
        test_y=torch.from_numpy(data.labels[test]),
    )


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """Held-out (accuracy, mean loss), in fp32 like the exported model."""
    model.eval()
    with torch.no_grad():
        logits = model(x.to(device)).float()
        loss = nn.functional.cross_entropy(logits, y.to(device)).item()
        accuracy = (logits.argmax(dim=1).cpu() == y).float().mean().item()
    model.train()
    return accuracy, loss


def _autocast(ctx: DistContext, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)


def train(ctx: DistContext, config: DigitsConfig, store: CheckpointStore | None, resume: bool) -> TrainResult:
    """Train on every rank; rank 0 saves checkpoints. Returns the model and its metrics on every rank."""
    if config.batch_size % ctx.world_size:
        raise InvalidConfiguration(
            f"batch size {config.batch_size} does not split evenly across {ctx.world_size} workers"
        )
    if config.epochs < 1:
        raise InvalidConfiguration(f"epochs must be at least 1, not {config.epochs}")
    split = load_split(config.data_uri)
    per_rank = config.batch_size // ctx.world_size
    sampler: DistributedSampler[Any] = DistributedSampler(
        TensorDataset(split.train_y), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed
    )
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total_steps = config.epochs * steps_per_epoch

    seed_everything(config.seed)
    model = DigitsMLP(config.hidden)
    model.standardize.fit(split.train_x)
    model = model.to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = {"batch_size": config.batch_size, "steps_per_epoch": steps_per_epoch, "hidden": config.hidden}

    step = 0
    if store is not None and resume:
        checkpoint = broadcast_from_main(ctx, run_on_main(ctx, store.load_latest))
        if checkpoint is not None:
            if checkpoint.state.get("schedule") != schedule:
                raise InvalidConfiguration(
                    f"checkpoint {checkpoint.uri} was taken with {checkpoint.state.get('schedule')}, "
                    f"this run has {schedule}; resume with the same batch size or start a new checkpoint URI"
                )
            model.load_state_dict(checkpoint.state["model"])
            optimizer.load_state_dict(checkpoint.state["optimizer"])
            step = checkpoint.step
            log.info("resumed from checkpoint at step %d of %d: %s", step, total_steps, checkpoint.uri)
    resumed_from = step

    network: nn.Module = model
    if ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        network = DistributedDataParallel(model, device_ids=device_ids)

    def save(at: int) -> None:
        if store is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule}
            run_on_main(ctx, lambda: store.save(at, state))

    started = time.perf_counter()
    train_x, train_y = split.train_x.to(ctx.device), split.train_y.to(ctx.device)
    epoch_loss = float("nan")
    for epoch in range(step // steps_per_epoch, config.epochs):
        sampler.set_epoch(epoch)
        indices = torch.tensor(list(sampler), device=ctx.device)
        losses = []
        for batch in range(step % steps_per_epoch, steps_per_epoch):
            chosen = indices[batch * per_rank : (batch + 1) * per_rank]
            with _autocast(ctx, config.amp):
                logits = network(train_x[chosen])
            loss = nn.functional.cross_entropy(logits.float(), train_y[chosen])
            mean_loss = mean_across_ranks(ctx, loss)
            if not math.isfinite(mean_loss):
                raise NaNLoss(
                    f"loss is {mean_loss} at step {step + 1} (epoch {epoch + 1}, batch {batch + 1}); "
                    "no checkpoint was written from it: check the learning rate and the data for "
                    "non-finite values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(mean_loss)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save(step)
        if not config.checkpoint_every and losses:
            save(step)
        epoch_loss = float(np.mean(losses)) if losses else epoch_loss
        accuracy, val_loss = evaluate(model, split.test_x, split.test_y, ctx.device)
        log.info(
            "epoch %d/%d step %d: train loss %.4f, held-out loss %.4f, accuracy %.4f",
            epoch + 1,
            config.epochs,
            step,
            epoch_loss,
            val_loss,
            accuracy,
        )
    seconds = time.perf_counter() - started
    accuracy, val_loss = evaluate(model, split.test_x, split.test_y, ctx.device)
    trained_steps = step - resumed_from
    metrics = {
        "accuracy": accuracy,
        "val_loss": val_loss,
        "train_loss": epoch_loss,
        "epochs": float(config.epochs),
        "steps": float(step),
        "resumed_from_step": float(resumed_from),
        "world_size": float(ctx.world_size),
        "train_seconds": seconds,
        "samples_per_second": trained_steps * config.batch_size / seconds if seconds > 0 else 0.0,
    }
    # A run resumed after its last step trains no batch and so has no train loss; JSON has no NaN.
    metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}
    log.info("trained: %s (config %s)", metrics, asdict(config))
    return TrainResult(model=model, metrics=metrics, held_out=split.test_x.numpy())
