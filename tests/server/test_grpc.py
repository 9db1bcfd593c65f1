"""V2 gRPC against a running `tandem serve`, through clients nobody here wrote (tritonclient.grpc).

Health, metadata and inference for every datatype, raw and typed contents; then malformed requests, each of
which must get the gRPC status code a V2 client can act on, with a message, and never INTERNAL.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support import server_models
from support import server_procs as servers
from support.cluster import free_port
from support.server_models import IDENTITY_TYPES, linear_expected

grpc = pytest.importorskip("grpc")
tritongrpc = pytest.importorskip("tritonclient.grpc")
pb = pytest.importorskip("tritonclient.grpc.service_pb2")

MAX_REQUEST_BYTES = 1 << 20
SERVICE = "/inference.GRPCInferenceService/"


def serve(model: Path, name: str, env: dict[str, str] | None = None) -> Iterator[int]:
    grpc_port = free_port()
    environment = {"TANDEM_GRPC_PORT": str(grpc_port), "TANDEM_ACCESS_LOG": "off", **(env or {})}
    with servers.serving(model, name=name, env=environment):
        yield grpc_port


@pytest.fixture(scope="module")
def linear_port(model_dir: Path) -> Iterator[int]:
    env = {"TANDEM_MODEL_VERSION": "3", "TANDEM_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES)}
    yield from serve(model_dir / "linear.onnx", "linear", env)


@pytest.fixture(scope="module")
def identity_port(model_dir: Path) -> Iterator[int]:
    yield from serve(model_dir / "identity.onnx", "identity")


@pytest.fixture(scope="module")
def linear(linear_port: int) -> Any:
    return tritongrpc.InferenceServerClient(f"127.0.0.1:{linear_port}")


@pytest.fixture(scope="module")
def identity(identity_port: int) -> Any:
    return tritongrpc.InferenceServerClient(f"127.0.0.1:{identity_port}")


# health and metadata


def test_the_server_is_live_and_ready_and_says_what_it_implements(linear: Any) -> None:
    assert linear.is_server_live()
    assert linear.is_server_ready()
    assert linear.is_model_ready("linear")
    assert linear.is_model_ready("linear", "3")
    metadata = linear.get_server_metadata()
    assert metadata.name == "tandem"
    assert list(metadata.extensions) == ["binary_tensor_data"]


def test_model_metadata_is_the_signature_with_dynamic_dimensions_as_minus_one(linear: Any) -> None:
    metadata = linear.get_model_metadata("linear", as_json=True)
    assert metadata["versions"] == ["3"]
    assert metadata["platform"] == "onnx_onnxv1"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [output["name"] for output in metadata["outputs"]] == ["output", "label"]


# inference


def test_infer_with_raw_contents_answers_the_models_outputs_and_echoes_the_id(linear: Any) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = tritongrpc.InferInput("input", [3, 4], "FP32")
    tensor.set_data_from_numpy(rows)
    result = linear.infer("linear", [tensor], model_version="3", request_id="grpc-1")
    np.testing.assert_allclose(result.as_numpy("output"), linear_expected(rows), rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), linear_expected(rows).argmax(axis=1))
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("grpc-1", "linear", "3")


def test_infer_returns_only_the_outputs_asked_for(linear: Any) -> None:
    tensor = tritongrpc.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    result = linear.infer("linear", [tensor], outputs=[tritongrpc.InferRequestedOutput("label")])
    assert [output.name for output in result.get_response().outputs] == ["label"]


def identity_arrays() -> dict[str, np.ndarray]:
    """Two rows of each datatype, with the extremes where overflow would show."""
    arrays: dict[str, np.ndarray] = {}
    for datatype in IDENTITY_TYPES:
        if datatype == "BYTES":
            arrays[datatype] = np.array([[b"a", "é".encode()], [b"", b"xyz"]], dtype=np.object_)
        elif datatype == "BOOL":
            arrays[datatype] = np.array([[True, False], [False, True]])
        else:
            dtype = np.dtype(tritongrpc.triton_to_np_dtype(datatype))
            info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
            arrays[datatype] = np.array([[info.min, info.max], [0, 1]], dtype=dtype)
    return arrays


def test_every_datatype_round_trips_through_raw_contents(identity: Any) -> None:
    arrays = identity_arrays()
    inputs = []
    for datatype, array in arrays.items():
        tensor = tritongrpc.InferInput(f"in_{datatype}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = identity.infer("identity", inputs)
    for datatype, array in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{datatype}"), array)


TYPED = {
    "BOOL": ("bool_contents", [True, False, False, True]),
    "INT8": ("int_contents", [-128, 127, 0, 1]),
    "INT16": ("int_contents", [-32768, 32767, 0, 1]),
    "INT32": ("int_contents", [-(2**31), 2**31 - 1, 0, 1]),
    "INT64": ("int64_contents", [-(2**63), 2**63 - 1, 0, 1]),
    "UINT8": ("uint_contents", [0, 255, 1, 2]),
    "UINT16": ("uint_contents", [0, 65535, 1, 2]),
    "UINT32": ("uint_contents", [0, 2**32 - 1, 1, 2]),
    "UINT64": ("uint64_contents", [0, 2**64 - 1, 1, 2]),
    "FP32": ("fp32_contents", [-1.5, 0.25, 3.0, 2.0**100]),
    "FP64": ("fp64_contents", [-1.5, 0.25, 3.0, 1e300]),
    "BYTES": ("bytes_contents", [b"a", "é".encode(), b"", b"xyz"]),
}


def typed_input(datatype: str, values: list[Any] | None = None, shape: tuple[int, ...] = (2, 2)) -> Any:
    field, default = TYPED[datatype]
    tensor = pb.ModelInferRequest().InferInputTensor(name=f"in_{datatype}", datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(default if values is None else values)
    return tensor


def test_every_typed_contents_field_is_read_for_its_datatypes(tmp_path: Path) -> None:
    model = server_models.identity_model(tmp_path / "typed.onnx", TYPED)  # FP16 and BF16 have no typed field
    request = pb.ModelInferRequest(model_name="typed")
    request.inputs.extend(typed_input(datatype) for datatype in TYPED)
    for port in serve(model, "typed"):
        response = call(port, "ModelInfer", request.SerializeToString(), pb.ModelInferResponse)
    outputs = {tensor.name: index for index, tensor in enumerate(response.outputs)}
    for datatype, (_, values) in TYPED.items():
        raw = response.raw_output_contents[outputs[f"out_{datatype}"]]
        if datatype == "BYTES":
            decoded = tritongrpc.deserialize_bytes_tensor(raw).tolist()
        else:
            decoded = np.frombuffer(raw, dtype=tritongrpc.triton_to_np_dtype(datatype)).tolist()
        assert decoded == values, datatype


def test_bfloat16_travels_as_raw_contents(model_dir: Path) -> None:
    values = np.array([[1.0, -2.5], [0.15625, 3.0]], dtype=np.float32)  # exact in bfloat16
    request = pb.ModelInferRequest(model_name="bf16")
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    request.inputs.append(raw_input("BF16", bits, request))
    request.outputs.add(name="as_float")
    for port in serve(model_dir / "bf16.onnx", "bf16"):
        response = call(port, "ModelInfer", request.SerializeToString(), pb.ModelInferResponse)
    assert response.outputs[0].datatype == "FP32"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 2), values)


# malformed requests


def call(port: int, method: str, data: bytes, response_type: Any = None) -> Any:
    """One unary call with the request as bytes, so requests no client would build can be sent too."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = channel.unary_unary(SERVICE + method)(data, timeout=30)
    return response_type.FromString(reply) if response_type is not None else reply


