"""The failure contract: every way a training run can fail ends as one reason, message and exit code.

The operator reads the reason from the termination message (a TrainingFailure) and may act on the exit code
without reading anything (a Job podFailurePolicy): exit 3 marks a failure that a retry cannot fix, exit 4 one
that may pass on retry (storage, rendezvous), exit 5 a worker whose peer was lost (restarted with the group,
not counted), exit 143 a worker stopped by SIGTERM (not counted either), exit 1 an unexpected crash.

A worker stopped by SIGTERM (Kueue's preemption suspends the Job, whose pods are then deleted; a suspend; a
deleted pod) writes a WorkerStopped message naming the newest checkpoint of the run: that is how the
operator learns, without storage credentials, the step a preempted run will resume from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from tandem.api.artifact import (
    EXIT_CRASH,
    EXIT_PEER_LOST,
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    TERMINATION_MESSAGE_LIMIT,
    TrainingFailure,
)
from tandem.api.trainingjob import CheckpointReport, WorkerStopped

TERMINATION_PATH_ENV = "TANDEM_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"

MESSAGE_LIMIT = TERMINATION_MESSAGE_LIMIT // 2
"""Longest error text kept, so the failure JSON always fits the termination message."""
EXIT_STOPPED = 128 + signal.SIGTERM
"""A worker stopped by SIGTERM: the code a process killed by it has, which the Job's podFailurePolicy ignores."""

log = logging.getLogger(__name__)


class TrainerError(Exception):
    """A failure with a known cause; subclasses fix the reason and whether a retry can help."""

    reason = "TrainingFailed"
    exit_code = EXIT_PERMANENT

    def failure(self) -> TrainingFailure:
        return TrainingFailure(reason=self.reason, error=str(self)[:MESSAGE_LIMIT])


class OutputUnwritable(TrainerError):
    """The output or checkpoint URI cannot be reached or written (checked before training starts)."""

    reason = "OutputUnwritable"
    exit_code = EXIT_RETRYABLE


class DatasetMissing(TrainerError):
    """The dataset is not where the run was told to find it."""

    reason = "DatasetMissing"


class DatasetInvalid(TrainerError):
    """The dataset exists but cannot be parsed into features and labels."""

    reason = "DatasetInvalid"


class NaNLoss(TrainerError):
    """The loss stopped being finite; training further would only produce a useless model."""

    reason = "NaNLoss"


class ExportFailed(TrainerError):
    """torch.onnx.export or onnx.checker rejected the model."""

    reason = "ExportFailed"


class ParityCheckFailed(TrainerError):
    """onnxruntime's outputs differ from torch's by more than the tolerance."""

    reason = "ParityCheckFailed"


class CheckpointUnreadable(TrainerError):
    """A checkpoint exists but cannot be loaded; resuming would silently restart from scratch otherwise."""

    reason = "CheckpointUnreadable"


class InvalidConfiguration(TrainerError):
    """Options that cannot work together, such as a batch that does not split across the workers."""

    reason = "InvalidConfiguration"


class RendezvousFailed(TrainerError):
    """The process group did not form: a peer never came, or the rendezvous address is unreachable."""

    reason = "RendezvousFailed"
    exit_code = EXIT_RETRYABLE


class PeerLost(TrainerError):
    """A peer of the formed process group went away (killed, crashed, evicted) in the middle of a collective.

    Exit EXIT_PEER_LOST tells the Job's podFailurePolicy to replace this worker without counting it, so the
    whole group starts again together, from the last checkpoint, and the retry budget pays once: for the peer.
    """

    reason = "PeerLost"
    exit_code = EXIT_PEER_LOST


LOST_PEER_MESSAGES = re.compile(
    r"Connection (closed|reset) by peer|gloo/transport/.*(Read|Write) error|remote process exited|"
    r"NCCL communicator was aborted"
)
"""What torch.distributed says when a peer of a formed group disappears. gloo raises a plain RuntimeError
(through DDP's autograd hooks too), so the message, not the type, is what tells this apart from a bug."""
LOST_PEER_TYPES = ("DistBackendError", "DistNetworkError")


def lost_peer(exc: BaseException) -> bool:
    """Whether an exception raised after the group formed means that a peer went away.

    Only for errors after `init_from_env` returned: a group that never formed is a RendezvousFailed, which
    counts, so a peer that never comes cannot restart the others forever.
    """
    return type(exc).__name__ in LOST_PEER_TYPES or (
        isinstance(exc, RuntimeError) and LOST_PEER_MESSAGES.search(str(exc)) is not None
    )


