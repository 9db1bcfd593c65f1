"""Adaptive batching: a request that finds a run free never waits; requests that had to wait go together;
a request the model fails on fails alone, not with the requests that shared its run."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pytest

from support.server_models import LOOKUP_TABLE, linear_expected
from tandem.server.batching import Batcher
from tandem.server.dataplane import DataPlane
from tandem.server.errors import InferenceFailed
from tandem.server.httpserver import Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel
from tandem.server.rest import RestApp

NAMES = ("output", "label")


@pytest.fixture(scope="module")
def linear_model(model_dir: Path) -> OnnxModel:
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
    model.load()
    return model


@pytest.fixture(scope="module")
def lookup_model(model_dir: Path) -> OnnxModel:
    model = OnnxModel("lookup", (model_dir / "lookup.onnx").as_uri())
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


def test_a_request_the_model_fails_on_fails_alone_and_its_batch_mates_get_their_answers(
    lookup_model: OnnxModel,
) -> None:
    runs: list[int] = []
    indices = [0, 1, 7, 2, 3]  # 7 is a valid INT64 that Gather cannot look up in a table of 4

    async def burst() -> list[list[np.ndarray] | BaseException]:
        batcher = Batcher(lookup_model, ThreadPoolExecutor(1), 32, 0.0, 1, runs.append)
        requests = [{"index": np.array([index], dtype=np.int64)} for index in indices]
        return list(
            await asyncio.gather(*(batcher.submit(feeds, ("value",)) for feeds in requests), return_exceptions=True)
        )

    results = asyncio.run(burst())
    # the first ran alone; the four that waited failed together, then ran one by one
    assert runs == [1, 4, 1, 1, 1, 1]
    failed = results.pop(2)
    assert isinstance(failed, InferenceFailed) and "out of data bounds" in failed.message
    for index, result in zip([0, 1, 2, 3], results, strict=True):
        assert not isinstance(result, BaseException)
        np.testing.assert_array_equal(result[0], LOOKUP_TABLE[[index]])


def test_a_batch_with_one_bad_request_answers_one_500_and_counts_one_failure(lookup_model: OnnxModel) -> None:
    metrics = ServerMetrics()
    dataplane = DataPlane(ThreadPoolExecutor(1), metrics.batch)
    dataplane.add(lookup_model)
    dataplane.enable_batching(lookup_model, 32, 0.0, runs=1)
    app = RestApp(dataplane, metrics)

    def body(index: int) -> bytes:
        return orjson.dumps({"inputs": [{"name": "index", "shape": [1], "datatype": "INT64", "data": [index]}]})

    async def burst() -> list[Response]:
        calls = [app(Request("POST", "/v2/models/lookup/infer", {}, body(index))) for index in (0, 1, 9, 3)]
        return list(await asyncio.gather(*calls))

    replies = asyncio.run(burst())
    assert [reply.status for reply in replies] == [200, 200, 500, 200]
    assert orjson.loads(replies[3].body)["outputs"][0]["data"] == [40.0]
    count = metrics.registry.get_sample_value
    assert count("tandem_inference_requests_total", {"model": "lookup", "code": "500"}) == 1
    assert count("tandem_inference_requests_total", {"model": "lookup", "code": "200"}) == 3
