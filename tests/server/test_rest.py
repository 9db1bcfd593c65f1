"""The V2 REST API, driven in-process: every endpoint and every way a request can be wrong."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from server_support import InProcessClient, make_client

from support.models import failing_on_nonzero_model
from support.server_models import linear_expected
from tandem.server import datatypes

ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)


def infer_doc(data: Any = None, **overrides: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": ROWS.ravel().tolist()}
    if data is not None:
        tensor["data"] = data
    tensor.update(overrides)
    return {"inputs": [tensor]}


def error_of(client: InProcessClient, document: Any, path: str = "/v2/models/linear/infer") -> str:
    reply = client.post(path, document)
    assert reply.status == 400, reply.body
    message: str = reply.json()["error"]
    return message


# health and metadata


def test_live_and_ready_answer_200_once_the_model_is_loaded(linear: InProcessClient) -> None:
    assert linear.get("/v2/health/live").json() == {"live": True}
    assert linear.get("/v2/health/ready").json() == {"ready": True}
    assert linear.get("/v2/models/linear/ready").json() == {"name": "linear", "ready": True}
    assert linear.get("/v2/models/linear/versions/3/ready").status == 200


def test_ready_is_503_while_draining(linear: InProcessClient) -> None:
    linear.app.draining = True
    assert linear.get("/v2/health/ready").status == 503
    assert linear.get("/v2/health/live").status == 200


def test_server_metadata_names_the_binary_extension(linear: InProcessClient) -> None:
    document = linear.get("/v2").json()
    assert document["name"] == "tandem"
    assert "binary_tensor_data" in document["extensions"]
    assert "version" in document


def test_models_lists_the_served_model(linear: InProcessClient) -> None:
    assert linear.get("/v2/models").json() == {"models": ["linear"]}


def test_model_metadata_is_the_onnx_signature_with_dynamic_dims_as_minus_one(linear: InProcessClient) -> None:
    document = linear.get("/v2/models/linear").json()
    assert document == {
        "name": "linear",
        "versions": ["3"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "output", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }
    assert linear.get("/v2/models/linear/versions/3").json() == document


def test_unknown_model_or_version_is_404(linear: InProcessClient) -> None:
    for path in ("/v2/models/nope", "/v2/models/linear/versions/9", "/v2/models/nope/ready"):
        reply = linear.get(path)
        assert reply.status == 404
        assert "error" in reply.json()
    assert linear.post("/v2/models/nope/infer", infer_doc()).status == 404


def test_unknown_route_is_404_and_wrong_method_is_405(linear: InProcessClient) -> None:
    assert linear.get("/v3/anything").status == 404
    assert linear.get("/v2/models/linear/infer").status == 405
    assert linear.post("/v2/health/ready", {}).status == 405


def test_metrics_are_tandem_prefixed_and_count_requests_by_code(linear: InProcessClient) -> None:
    linear.post("/v2/models/linear/infer", infer_doc())
    linear.post("/v2/models/linear/infer", {"inputs": []})
    text = linear.get("/metrics").body.decode()
    assert 'tandem_inference_requests_total{code="200",model="linear"} 1.0' in text
    assert 'tandem_inference_requests_total{code="400",model="linear"} 1.0' in text
    assert "tandem_inference_request_duration_seconds_bucket" in text
    assert 'tandem_inference_batch_size_sum{model="linear"} 2.0' in text
    assert 'tandem_inference_in_flight{model="linear"} 0.0' in text


# inference


def test_infer_with_flat_data_returns_every_output(linear: InProcessClient) -> None:
    reply = linear.post("/v2/models/linear/infer", infer_doc())
    assert reply.status == 200
    document = reply.json()
    assert document["model_name"] == "linear"
    assert document["model_version"] == "3"
    assert isinstance(document["id"], str) and document["id"]
    output, label = document["outputs"]
    assert output["name"] == "output" and output["datatype"] == "FP32" and output["shape"] == [2, 2]
    np.testing.assert_allclose(output["data"], linear_expected(ROWS).ravel(), rtol=1e-6)
    assert label == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 1]}


def test_infer_with_nested_data_and_a_version_echoes_the_id(linear: InProcessClient) -> None:
    document = infer_doc(data=ROWS.tolist())
    document["id"] = "req-42"
    reply = linear.post("/v2/models/linear/versions/3/infer", document)
    assert reply.status == 200
    assert reply.json()["id"] == "req-42"


def test_outputs_selection_returns_only_the_named_outputs(linear: InProcessClient) -> None:
    document = infer_doc()
    document["outputs"] = [{"name": "label"}]
    outputs = linear.post("/v2/models/linear/infer", document).json()["outputs"]
    assert [o["name"] for o in outputs] == ["label"]


def test_json_request_without_content_type_is_accepted(linear: InProcessClient) -> None:
    reply = linear.request("POST", "/v2/models/linear/infer", orjson.dumps(infer_doc()))
    assert reply.status == 200


def test_binary_input_and_binary_output(linear: InProcessClient) -> None:
    raw = ROWS.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}, {"name": "label"}],
        }
    )
    reply = linear.post(
        "/v2/models/linear/infer",
        body=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status == 200
    length = int(reply.headers["inference-header-content-length"])
    document = orjson.loads(reply.body[:length])
    output, label = document["outputs"]
    assert output["parameters"] == {"binary_data_size": 16}
    values = np.frombuffer(reply.body[length:], dtype=np.float32).reshape(2, 2)
    np.testing.assert_allclose(values, linear_expected(ROWS), rtol=1e-6)
    assert label["data"] == [1, 1]


def test_request_level_binary_data_output_makes_every_output_binary(linear: InProcessClient) -> None:
    document = infer_doc()
    document["parameters"] = {"binary_data_output": True}
    reply = linear.post("/v2/models/linear/infer", document)
    length = int(reply.headers["inference-header-content-length"])
    outputs = orjson.loads(reply.body[:length])["outputs"]
    assert [o["parameters"]["binary_data_size"] for o in outputs] == [16, 16]
    assert len(reply.body) == length + 32


def test_dynamic_batching_gives_each_request_its_own_rows(model_dir: Any) -> None:
    client = make_client(model_dir / "linear.onnx", "linear", batch=8)
    import asyncio

    from tandem.server.httpserver import Request

    async def many() -> list[Any]:
        pending = []
        for i in range(6):
            rows = np.full((1, 4), float(i), dtype=np.float32)
            body = orjson.dumps({"id": str(i), "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                          "data": rows.ravel().tolist()}]})  # fmt: skip
            pending.append(client.app(Request("POST", "/v2/models/linear/infer", {}, body)))
        return list(await asyncio.gather(*pending))

    replies = client.loop.run_until_complete(many())
    for i, reply in enumerate(replies):
        document = orjson.loads(reply.body)
        assert document["id"] == str(i)
        expected = linear_expected(np.full((1, 4), float(i), dtype=np.float32)).ravel()
        np.testing.assert_allclose(document["outputs"][0]["data"], expected, rtol=1e-6)
    text = client.get("/metrics").body.decode()
    assert 'tandem_inference_batch_size_count{model="linear"} 1.0' in text
    client.loop.close()


# every datatype


JSON_VALUES: dict[str, list[Any]] = {
    "BOOL": [[True, False]],
    "UINT8": [[0, 255]],
    "UINT16": [[0, 65535]],
    "UINT32": [[0, 4294967295]],
    "UINT64": [[0, 2**63]],
    "INT8": [[-128, 127]],
    "INT16": [[-32768, 32767]],
    "INT32": [[-(2**31), 2**31 - 1]],
    "INT64": [[-(2**63), 2**63 - 1]],
    "FP16": [[1.5, -2.25]],
    "FP32": [[1.5, -2.25]],
    "FP64": [[1.5, -2.25]],
    "BYTES": [["hello", "wörld"]],
}


def identity_doc(encode: Any) -> dict[str, Any]:
    return {"inputs": [encode(name, values) for name, values in JSON_VALUES.items()]}


def test_every_datatype_round_trips_as_json(identity: InProcessClient) -> None:
    document = identity_doc(lambda n, v: {"name": f"in_{n}", "shape": [1, 2], "datatype": n, "data": v})
    reply = identity.post("/v2/models/identity/infer", document)
    assert reply.status == 200, reply.body
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    for name, values in JSON_VALUES.items():
        assert outputs[f"out_{name}"]["datatype"] == name
        assert outputs[f"out_{name}"]["shape"] == [1, 2]
        assert outputs[f"out_{name}"]["data"] == values[0], name


def _binary(name: str, values: list[Any]) -> bytes:
    if name == "BYTES":
        return b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in values[0])
    return np.array(values, dtype=datatypes.NUMPY_DTYPES[name]).tobytes()


def test_every_datatype_round_trips_as_binary(identity: InProcessClient) -> None:
    blobs = [_binary(name, values) for name, values in JSON_VALUES.items()]
    header = orjson.dumps(
        {
            "inputs": [
                {"name": f"in_{n}", "shape": [1, 2], "datatype": n, "parameters": {"binary_data_size": len(b)}}
                for n, b in zip(JSON_VALUES, blobs, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    reply = identity.post(
        "/v2/models/identity/infer",
        body=header + b"".join(blobs),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status == 200, reply.body
    length = int(reply.headers["inference-header-content-length"])
    assert reply.body[length:] == b"".join(blobs)


def test_bf16_round_trips_as_json_and_binary(model_dir: Any) -> None:
    client = make_client(model_dir / "bf16.onnx", "bf16")
    document = {"inputs": [{"name": "in_BF16", "shape": [1, 2], "datatype": "BF16", "data": [1.5, -2.25]}]}
    outputs = {o["name"]: o for o in client.post("/v2/models/bf16/infer", document).json()["outputs"]}
    assert outputs["out_BF16"]["data"] == [1.5, -2.25]
    assert outputs["as_float"]["data"] == [1.5, -2.25]
    bits = datatypes.fp32_to_bf16_bits(np.array([3.0, 0.5], dtype=np.float32)).tobytes()
    header = orjson.dumps(
        {
            "inputs": [{"name": "in_BF16", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}}],
            "outputs": [{"name": "out_BF16", "parameters": {"binary_data": True}}],
        }
    )
    reply = client.post(
        "/v2/models/bf16/infer", body=header + bits, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    length = int(reply.headers["inference-header-content-length"])
    assert reply.body[length:] == bits
    client.loop.close()


# errors: always 400 with a message that names the problem


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (b'{"inputs": [1]}', "inputs[0] must be an object"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "name"),
        (b'{"id": 7, "inputs": []}', "'id' must be a string"),
        (b'{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32"}]}', "neither 'data'"),
        (b'{"inputs": [{"name": "input", "shape": [2, -4], "datatype": "FP32", "data": []}]}', "non-negative"),
        (b'{"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FLOAT", "data": []}]}', "not a V2"),
        (b'{"outputs": 3, "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": []}]}',
         "'outputs' must be a list"),
    ],
)  # fmt: skip
def test_malformed_requests_are_400(linear: InProcessClient, body: bytes, fragment: str) -> None:
    reply = linear.post("/v2/models/linear/infer", body=body)
    assert reply.status == 400
    assert fragment in reply.json()["error"]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0] * 8}]}, "not an input"),
        (infer_doc(datatype="FP64"), "datatype FP64 does not match model datatype FP32"),
        (infer_doc(shape=[8]), "rank 1"),
        (infer_doc(shape=[2, 3]), "does not match model shape [-1, 4]"),
        (infer_doc(data=[1.0, 2.0]), "needs 8 elements, data has 2"),
        (infer_doc(data=[[1.0, 2.0, 3.0, 4.0], [1.0]]), "ragged"),
        (infer_doc(data=["a"] * 8), "must be numbers, got strings"),
        (infer_doc(data=[True] * 8), "must be numbers"),
        ({"inputs": [infer_doc()["inputs"][0]] * 2}, "more than once"),
        ({**infer_doc(), "outputs": [{"name": "nope"}]}, "not an output"),
        ({**infer_doc(), "outputs": [{"name": "label"}, {"name": "label"}]}, "requested more than once"),
    ],
)
def test_requests_that_do_not_match_the_signature_are_400(
    linear: InProcessClient, document: dict[str, Any], fragment: str
) -> None:
    assert fragment in error_of(linear, document)


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("UINT8", [[256, 0]], "outside the UINT8 range"),
        ("INT8", [[-129, 0]], "outside the INT8 range"),
        ("INT32", [[1.5, 2]], "must be integers, got floats"),
        ("BOOL", [[1, 0]], "true/false"),
        ("BYTES", [[1, 2]], "must be strings"),
    ],
)
def test_values_that_do_not_fit_the_datatype_are_400(
    identity: InProcessClient, datatype: str, data: Any, fragment: str
) -> None:
    document = identity_doc(lambda n, v: {"name": f"in_{n}", "shape": [1, 2], "datatype": n, "data": v})
    for tensor in document["inputs"]:
        if tensor["datatype"] == datatype:
            tensor["data"] = data
    assert fragment in error_of(identity, document, "/v2/models/identity/infer")


def test_missing_inputs_are_named(identity: InProcessClient) -> None:
    document = {"inputs": [{"name": "in_FP32", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    assert "needs input(s) in_BOOL" in error_of(identity, document, "/v2/models/identity/infer")


@pytest.mark.parametrize(
    ("size", "extra", "header_length", "fragment"),
    [
        (32, b"", None, "add up to"),
        (32, b"\0" * 32, None, None),
        (64, b"\0" * 32, None, "overruns"),
        (16, b"\0" * 16, None, "needs 32 bytes"),
        (32, b"\0" * 40, None, "add up to 32"),
        (32, b"\0" * 32, "abc", "not an integer"),
        (32, b"\0" * 32, "999999", "outside the body"),
    ],
)
def test_binary_data_of_the_wrong_size_is_400(
    linear: InProcessClient, size: int, extra: bytes, header_length: str | None, fragment: str | None
) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}
    )
    if fragment is None or (fragment == "add up to" and not extra):
        # without the header the body is taken as JSON and the binary tail makes it invalid
        reply = linear.post("/v2/models/linear/infer", body=header + extra)
        assert reply.status == 400
        return
    headers = {"Inference-Header-Content-Length": header_length or str(len(header))}
    reply = linear.post("/v2/models/linear/infer", body=header + extra, headers=headers)
    assert reply.status == 400
    assert fragment in reply.json()["error"]


def test_a_model_that_fails_on_valid_inputs_is_a_500_naming_the_error_and_the_server_answers_on(
    tmp_path: Path,
) -> None:
    """The inputs passed every check of the signature, so the failure is the model's: a 500 (as KServe's
    InferenceError), counted under code 500 where a canary's error rate reads it."""
    path = tmp_path / "failing.onnx"
    path.write_bytes(failing_on_nonzero_model())
    client = make_client(path, "failing")
    try:
        zeros = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
        halves = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
        failed = client.post("/v2/models/failing/infer", halves)
        assert failed.status == 500
        assert "the model failed on these inputs" in failed.json()["error"]
        assert "out of data bounds" in failed.json()["error"]
        assert client.post("/v2/models/failing/infer", zeros).status == 200
        text = client.get("/metrics").body.decode()
        assert 'tandem_inference_requests_total{code="500",model="failing"} 1.0' in text
    finally:
        client.loop.close()
