"""Tensors no array can hold are the client's fault: data nested far deeper than any tensor's rank and shapes
whose dimensions overflow even when another dimension is 0 get 400 (REST) and INVALID_ARGUMENT (gRPC), never
a 500 from a RecursionError or from numpy refusing to make the array. The model's dimensions are all free, so
only the server's own checks stand between the shape and numpy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from server_support import InProcessClient, make_client

from support import server_models
from tandem.server import proto
from tandem.server.dataplane import DataPlane
from tandem.server.grpcserver import GrpcFront
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel
from tandem.server.tensors import MAX_NESTING

HUGE = 2**62
VALUES = {"name": "values", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}
WORDS = {"name": "words", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}


@pytest.fixture(scope="module")
def free_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return server_models.free_model(tmp_path_factory.mktemp("free") / "free.onnx")


@pytest.fixture
def free(free_path: Path) -> Iterator[InProcessClient]:
    client = make_client(free_path, "free")
    yield client
    client.loop.close()


def nested(depth: int, leaf: bytes = b'"a"') -> bytes:
    """JSON for `leaf` inside `depth` lists, written by hand: orjson refuses to write it that deep."""
    return b"[" * depth + leaf + b"]" * depth


def infer_body(*inputs: bytes) -> bytes:
    return b'{"inputs":[' + b",".join(inputs) + b"]}"


def words_with_data(data: bytes) -> bytes:
    return b'{"name":"words","shape":[1,1],"datatype":"BYTES","data":' + data + b"}"


def test_bytes_data_nested_a_thousand_deep_is_400(free: InProcessClient) -> None:
    reply = free.post("/v2/models/free/infer", body=infer_body(orjson.dumps(VALUES), words_with_data(nested(1000))))
    assert reply.status == 400
    assert f"nested more than {MAX_NESTING} lists deep" in reply.json()["error"]


def test_bytes_data_nested_as_deep_as_allowed_is_served(free: InProcessClient) -> None:
    reply = free.post(
        "/v2/models/free/infer", body=infer_body(orjson.dumps(VALUES), words_with_data(nested(MAX_NESTING)))
    )
    assert reply.status == 200
    assert reply.json()["outputs"][1]["data"] == ["a"]


def test_number_data_nested_a_thousand_deep_is_400(free: InProcessClient) -> None:
    values = b'{"name":"values","shape":[1,1],"datatype":"FP32","data":' + nested(1000, b"1.0") + b"}"
    reply = free.post("/v2/models/free/infer", body=infer_body(values, orjson.dumps(WORDS)))
    assert reply.status == 400


@pytest.mark.parametrize(
    "shape", [[0, HUGE], [HUGE, 0], [0, 2**64 - 1]], ids=["zero-then-huge", "huge-then-zero", "beyond-int64"]
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_zero_size_shape_with_a_huge_dimension_is_400(free: InProcessClient, shape: list[int], binary: bool) -> None:
    values: dict[str, Any] = {"name": "values", "shape": shape, "datatype": "FP32"}
    values.update({"parameters": {"binary_data_size": 0}} if binary else {"data": []})
    reply = free.post("/v2/models/free/infer", {"inputs": [values, WORDS]})
    assert reply.status == 400
    assert "is too large for any FP32 tensor" in reply.json()["error"]


def test_a_zero_size_bytes_shape_with_a_huge_dimension_is_400(free: InProcessClient) -> None:
    words = {"name": "words", "shape": [0, HUGE], "datatype": "BYTES", "data": []}
    reply = free.post("/v2/models/free/infer", {"inputs": [VALUES, words]})
    assert reply.status == 400
    assert "is too large for any BYTES tensor" in reply.json()["error"]


def test_a_zero_size_shape_numpy_can_hold_is_served(free: InProcessClient) -> None:
    values = {"name": "values", "shape": [0, 2**40], "datatype": "FP32", "data": []}
    reply = free.post("/v2/models/free/infer", {"inputs": [values, WORDS]})
    assert reply.status == 200
    assert reply.json()["outputs"][0]["shape"] == [0, 2**40]


# gRPC: the same checks, one code path


def grpc_infer(model_path: Path, request: Any) -> tuple[grpc.StatusCode, str]:
    """Serve the model on an in-process gRPC front and make one ModelInfer call; its code and details."""

    async def run() -> tuple[grpc.StatusCode, str]:
        model = OnnxModel("free", model_path.as_uri())
        model.load()
        dataplane = DataPlane(ThreadPoolExecutor(1))
        dataplane.add(model)
        front = GrpcFront(dataplane, ServerMetrics(), max_message_bytes=1 << 20, idle_timeout_s=10)
        port = await front.listen("127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                method = channel.unary_unary(f"/{proto.SERVICE}/ModelInfer")
                try:
                    await method(request.SerializeToString(), timeout=30)
                except grpc.aio.AioRpcError as error:
                    return error.code(), error.details() or ""
                return grpc.StatusCode.OK, ""
        finally:
            await front.drain(1)

    return asyncio.run(run())


def grpc_request(shape: list[int]) -> Any:
    """`values` of `shape` with no data and one word, both as raw contents (one entry per input)."""
    request = proto.ModelInferRequest(model_name="free")
    request.inputs.add(name="values", datatype="FP32", shape=shape)
    request.inputs.add(name="words", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.extend([b"", b"\x01\x00\x00\x00a"])
    return request


def test_a_zero_size_shape_with_a_huge_dimension_is_invalid_argument_over_grpc(free_path: Path) -> None:
    code, details = grpc_infer(free_path, grpc_request([0, HUGE]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "is too large for any FP32 tensor" in details


def test_a_zero_size_shape_numpy_can_hold_is_served_over_grpc(free_path: Path) -> None:
    assert grpc_infer(free_path, grpc_request([0, 2**40]))[0] == grpc.StatusCode.OK
