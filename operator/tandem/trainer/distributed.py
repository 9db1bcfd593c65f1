"""torch.distributed from the environment, so one script runs alone, under torchrun or in a TrainingJob.

The operator gives every worker pod the variables torchrun gives its children (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); with none set the run is a single process with no process group.
Work that only rank 0 does (probing storage, exporting, publishing) goes through `run_on_main`, which
shares the outcome so that a failure on rank 0 fails every rank instead of leaving them blocked in a
collective until a timeout.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from tandem.cgroup import default_threads
from tandem.trainer.failures import InvalidConfiguration, PeerFailed, RendezvousFailed, TrainerError

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=10)
"""How long a collective waits for a missing peer; long enough for a slow pod start, short of wasted hours."""
TIMEOUT_ENV = "TANDEM_DIST_TIMEOUT_SECONDS"
"""Overrides DEFAULT_TIMEOUT, for clusters where image pulls can keep a worker away for longer."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job and what it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """Process-group backend (nccl or gloo), or None for a single process without a group."""

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes artifacts and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidConfiguration(f"{name}={value!r} is not an integer") from None


def choose_device(preference: str, local_rank: int) -> torch.device:
    """'auto' takes the local GPU when there is one; 'cuda' insists on it; 'cpu' never uses it."""
    if preference not in ("auto", "cpu", "cuda"):
        raise InvalidConfiguration(f"device must be auto, cpu or cuda, not {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InvalidConfiguration("device cuda was asked for, but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InvalidConfiguration(f"LOCAL_RANK={local_rank} but only {count} CUDA devices are visible")
    return torch.device("cuda", local_rank)


def init_from_env(device: str = "auto", timeout: timedelta | None = None) -> DistContext:
    """Join the process group the environment describes: NCCL for CUDA, gloo for CPU."""
    if timeout is None:
        seconds = _env_int(TIMEOUT_ENV, int(DEFAULT_TIMEOUT.total_seconds()))
        timeout = timedelta(seconds=seconds)
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidConfiguration(f"RANK={rank} does not fit WORLD_SIZE={world_size}")
    chosen = choose_device(device, local_rank)
    if chosen.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # torch sizes its pool by the machine's cores, not the container's CPU limit; oversubscribed
        # workers under a quota train many times slower.
        torch.set_num_threads(default_threads())
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    backend: str | None = None
    if world_size > 1:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if not dist.is_initialized():
            try:
                dist.init_process_group(
                    backend=backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
                )
            except Exception as exc:
                where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                message = f"rank {rank} of {world_size} could not join the group at {where}: {exc}"
                raise RendezvousFailed(message) from exc
    log.info("rank %d of %d on %s (backend %s)", rank, world_size, chosen, backend or "none")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed every generator a training step may touch, so runs (and resumed runs) repeat exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mean_across_ranks(ctx: DistContext, value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks; a NaN anywhere becomes a NaN everywhere, so all ranks stop."""
    reduced = value.detach().float().reshape(1).clone()
    if ctx.is_distributed:
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        reduced /= ctx.world_size
    return float(reduced.item())


def broadcast_from_main(ctx: DistContext, value: Any) -> Any:
    """Rank 0's value on every rank (any picklable object)."""
    if not ctx.is_distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(ctx: DistContext, action: Callable[[], T]) -> T | None:
    """Run `action` on rank 0 only and raise on every rank if it failed there.

    Returns the action's result on rank 0 and None elsewhere.
    """
    result: T | None = None
    outcome: tuple[str, str, int] | None = None
    error: BaseException | None = None
    if ctx.is_main:
        try:
            result = action()
        except TrainerError as exc:
            outcome, error = (exc.reason, str(exc), exc.exit_code), exc
        except Exception as exc:
            outcome, error = ("InternalError", f"{type(exc).__name__}: {exc}", 1), exc
    outcome = broadcast_from_main(ctx, outcome)
    if error is not None:
        raise error
    if outcome is not None:
        reason, message, code = outcome
        raise PeerFailed(f"rank 0 failed: {message}", reason=reason, exit_code=code)
    return result
