"""Fixtures for the trainer tests; the helpers they use live in trainer_support.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trainer_support import SMALL_RUN, TrainerRun, run_trainer_process


@pytest.fixture
def run_trainer(tmp_path: Path) -> Any:
    """`run_trainer(args, env=..., workers=...)`, each run with its own termination message file."""
    counter = iter(range(1000))

    def run(args: list[str], **kwargs: Any) -> TrainerRun:
        return run_trainer_process(args, tmp_path / f"termination-{next(counter)}.json", **kwargs)

    return run


@pytest.fixture(scope="session")
def reference_small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of an uninterrupted single-process SMALL_RUN model, for tests that compare against it."""
    folder = tmp_path_factory.mktemp("reference")
    run = run_trainer_process([*SMALL_RUN, "--output", f"file://{folder}"], folder / "termination-log")
    assert run.returncode == 0, run.log
    return folder
