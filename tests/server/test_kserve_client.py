"""KServe's own Python client (kserve.InferenceRESTClient and InferenceGRPCClient, Open Inference Protocol
V2) against a running `tandem serve`: health, inference of several datatypes, and refusals it can act on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import server_models
import server_procs as servers
from server_models import linear_expected

from support.cluster import free_port

kserve = pytest.importorskip("kserve")
grpc = pytest.importorskip("grpc")
httpx = pytest.importorskip("httpx")

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


@dataclass(frozen=True)
class Server:
    rest: str
    """Base URL of the REST endpoint."""
    grpc: str
    """host:port of the gRPC endpoint."""


def serve(model: Path, name: str) -> Iterator[Server]:
    grpc_port = free_port()
    env = {"TANDEM_GRPC_PORT": str(grpc_port), "TANDEM_ACCESS_LOG": "off"}
    with servers.serving(model, name=name, env=env) as (_, port):
        yield Server(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module")
def linear(model_dir: Path) -> Iterator[Server]:
    yield from serve(model_dir / "linear.onnx", "linear")


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = server_models.identity_model(tmp_path_factory.mktemp("kserve") / "few.onnx", [*DATATYPES, "BOOL"])
    yield from serve(path, "identity")


def rest(call: Any) -> Any:
    """Run one call of a fresh InferenceRESTClient (V2 protocol) to completion."""

    async def run() -> Any:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=10))
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def grpc_call(server: Server, call: Any) -> Any:
    """Run one call of a fresh InferenceGRPCClient to completion."""

    async def run() -> Any:
        client = kserve.InferenceGRPCClient(server.grpc, retries=0, timeout=10)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(run())


def linear_request(rows: np.ndarray) -> Any:
    tensor = kserve.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return kserve.InferRequest(model_name="linear", infer_inputs=[tensor], request_id="ks-1")


def test_kserve_clients_see_a_live_ready_server_and_model(linear: Server) -> None:
    assert rest(lambda c: c.is_server_live(linear.rest))
    assert rest(lambda c: c.is_server_ready(linear.rest))
    assert rest(lambda c: c.is_model_ready(linear.rest, "linear"))
    assert grpc_call(linear, lambda c: c.is_server_live())
    assert grpc_call(linear, lambda c: c.is_server_ready())
    assert grpc_call(linear, lambda c: c.is_model_ready("linear"))


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_kserve_clients_infer_and_read_every_output(linear: Server, transport: str) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    if transport == "rest":
        response = rest(lambda c: c.infer(linear.rest, linear_request(rows), model_name="linear"))
    else:
        response = grpc_call(linear, lambda c: c.infer(linear_request(rows)))
    np.testing.assert_allclose(response.get_output_by_name("output").as_numpy(), linear_expected(rows), rtol=1e-6)
    labels = response.get_output_by_name("label").as_numpy()
    np.testing.assert_array_equal(labels, linear_expected(rows).argmax(axis=1))
    assert response.id == "ks-1"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_kserve_clients_round_trip_several_datatypes(identity: Server, transport: str) -> None:
    values = {name: np.array([[1, 2], [3, 4]], dtype=dtype) for name, dtype in DATATYPES.items()}
    values["BOOL"] = np.array([[True, False], [False, True]])
    inputs = []
    for name, array in values.items():
        tensor = kserve.InferInput(f"in_{name}", list(array.shape), name)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    request = kserve.InferRequest(model_name="identity", infer_inputs=inputs)
    if transport == "rest":
        response = rest(lambda c: c.infer(identity.rest, request, model_name="identity"))
    else:
        response = grpc_call(identity, lambda c: c.infer(request))
    for name, array in values.items():
        np.testing.assert_array_equal(response.get_output_by_name(f"out_{name}").as_numpy(), array)


def test_a_wrong_shape_is_a_400_over_rest_and_invalid_argument_over_grpc_naming_the_tensor(linear: Server) -> None:
    rows = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        rest(lambda c: c.infer(linear.rest, linear_request(rows), model_name="linear"))
    assert refused.value.response.status_code == 400
    assert "input" in refused.value.response.json()["error"]
    with pytest.raises(grpc.RpcError) as failed:
        grpc_call(linear, lambda c: c.infer(linear_request(rows)))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input" in (failed.value.details() or "")


def test_an_unknown_model_is_a_404_over_rest_and_not_found_over_grpc(linear: Server) -> None:
    rows = np.zeros((1, 4), dtype=np.float32)
    request = linear_request(rows)
    request.model_name = "nope"
    with pytest.raises(httpx.HTTPStatusError) as refused:
        rest(lambda c: c.infer(linear.rest, request, model_name="nope"))
    assert refused.value.response.status_code == 404
    with pytest.raises(grpc.RpcError) as failed:
        grpc_call(linear, lambda c: c.infer(request))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
