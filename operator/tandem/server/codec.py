"""Request and response bodies on the wire: JSON, and Triton's binary tensor data extension.

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw bytes of
every input whose parameters carry `binary_data_size`, in input order. Without that header the whole body
is JSON whatever the Content-Type says (tritonclient sends none). The structure is checked here, field by
field, so a malformed request gets a 400 that names the field; contents are checked by the data plane.
"""

from __future__ import annotations

from typing import Any

import orjson

from tandem.server import datatypes, tensors
from tandem.server.errors import InvalidInput
from tandem.server.wire import InferRequest, InferResponse, RequestInput, RequestOutput

_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decode_request(body: bytes, header_length: int | None, model_name: str, model_version: str | None) -> InferRequest:
    """Parse an infer request body; `header_length` is Inference-Header-Content-Length, if sent."""
    if header_length is None:
        document = _load(body)
        binary = memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        view = memoryview(body)
        document = _load(view[:header_length])
        binary = view[header_length:]
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    inputs = _inputs(document.get("inputs"), binary)
    outputs = _outputs(document.get("outputs"))
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        inputs=inputs,
        outputs=outputs,
        id=request_id,
        binary_outputs=parameters.get("binary_data_output") is True,
        parameters=parameters,
    )


def _load(data: bytes | memoryview) -> Any:
    if not data:
        raise InvalidInput("request body is empty; expected a JSON inference request")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'parameters' of {where} must be an object")
    return value


def _inputs(value: Any, binary: memoryview) -> list[RequestInput]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("'inputs' must be a non-empty list")
    inputs: list[RequestInput] = []
    offset = 0
    for position, item in enumerate(value):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{position}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{position}].name must be a non-empty string")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or not datatypes.is_known(datatype):
            raise InvalidInput(
                f"input '{name}': datatype {datatype!r} is not a V2 datatype ({', '.join(datatypes.NUMPY_DTYPES)})"
            )
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
        ):
            raise InvalidInput(f"input '{name}': shape must be a list of non-negative integers")
        parameters = _parameters(item.get("parameters"), f"input '{name}'")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} overruns the {len(binary)} bytes of binary data"
                )
            inputs.append(RequestInput(name, datatype, shape, raw=binary[offset : offset + size]))
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"input '{name}': has neither 'data' nor binary_data_size")
            inputs.append(RequestInput(name, datatype, shape, data=item["data"]))
    if offset != len(binary):
        raise InvalidInput(f"binary data is {len(binary)} bytes but the inputs' binary_data_size add up to {offset}")
    return inputs


def _outputs(value: Any) -> list[RequestOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    outputs: list[RequestOutput] = []
    for position, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{position}] must be an object with a string 'name'")
        parameters = _parameters(item.get("parameters"), f"output '{item['name']}'")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{item['name']}': binary_data must be true or false")
        outputs.append(RequestOutput(item["name"], binary=binary))
    return outputs


def encode_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when any output is binary (None for plain JSON)."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        entry: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.binary:
            blob = tensors.to_binary(output.datatype, output.array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensors.to_json_data(output.datatype, output.array)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        document["model_version"] = response.model_version
    document["id"] = response.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=_DUMP_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def dumps(document: Any) -> bytes:
    """JSON for metadata and error bodies."""
    return orjson.dumps(document, option=_DUMP_OPTIONS)
