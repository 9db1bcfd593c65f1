"""torch.distributed from the environment, so one script runs alone, under torchrun or in a TrainingJob.

The operator gives every worker pod the variables torchrun gives its children (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); with none set the run is a single process with no process group.
Work that only rank 0 does (probing storage, exporting, publishing) goes through `run_on_main`, which
shares the outcome so that a failure on rank 0 fails every rank instead of leaving them blocked in a
collective until a timeout.

The group forms in two steps so that a missing worker is named quickly: every rank first checks in at a
TCPStore that rank 0 hosts, within the join timeout, and only then builds the process group over that store
with the (longer) collective timeout. Leaving is ordered too (`shutdown`): ranks that finished meet at a
barrier, all destroy the group while all are still alive, and none exits before every rank has let go of it;
a rank that leaves while another still uses the group can make that rank's gloo teardown end the process
with a crash after its work is done.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
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
"""Overrides DEFAULT_TIMEOUT, for collectives that may legitimately wait longer (rank 0's long exports)."""
DEFAULT_JOIN_TIMEOUT = timedelta(minutes=3)
"""How long the first rendezvous waits for every rank: the workers of a gang start together, so this covers
their start-up skew (an image pull on one node), not a peer that cannot come."""
JOIN_TIMEOUT_ENV = "TANDEM_DIST_JOIN_TIMEOUT_SECONDS"
"""Overrides DEFAULT_JOIN_TIMEOUT, for clusters whose nodes pull the trainer image slowly."""
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"
"""Set by torchrun for its children, whose agent has already formed the rendezvous."""
JOINED_KEY = "tandem/joined/{rank}"
LEFT_KEY = "tandem/left/{rank}"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job and what it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """Process-group backend (nccl or gloo), or None for a single process without a group."""
    timeout: timedelta = DEFAULT_TIMEOUT
    """The collective timeout the group was formed with, which also bounds the teardown barrier."""
    store: dist.Store | None = field(default=None, compare=False, repr=False)
    """The rendezvous store (rank 0 hosts it), kept for the ordered teardown; None under torchrun."""

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


def _seconds_from_env(name: str, default: timedelta) -> timedelta:
    return timedelta(seconds=_env_int(name, int(default.total_seconds())))


def _keys(template: str, world_size: int) -> list[str]:
    return [template.format(rank=rank) for rank in range(world_size)]


def rendezvous(rank: int, world_size: int, join_timeout: timedelta) -> dist.Store:
    """Every rank checked in at rank 0's TCPStore within `join_timeout`, or RendezvousFailed naming who did not.

    The collective timeout is meant for slow steps of a formed group; a worker that never comes (its pod
    cannot be placed, or it is a retry whose peers already finished) must fail the run's attempt far sooner,
    and say which ranks were missing.
    """
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", 29500)
    seconds = int(join_timeout.total_seconds())
    try:
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=join_timeout, wait_for_workers=False)
    except Exception as exc:
        raise RendezvousFailed(
            f"rank {rank} of {world_size} could not reach rank 0 (the rendezvous at {host}:{port}) within "
            f"{seconds} s: missing ranks [0]: {exc}"
        ) from exc
    try:
        store.set(JOINED_KEY.format(rank=rank), "1")
        store.wait(_keys(JOINED_KEY, world_size), join_timeout)
    except Exception as exc:
        missing = _missing(store, JOINED_KEY, world_size)
        raise RendezvousFailed(
            f"rank {rank} of {world_size}: ranks {missing} did not join the group at {host}:{port} within "
            f"{seconds} s (TANDEM_DIST_JOIN_TIMEOUT_SECONDS)"
        ) from exc
    return store


def _missing(store: dist.Store, template: str, world_size: int) -> list[int]:
    """Ranks whose key is absent; all of them when the store itself is unreachable."""
    try:
        return [rank for rank, key in enumerate(_keys(template, world_size)) if not store.check([key])]
    except Exception:
        return list(range(world_size))


def init_from_env(device: str = "auto", timeout: timedelta | None = None) -> DistContext:
    """Join the process group the environment describes: NCCL for CUDA, gloo for CPU."""
    if timeout is None:
        timeout = _seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT)
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
    store: dist.Store | None = None
    if world_size > 1:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if not dist.is_initialized():
            under_torchrun = bool(os.environ.get(TORCHRUN_ENV))
            if not under_torchrun:
                store = rendezvous(rank, world_size, _seconds_from_env(JOIN_TIMEOUT_ENV, DEFAULT_JOIN_TIMEOUT))
                store.set_timeout(timeout)
            try:
                if store is not None:
                    dist.init_process_group(
                        backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout
                    )
                else:
                    dist.init_process_group(
                        backend=backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
                    )
            except Exception as exc:
                where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                message = f"rank {rank} of {world_size} could not join the group at {where}: {exc}"
                raise RendezvousFailed(message) from exc
    log.info("rank %d of %d on %s (backend %s)", rank, world_size, chosen, backend or "none")
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend, timeout=timeout,
        store=store,
    )  # fmt: skip


def shutdown(ctx: DistContext) -> None:
    """Leave the group in order; after a successful run nothing here can turn the run into a failure.

    Called from a `finally`: while an exception is on its way out the peers are failing too (or already
    gone), so the group is only destroyed. After success, the ranks meet at a barrier (no rank leaves while
    another still uses the group, say rank 0 exporting), destroy the group while every rank is alive, and
    wait, through the rendezvous store, until every rank has done so before any process exits. Errors on
    the way are logged, not raised: the result is already written.
    """
    if not ctx.is_distributed or not dist.is_initialized():
        return
    if sys.exc_info()[1] is not None:
        _quietly("destroying the process group", dist.destroy_process_group)
        return
    _quietly("waiting for every rank to finish", lambda: _barrier(ctx))
    _quietly("destroying the process group", dist.destroy_process_group)
    store = ctx.store
    if store is not None:
        def left() -> None:
            store.set(LEFT_KEY.format(rank=ctx.rank), "1")
            store.wait(_keys(LEFT_KEY, ctx.world_size), ctx.timeout)

        _quietly("waiting for every rank to leave the group", left)


def _barrier(ctx: DistContext) -> None:
    # gloo's monitored barrier names a rank that does not arrive; NCCL has only the plain one.
    if ctx.backend == "gloo":
        dist.monitored_barrier(timeout=ctx.timeout)
    else:
        dist.barrier()


def _quietly(what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except Exception as exc:
        log.warning("teardown after a finished run: %s failed (ignored): %s", what, exc)


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
