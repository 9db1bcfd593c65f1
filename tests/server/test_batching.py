"""Adaptive batching: a request that finds a run free never waits; requests that had to wait go together."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from server_models import linear_expected

from tandem.server.batching import Batcher
from tandem.server.model import OnnxModel

NAMES = ("output", "label")


@pytest.fixture(scope="module")
def linear_model(model_dir: Path) -> OnnxModel:
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
    model.load()
    return model


def rows(value: float, count: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.full((count, 4), value, dtype=np.float32)}


def run(batcher_args: dict[str, object], model: OnnxModel, requests: list[dict[str, np.ndarray]]) -> list[int]:
    """Submit the requests in one burst; the rows of every onnxruntime run, in order."""
    runs: list[int] = []

    async def burst() -> list[list[np.ndarray]]:
        batcher = Batcher(model, ThreadPoolExecutor(2), observe_rows=runs.append, **batcher_args)  # type: ignore[arg-type]
        return list(await asyncio.gather(*(batcher.submit(feeds, NAMES) for feeds in requests)))

    results = asyncio.run(burst())
    for feeds, (output, label) in zip(requests, results, strict=True):
        np.testing.assert_allclose(output, linear_expected(feeds["input"]), rtol=1e-6)
        np.testing.assert_array_equal(label, linear_expected(feeds["input"]).argmax(axis=1))
    return runs


def test_a_lone_request_runs_at_once_alone(linear_model: OnnxModel) -> None:
    assert run({"max_batch_size": 32, "max_delay_s": 0}, linear_model, [rows(1.0)]) == [1]


def test_requests_that_wait_for_a_busy_run_share_the_next_one(linear_model: OnnxModel) -> None:
    burst = [rows(float(i)) for i in range(6)]
    assert run({"max_batch_size": 32, "max_delay_s": 0, "runs": 1}, linear_model, burst) == [1, 5]


def test_every_free_run_starts_at_once(linear_model: OnnxModel) -> None:
    burst = [rows(float(i)) for i in range(6)]
    assert run({"max_batch_size": 32, "max_delay_s": 0, "runs": 2}, linear_model, burst) == [1, 1, 4]


def test_a_batch_never_exceeds_the_maximum_rows(linear_model: OnnxModel) -> None:
    burst = [rows(float(i), 2) for i in range(7)]
    assert run({"max_batch_size": 4, "max_delay_s": 0, "runs": 1}, linear_model, burst) == [2, 4, 4, 4]


def test_a_delay_lets_a_free_run_wait_for_company(linear_model: OnnxModel) -> None:
    burst = [rows(float(i)) for i in range(6)]
    assert run({"max_batch_size": 32, "max_delay_s": 0.05, "runs": 1}, linear_model, burst) == [6]


def test_requests_that_cannot_share_a_run_run_apart(linear_model: OnnxModel) -> None:
    runs: list[int] = []

    async def mixed() -> None:
        batcher = Batcher(linear_model, ThreadPoolExecutor(1), 32, 0.0, 1, runs.append)
        await asyncio.gather(
            batcher.submit(rows(1.0), NAMES),
            batcher.submit(rows(2.0), NAMES),
            batcher.submit(rows(3.0), ("label",)),
            batcher.submit(rows(4.0), NAMES),
        )

    asyncio.run(mixed())
    assert runs == [1, 2, 1]  # the first alone; then the two that want every output; then the one that wants a label
