"""The example user scripts under the contract of docs/training.md, run as the operator runs a worker.

Each worker is its own process with the environment a pod gets (WORLD_SIZE, RANK, MASTER_ADDR,
TANDEM_MODEL_OUTPUT, ...); tests/e2e/test_custom_training.py runs the same scripts in the trainer image.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from trainer_support import read_termination, trainer_env

from support.cluster import REPO_ROOT, free_port
from tandem.api.artifact import EXIT_PERMANENT

pytestmark = pytest.mark.slow

DIGITS_CNN = REPO_ROOT / "examples" / "digits" / "train.py"
LINEAR = REPO_ROOT / "examples" / "custom" / "train.py"


def _workers(script: Path, args: list[str], tmp_path: Path, env: dict[str, str], count: int) -> list[tuple[int, str]]:
    """Run `count` workers of a script to the end: (exit code, log) per rank."""
    port = str(free_port())
    procs = []
    for rank in range(count):
        distributed = {"WORLD_SIZE": str(count), "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=trainer_env(tmp_path / f"termination-{rank}", {**env, **(distributed if count > 1 else {})}),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return [(proc.wait(timeout=600), proc.communicate()[0]) for proc in procs]


def test_the_digits_cnn_script_trains_on_two_workers_and_publishes_once(tmp_path: Path) -> None:
    env = {"TANDEM_MODEL_OUTPUT": f"file://{tmp_path}/out", "TANDEM_CHECKPOINT_URI": f"file://{tmp_path}/ckpt"}
    results = _workers(DIGITS_CNN, ["--epochs", "2"], tmp_path, env, count=2)
    assert [code for code, _ in results] == [0, 0], [log[-2000:] for _, log in results]
    published = read_termination(tmp_path / "termination-0")
    assert published is not None
    assert [tensor["shape"] for tensor in published["inputs"]] == [[-1, 64]]
    assert published["metrics"]["accuracy"] > 0.8
    assert read_termination(tmp_path / "termination-1") is None  # rank 0 alone publishes
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_the_torch_only_script_exports_from_the_declared_shape(tmp_path: Path) -> None:
    env = {
        "TANDEM_MODEL_OUTPUT": f"file://{tmp_path}/out",
        "TANDEM_CHECKPOINT_URI": f"file://{tmp_path}/ckpt",
        "TANDEM_SAMPLE_INPUT_SHAPE": "3",
    }
    [(code, log)] = _workers(LINEAR, [], tmp_path, env, count=1)
    assert code == 0, log[-2000:]
    published = read_termination(tmp_path / "termination-0")
    assert published is not None
    assert [(t["name"], t["shape"]) for t in published["inputs"]] == [("x", [-1, 3])]
    assert published["metrics"]["mse"] < 1e-3
    assert (tmp_path / "ckpt" / "latest.json").is_file()


def test_a_script_without_its_output_fails_permanently_with_its_reason(tmp_path: Path) -> None:
    [(code, log)] = _workers(LINEAR, [], tmp_path, {}, count=1)
    assert code == EXIT_PERMANENT, log[-2000:]
    failure = read_termination(tmp_path / "termination-0")
    assert failure is not None and failure["reason"] == "InvalidConfiguration"
    assert "TANDEM_MODEL_OUTPUT" in failure["error"]