def raw_input(
    datatype: str, array: np.ndarray, request: Any, name: str | None = None, shape: list[int] | None = None
) -> Any:
    """An input whose data goes in request.raw_input_contents (appended here)."""
    request.raw_input_contents.append(array.tobytes())
    return pb.ModelInferRequest().InferInputTensor(
        name=name or f"in_{datatype}", datatype=datatype, shape=shape or list(array.shape)
    )


def linear_request(**changes: Any) -> bytes:
    """A valid request for the linear model (raw contents), with `changes` applied to its one input."""
    request = pb.ModelInferRequest(model_name="linear")
    tensor = raw_input("FP32", np.ones((1, 4), dtype=np.float32), request, name="input")
    for key, value in changes.items():
        if key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, key, value)
    request.inputs.append(tensor)
    return bytes(request.SerializeToString())


def build(edit: Callable[[Any], None], model: str = "linear") -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    edit(request)
    return bytes(request.SerializeToString())


def one_typed(datatype: str, values: list[Any], shape: tuple[int, ...] = (1, 2), field: str | None = None) -> bytes:
    def edit(request: Any) -> None:
        tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=shape)
        getattr(tensor.contents, field or TYPED[datatype][0]).extend(values)

    return build(edit, "identity")


def with_raw(count: int, size: int = 16) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.extend([b"\0" * size] * count)

    return edit