class PeerFailed(TrainerError):
    """Another rank failed a step that every rank waited on; this rank reports the same reason and code."""

    def __init__(self, message: str, *, reason: str, exit_code: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


def termination_path() -> str:
    return os.environ.get(TERMINATION_PATH_ENV, DEFAULT_TERMINATION_PATH)


def write_termination_message(payload: dict[str, object]) -> None:
    """Write JSON to the container's termination message file, which Kubernetes copies into pod status.

    Kubernetes keeps only the first 4096 bytes; a longer message would be cut into invalid JSON, so the
    caller must fit it (see publish.fit_termination_message). A missing folder (a run outside a pod) is not
    an error worth failing a finished training run for, so it is logged and skipped.

    Under torchrun every process of a pod shares the one file and a failure on rank 0 fails them all at
    once; an exclusive lock around truncate-and-write makes the file hold one whole message (the last
    writer's), never two interleaved.
    """
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > TERMINATION_MESSAGE_LIMIT:
        log.warning("termination message is %d bytes, over the %d limit", len(data), TERMINATION_MESSAGE_LIMIT)
    path = termination_path()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
    finally:
        os.close(fd)


_newest_checkpoint: CheckpointReport | None = None


def note_checkpoint(step: int, uri: str) -> None:
    """Remember a complete checkpoint of this run (saved, or resumed from), for the message a stop writes."""
    global _newest_checkpoint
    if _newest_checkpoint is None or step >= _newest_checkpoint.step:
        _newest_checkpoint = CheckpointReport(step=step, uri=uri)


def newest_checkpoint() -> CheckpointReport | None:
    """The newest checkpoint this process saved or resumed from, if any."""
    return _newest_checkpoint


_holding_stops = False
_held_stop: int | None = None


@contextmanager
def stops_held() -> Iterator[None]:
    """Hold a SIGTERM stop until the block ends, then stop. A save moves the checkpoint pointer and then notes
    the checkpoint: a stop between the two would name the previous checkpoint while the run resumes from the
    new one. The hold lasts one pointer write, well inside a pod's termination grace period."""
    global _holding_stops, _held_stop
    _holding_stops = True
    try:
        yield
    finally:
        _holding_stops = False
        if _held_stop is not None:
            stop_on_sigterm(_held_stop, None)


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Write a WorkerStopped message naming the newest checkpoint, then exit EXIT_STOPPED at once.

    No exception is raised: one could land inside another failure's reporting, or be swallowed by the
    script; nor is a checkpoint saved here, since the peers are being stopped too and a collective save
    would wait for them. A save the signal interrupts leaves the previous checkpoint in force (CheckpointStore
    writes atomically), and that is the one named. Inside `stops_held` (a save's pointer write and its note) the
    stop waits for the block to end, so the checkpoint it names is the one the pointer names.
    """
    global _held_stop
    if _holding_stops:
        _held_stop = signum
        return
    checkpoint = _newest_checkpoint
    where = (
        f"the run resumes from checkpoint step {checkpoint.step}"
        if checkpoint
        else "this worker knows of no checkpoint (rank 0 saves them)"
    )
    stopped = WorkerStopped(error=f"stopped by signal {signum}; {where}", checkpoint=checkpoint)
    log.warning("training stopped (%s): %s", stopped.reason, stopped.error)
    write_termination_message(stopped.to_wire())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_STOPPED)


@contextmanager
def reported_failures() -> Iterator[None]:
    """Turn any exception into a TrainingFailure termination message, a log line and a process exit.

    Wraps a whole run: known failures exit with their code; anything else is a crash (exit 1) whose
    message still names the exception, so `kubectl describe` says more than 'Error'. SIGTERM, while the
    run is inside, ends it with a WorkerStopped message (stop_on_sigterm).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm) if main else None
    try:
        yield
    except TrainerError as exc:
        log.error("training failed (%s): %s", exc.reason, exc)
        write_termination_message(exc.failure().to_wire())
        sys.exit(exc.exit_code)
    except Exception as exc:
        if lost_peer(exc):
            lost = PeerLost(f"a peer of the process group was lost: {exc}")
            log.error("training stopped (%s): %s; the worker group restarts from its last checkpoint", lost.reason, exc)
            write_termination_message(lost.failure().to_wire())
            sys.exit(lost.exit_code)
        log.error("training crashed: %s", "".join(traceback.format_exception(exc)))
        error = f"{type(exc).__name__}: {exc}"[:MESSAGE_LIMIT]
        write_termination_message(TrainingFailure(reason="InternalError", error=error).to_wire())
        sys.exit(EXIT_CRASH)
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
