"""V2 gRPC messages to the data plane's wire types and back; the gRPC twin of `codec`.

Only structure is checked here (names, datatypes, which contents field, how many raw buffers), with
messages that name the field; contents go through the same `tensors` functions as REST's JSON and binary
data, so range, element-count and shape checks are one code path for both protocols. Typed contents become
the flat list a JSON body would have carried; raw contents become the memoryview of the binary extension.
Responses always carry `raw_output_contents` (as Triton's server does): every V2 client decodes them, and
they cost a copy where typed contents cost a Python object per element.
"""

from __future__ import annotations

from typing import Any

from tandem.server import datatypes, proto, tensors
from tandem.server.errors import InvalidInput
from tandem.server.wire import InferRequest, InferResponse, RequestInput, RequestOutput

CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""The InferTensorContents field that carries each datatype; FP16 and BF16 travel only as raw contents."""

_ALL_FIELDS = tuple(sorted(set(CONTENTS_FIELD.values())))


def decode_request(message: Any) -> InferRequest:
    """An `InferRequest` from a ModelInferRequest; InvalidInput naming the field for a malformed one."""
    if not message.model_name:
        raise InvalidInput("model_name is required")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs; send one per input, in order"
        )
    if not message.inputs:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs = [_input(position, item, raw[position] if raw else None) for position, item in enumerate(message.inputs)]
    outputs = [RequestOutput(output.name) for output in message.outputs] or None
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        outputs=outputs,
        id=message.id or None,
        parameters=parameters(message.parameters),
    )


def _input(position: int, item: Any, raw: bytes | None) -> RequestInput:
    name = item.name
    if not name:
        raise InvalidInput(f"inputs[{position}].name must be a non-empty string")
    datatype = item.datatype
    if not datatypes.is_known(datatype):
        raise InvalidInput(
            f"input '{name}': datatype {datatype!r} is not a V2 datatype ({', '.join(datatypes.NUMPY_DTYPES)})"
        )
    shape = list(item.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
    has_contents = item.HasField("contents")
    if raw is not None:
        if has_contents:
            raise InvalidInput(f"input '{name}': has both contents and raw_input_contents; send one of them")
        return RequestInput(name, datatype, shape, raw=memoryview(raw))
    if not has_contents:
        raise InvalidInput(f"input '{name}': has neither contents nor raw_input_contents")
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    contents = item.contents
    stray = [other for other in _ALL_FIELDS if other != field and len(getattr(contents, other))]
    if stray:
        raise InvalidInput(f"input '{name}': {datatype} data belongs in contents.{field}, not contents.{stray[0]}")
    values = list(getattr(contents, field))
    if datatype == "BYTES":
        values = [_text(name, value) for value in values]
    return RequestInput(name, datatype, shape, data=values)


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input '{name}': BYTES element is not valid UTF-8") from None


def parameters(entries: Any) -> dict[str, Any]:
    """An InferParameter map as plain values (bool, int or str; None for an unset oneof)."""
    result: dict[str, Any] = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        result[key] = getattr(value, choice) if choice else None
    return result


def encode_response(response: InferResponse) -> Any:
    """A ModelInferResponse with every output in raw_output_contents."""
    message = proto.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id
    )
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        message.raw_output_contents.append(tensors.to_binary(output.datatype, output.array))
    return message


def metadata_response(document: dict[str, Any]) -> Any:
    """A ModelMetadataResponse from the data plane's metadata document (the REST body)."""
    message = proto.ModelMetadataResponse(
        name=document["name"], versions=document.get("versions", []), platform=document["platform"]
    )
    for spec in document["inputs"]:
        message.inputs.add(**spec)
    for spec in document["outputs"]:
        message.outputs.add(**spec)
    return message