def both_contents_and_raw(request: Any) -> None:
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0] * 4)
    request.raw_input_contents.append(b"\0" * 16)


def outputs(*names: str) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.ParseFromString(linear_request())
        for name in names:
            request.outputs.add(name=name)

    return edit


def twice(request: Any) -> None:
    request.ParseFromString(linear_request())
    request.inputs.append(request.inputs[0])
    request.raw_input_contents.append(request.raw_input_contents[0])


def versioned(version: str) -> Callable[[Any], None]:
    def edit(request: Any) -> None:
        request.ParseFromString(linear_request())
        request.model_version = version

    return edit


def no_contents(request: Any) -> None:
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])


def fp16_typed(request: Any) -> None:
    request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0])


def stray_field(request: Any) -> None:
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0] * 4)
    tensor.contents.int64_contents.append(1)


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
MALFORMED: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    ("not-protobuf", "ModelInfer", b"\xff\xff\xff\xff", INVALID, "not a valid ModelInferRequest"),
    ("truncated-protobuf", "ModelInfer", linear_request()[:-3], INVALID, "not a valid ModelInferRequest"),
    ("no-model-name", "ModelInfer", b"", INVALID, "model_name is required"),
    ("unknown-model", "ModelInfer", build(with_raw(1), "nope"), NOT_FOUND, "model 'nope' is not served"),
    ("unknown-version", "ModelInfer", build(versioned("9")), NOT_FOUND, "version '9' is not served"),
    ("no-inputs", "ModelInfer", build(lambda r: None), INVALID, "'inputs' must be a non-empty list"),
    ("unnamed-input", "ModelInfer", linear_request(name=""), INVALID, "inputs[0].name"),
    ("unknown-datatype", "ModelInfer", linear_request(datatype="FP8"), INVALID, "'FP8' is not a V2 datatype"),
    ("unknown-input", "ModelInfer", linear_request(name="x"), INVALID, "'x' is not an input of model 'linear'"),
    ("wrong-datatype", "ModelInfer", linear_request(datatype="INT32"), INVALID, "does not match model datatype"),
    ("wrong-rank", "ModelInfer", linear_request(shape=[4]), INVALID, "has rank 1"),
    ("wrong-dimension", "ModelInfer", linear_request(shape=[1, 3]), INVALID, "does not match model shape"),
    ("negative-dimension", "ModelInfer", linear_request(shape=[-1, 4]), INVALID, "non-negative integers"),
    ("huge-dimension", "ModelInfer", linear_request(shape=[2**40, 4]), INVALID, "binary data has 16"),
    ("raw-too-short", "ModelInfer", build(with_raw(1, 12)), INVALID, "needs 16 bytes, binary data has 12"),
    ("raw-count-mismatch", "ModelInfer", build(with_raw(2)), INVALID, "raw_input_contents has 2 entries for 1"),
    ("no-contents", "ModelInfer", build(no_contents), INVALID, "neither contents nor raw_input_contents"),
    ("contents-and-raw", "ModelInfer", build(both_contents_and_raw), INVALID, "both contents and raw_input_contents"),
    ("stray-contents-field", "ModelInfer", build(stray_field), INVALID, "not contents.int64_contents"),
    ("wrong-contents-field", "ModelInfer", one_typed("FP32", [1, 2], field="int_contents"), INVALID,
     "belongs in contents.fp32_contents"),
    ("fp16-typed", "ModelInfer", build(fp16_typed, "identity"), INVALID, "send it in raw_input_contents"),
    ("element-count", "ModelInfer", one_typed("FP32", [1.0, 2.0, 3.0]), INVALID, "needs 2 elements, data has 3"),
    ("int8-range", "ModelInfer", one_typed("INT8", [1, 300]), INVALID, "outside the INT8 range"),
    ("uint16-range", "ModelInfer", one_typed("UINT16", [70000, 1]), INVALID, "outside the UINT16 range"),
    ("bytes-not-utf8", "ModelInfer", one_typed("BYTES", [b"\xff", b"a"]), INVALID, "not valid UTF-8"),
    ("bytes-raw-truncated", "ModelInfer",
     build(lambda r: r.inputs.append(
         raw_input("BYTES", np.frombuffer(struct.pack("<I", 9) + b"ab", np.uint8), r, shape=[1, 2])), "identity"),
     INVALID, "overruns the tensor data"),
    ("missing-input", "ModelInfer", one_typed("INT32", [1, 2]), INVALID, "needs input(s) in_BOOL"),
    ("duplicate-input", "ModelInfer", build(twice), INVALID, "appears more than once"),
    ("unknown-output", "ModelInfer", build(outputs("nope")), INVALID, "'nope' is not an output"),
    ("duplicate-output", "ModelInfer", build(outputs("label", "label")), INVALID, "requested more than once"),
    ("too-large", "ModelInfer", build(with_raw(1, MAX_REQUEST_BYTES + 1)), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "larger than max"),
    ("metadata-not-protobuf", "ModelMetadata", b"\xff\xff", INVALID, "not a valid ModelMetadataRequest"),
    ("metadata-unknown-model", "ModelMetadata", pb.ModelMetadataRequest(name="nope").SerializeToString(), NOT_FOUND,
     "model 'nope' is not served"),
    ("metadata-unknown-version", "ModelMetadata",
     pb.ModelMetadataRequest(name="linear", version="1").SerializeToString(), NOT_FOUND, "version '1'"),
    ("ready-unknown-model", "ModelReady", pb.ModelReadyRequest(name="nope").SerializeToString(), NOT_FOUND,
     "model 'nope' is not served"),
    ("ready-not-protobuf", "ModelReady", b"\x0a\x05ab", INVALID, "not a valid ModelReadyRequest"),
    ("repository-load", "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="linear").SerializeToString(),
     grpc.StatusCode.UNIMPLEMENTED, "Method not found"),
    ("unknown-method", "Nope", b"", grpc.StatusCode.UNIMPLEMENTED, "Method not found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "data", "code", "message"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED]
)
def test_a_malformed_request_gets_its_status_code_and_a_message(
    linear_port: int, identity_port: int, method: str, data: bytes, code: grpc.StatusCode, message: str
) -> None:
    port = identity_port if b"identity" in data[:16] else linear_port
    with pytest.raises(grpc.RpcError) as caught:
        call(port, method, data)
    assert caught.value.code() == code, caught.value.details()
    assert message in caught.value.details()


def test_malformed_requests_leave_the_server_serving(linear: Any) -> None:
    assert len(MALFORMED) >= 30
    tensor = tritongrpc.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
    assert linear.infer("linear", [tensor]).as_numpy("label").tolist() == [1]
