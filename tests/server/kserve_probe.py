"""KServe's own client in a process of its own: kserve's generated V2 protos and tritonclient's share the
protobuf package `inference`, and one process's descriptor pool takes only one of them.

`python kserve_probe.py REST_URL GRPC_ADDRESS MODEL CASE` prints one JSON document with what the client saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import kserve
import numpy as np

DATATYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


async def with_clients(call: Callable[[Any, Any], Awaitable[Any]], grpc_address: str) -> Any:
    rest = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=10))
    rpc = kserve.InferenceGRPCClient(grpc_address, retries=0, timeout=10)
    try:
        return await call(rest, rpc)
    finally:
        await rest.close()
        await rpc.close()


def linear_request(rows: np.ndarray, model: str) -> Any:
    tensor = kserve.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return kserve.InferRequest(model_name=model, infer_inputs=[tensor], request_id="ks-1")


def outputs(response: Any) -> dict[str, Any]:
    return {"id": response.id, "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs}}


async def refusal(rest_call: Awaitable[Any], grpc_call: Awaitable[Any]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    try:
        await rest_call
    except httpx.HTTPStatusError as exc:
        seen["rest"] = {"status": exc.response.status_code, "error": exc.response.json().get("error", "")}
    try:
        await grpc_call
    except grpc.RpcError as exc:
        seen["grpc"] = {"code": exc.code().name, "details": exc.details() or ""}
    return seen


async def probe(rest: Any, rpc: Any, url: str, model: str, case: str) -> Any:
    if case == "health":
        return {
            "rest": [
                await rest.is_server_live(url), await rest.is_server_ready(url), await rest.is_model_ready(url, model)
            ],
            "grpc": [await rpc.is_server_live(), await rpc.is_server_ready(), await rpc.is_model_ready(model)],
        }
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    if case == "infer":
        return {
            "rest": outputs(await rest.infer(url, linear_request(rows, model), model_name=model)),
            "grpc": outputs(await rpc.infer(linear_request(rows, model))),
        }
    if case == "datatypes":
        values = {name: np.array([[1, 2], [3, 4]], dtype=dtype) for name, dtype in DATATYPES.items()}
        values["BOOL"] = np.array([[True, False], [False, True]])
        inputs = []
        for name, array in values.items():
            tensor = kserve.InferInput(f"in_{name}", list(array.shape), name)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        request = kserve.InferRequest(model_name=model, infer_inputs=inputs)
        return {
            "sent": {name: array.tolist() for name, array in values.items()},
            "rest": outputs(await rest.infer(url, request, model_name=model)),
            "grpc": outputs(await rpc.infer(request)),
        }
    if case == "wrong-shape":
        wrong = np.zeros((1, 3), dtype=np.float32)
        return await refusal(
            rest.infer(url, linear_request(wrong, model), model_name=model), rpc.infer(linear_request(wrong, model))
        )
    if case == "unknown-model":
        request = linear_request(np.zeros((1, 4), dtype=np.float32), "nope")
        return await refusal(rest.infer(url, request, model_name="nope"), rpc.infer(request))
    raise SystemExit(f"unknown case {case!r}")


def main() -> None:
    url, grpc_address, model, case = sys.argv[1:5]
    result = asyncio.run(with_clients(lambda rest, rpc: probe(rest, rpc, url, model, case), grpc_address))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
