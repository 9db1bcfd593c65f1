"""Gang semantics in the trainer: a worker whose peer is lost exits EXIT_PEER_LOST, and the group resumes together.

The workers here are started as the operator starts them, one process each with WORLD_SIZE, RANK and
MASTER_ADDR in the environment (not under torchrun, whose agent would stop the survivors itself), so the
survivor sees exactly what a pod sees when its peer's container is killed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from trainer_support import (
    SMALL_RUN,
    checkpointed_small_run,
    first_checkpoint,
    read_termination,
    trainer_command,
    trainer_env,
)

from support.cluster import free_port
from tandem.api.artifact import EXIT_PEER_LOST, EXIT_RETRYABLE
from tandem.trainer.failures import lost_peer


def _worker(rank: int, port: int, args: list[str], termination: Path, **extra: str) -> subprocess.Popen[str]:
    env = trainer_env(
        termination,
        {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
         "MASTER_PORT": str(port), **extra},
    )  # fmt: skip
    return subprocess.Popen(
        trainer_command(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_a_killed_peer_stops_the_survivor_with_peer_lost_and_the_restarted_group_resumes(tmp_path: Path) -> None:
    args = checkpointed_small_run(tmp_path)
    port = free_port()
    survivor = _worker(0, port, args, tmp_path / "survivor")
    victim = _worker(1, port, args, tmp_path / "victim")
    pointer = first_checkpoint(tmp_path, survivor, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    log, _ = survivor.communicate(timeout=120)
    assert survivor.returncode == EXIT_PEER_LOST, log
    failure = read_termination(tmp_path / "survivor")
    assert failure is not None and failure["reason"] == "PeerLost", failure
    killed_at = json.loads(pointer.read_text())["step"]

    port = free_port()
    group = [_worker(rank, port, args, tmp_path / f"restarted-{rank}") for rank in (0, 1)]
    logs = [worker.communicate(timeout=300)[0] for worker in group]
    assert [worker.returncode for worker in group] == [0, 0], logs
    published = read_termination(tmp_path / "restarted-0")
    assert published is not None
    assert published["metrics"]["resumed_from_step"] >= killed_at


def _rendezvous_failure_alone(rank: int, tmp_path: Path) -> dict[str, Any]:
    """The termination message of `rank` started without its peer and a join timeout of 3 s, once it has exited
    with a counted failure: what each lonely rank then says about the other is the test's own check."""
    alone = _worker(rank, free_port(), [*SMALL_RUN, "--output", f"file://{tmp_path}/out"], tmp_path / "alone",
                    TANDEM_DIST_JOIN_TIMEOUT_SECONDS="3")  # fmt: skip
    log, _ = alone.communicate(timeout=120)
    assert alone.returncode == EXIT_RETRYABLE, log
    failure = read_termination(tmp_path / "alone")
    assert failure is not None and failure["reason"] == "RendezvousFailed", failure
    return failure


def test_a_peer_that_never_comes_is_a_counted_rendezvous_failure_naming_the_missing_rank(tmp_path: Path) -> None:
    """Not PeerLost: a lonely worker must not be restarted for free forever. The join timeout, not the
    collective one, bounds the wait, and the message says which rank never came."""
    failure = _rendezvous_failure_alone(0, tmp_path)
    assert "ranks [1] did not join" in failure["error"], failure


def test_a_worker_without_its_rendezvous_host_names_rank_0_as_missing(tmp_path: Path) -> None:
    """A retried rank 1 whose rank 0 already finished: nothing listens at MASTER_ADDR any more."""
    failure = _rendezvous_failure_alone(1, tmp_path)
    assert "missing ranks [0]" in failure["error"], failure


def test_ranks_that_finish_seconds_apart_leave_together_and_all_exit_0(tmp_path: Path) -> None:
    """Rank 1 has nothing left to do while rank 0 still exports and then lingers: it must not leave the group
    (and exit) before rank 0 is done with it, and no rank's teardown may turn the published run into a failure."""
    marker = tmp_path / "rank-0-finished"
    port = free_port()
    script = Path(__file__).parent / "scripts" / "skewed_teardown.py"
    skew = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "SKEW_SECONDS": "3",
            "TANDEM_MODEL_OUTPUT": f"file://{tmp_path}/out", "SKEW_MARKER": str(marker)}  # fmt: skip
    workers = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=trainer_env(tmp_path / f"termination-{rank}", {**skew, "RANK": str(rank)}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    rank_1_log, _ = workers[1].communicate(timeout=240)
    assert marker.exists(), f"rank 1 exited while rank 0 was still working:\n{rank_1_log}"
    rank_0_log, _ = workers[0].communicate(timeout=240)
    assert [worker.returncode for worker in workers] == [0, 0], (rank_0_log, rank_1_log)
    published = read_termination(tmp_path / "termination-0")
    assert published is not None and published["uri"].endswith("/out/model.onnx"), published


@pytest.mark.parametrize(
    "message",
    [
        "[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.7]:15258",
        "[../gloo/transport/tcp/pair.cc:545] Read error [10.0.0.7]:38104: Connection reset by peer",
    ],
)
def test_gloo_errors_of_a_vanished_peer_are_lost_peers(message: str) -> None:
    assert lost_peer(RuntimeError(message))


def test_other_runtime_errors_are_not_lost_peers() -> None:
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 6x3)"))
    assert not lost_peer(ValueError("Connection reset by peer"))
