"""Tensor contents between wire form (JSON lists, binary bytes) and numpy, for every V2 datatype.

Everything raises InvalidInput with a message naming the tensor, so the client learns what to fix and
onnxruntime never sees a value that would wrap around or a buffer of the wrong size.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from tandem.server import datatypes
from tandem.server.errors import InvalidInput

_LENGTH = struct.Struct("<I")
_DIRECT: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "FP16": np.dtype(np.float16),
}
MAX_NESTING = 64
"""Depth of nested JSON lists a tensor's data may have: numpy's own limit on dimensions, which the numeric path
meets inside `np.asarray`; BYTES data is flattened here and gets the same bound instead of a RecursionError."""
_MAX_EXTENT = 2**63 - 1
"""Bytes numpy and onnxruntime (int64 dimensions) can address: the bound on the product of a shape's non-zero
dimensions times the item size, even when another dimension is 0 and the tensor holds nothing."""


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def check_extent(name: str, datatype: str, shape: Sequence[int]) -> None:
    """InvalidInput for a shape no array can take, such as `[0, 2**62]`: zero elements, so any element count
    check passes, but numpy refuses to make (and onnxruntime to describe) an array of it, which would be a 500."""
    extent = math.prod(dim for dim in shape if dim) * datatypes.NUMPY_DTYPES[datatype].itemsize
    if extent > _MAX_EXTENT:
        raise InvalidInput(f"input '{name}': shape {list(shape)} is too large for any {datatype} tensor")


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> np.ndarray:
    """A numpy array of `shape` from flat or nested row-major JSON `data`."""
    check_extent(name, datatype, shape)
    if not isinstance(data, list):
        data = [data]
    array = _bytes_from_json(name, data) if datatype == "BYTES" else _numbers_from_json(name, datatype, data)
    expected = element_count(shape)
    if array.size != expected:
        raise InvalidInput(f"input '{name}': shape {list(shape)} needs {expected} elements, data has {array.size}")
    return array.reshape(shape)


def _numbers_from_json(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    if datatype in _DIRECT and data and type(data[0]) is float:
        # Fast path for the common case, a float tensor: numpy converts straight to the target dtype
        # (a third faster than via float64). The first element's type guards against string and bool lists.
        try:
            return np.array(data, dtype=_DIRECT[datatype])
        except (ValueError, TypeError):
            pass  # ragged, or mixed types further in: the checks below give the message
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data is not a regular (non-ragged) array: {exc}") from None
    kind = parsed.dtype.kind
    if parsed.size == 0:
        return np.empty(parsed.shape, dtype=datatypes.NUMPY_DTYPES[datatype])
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"input '{name}': BOOL data must be true/false, got {_kind_name(kind)}")
        return parsed
    if datatype in datatypes.FLOAT_TYPES:
        if kind not in "fiu":
            raise InvalidInput(f"input '{name}': {datatype} data must be numbers, got {_kind_name(kind)}")
        if datatype == "BF16":
            return datatypes.fp32_to_bf16_bits(parsed.astype(np.float32))
        return parsed.astype(datatypes.NUMPY_DTYPES[datatype], copy=False)
    if kind == "f" and datatype == "UINT64":
        parsed = _uint64_from_json(name, data)
        kind = "u"
    if kind not in "iu":
        raise InvalidInput(f"input '{name}': {datatype} data must be integers, got {_kind_name(kind)}")
    low, high = datatypes.INTEGER_RANGES[datatype]
    if int(parsed.min()) < low or int(parsed.max()) > high:
        raise InvalidInput(f"input '{name}': a value is outside the {datatype} range [{low}, {high}]")
    return parsed.astype(datatypes.NUMPY_DTYPES[datatype], copy=False)


def _uint64_from_json(name: str, data: list[Any]) -> np.ndarray:
    """numpy reads [0, 2**63] as float64 (no common integer type); keep exact integers for UINT64."""
    values = np.asarray(data, dtype=object)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.flat):
        raise InvalidInput(f"input '{name}': UINT64 data must be integers, got floats")
    if any(v < 0 or v >= 2**64 for v in values.flat):
        raise InvalidInput(f"input '{name}': a value is outside the UINT64 range [0, {2**64 - 1}]")
    return values.astype(np.uint64)


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "f": "floats", "i": "integers", "u": "integers", "U": "strings"}.get(
        kind, "mixed or non-numeric values"
    )


def _flatten(name: str, data: list[Any]) -> list[Any]:
    """The leaves of nested lists in row-major order; iterative, so depth costs no stack, and bounded."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_NESTING:
                    raise InvalidInput(f"input '{name}': data is nested more than {MAX_NESTING} lists deep")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_from_json(name: str, data: list[Any]) -> np.ndarray:
    flat = _flatten(name, data)
    for item in flat:
        if not isinstance(item, str):
            raise InvalidInput(f"input '{name}': BYTES data must be strings, got {type(item).__name__}")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array


def from_binary(name: str, datatype: str, shape: Sequence[int], raw: memoryview) -> np.ndarray:
    """A numpy array of `shape` from the binary extension's little-endian row-major bytes (no copy)."""
    check_extent(name, datatype, shape)
    expected = element_count(shape)
    if datatype == "BYTES":
        array = _bytes_from_binary(name, raw)
        if array.size != expected:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} needs {expected} elements, binary data has {array.size}"
            )
        return array.reshape(shape)
    dtype = datatypes.NUMPY_DTYPES[datatype]
    if len(raw) != expected * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': shape {list(shape)} of {datatype} needs {expected * dtype.itemsize} bytes, "
            f"binary data has {len(raw)}"
        )
    if datatype == "BOOL":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.bool_).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _bytes_from_binary(name: str, raw: memoryview) -> np.ndarray:
    """BYTES elements, each a 4-byte little-endian length then that many bytes, decoded as UTF-8."""
    items: list[str] = []
    offset = 0
    total = len(raw)
    while offset < total:
        if offset + 4 > total:
            raise InvalidInput(f"input '{name}': truncated BYTES element length at byte {offset}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > total:
            raise InvalidInput(f"input '{name}': BYTES element at byte {offset} overruns the tensor data")
        try:
            items.append(bytes(raw[offset : offset + length]).decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{name}': BYTES element is not valid UTF-8") from None
        offset += length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def to_json_data(datatype: str, array: np.ndarray) -> Any:
    """Flat row-major data for a JSON response: a contiguous numpy array (orjson writes it) or a list."""
    if datatype == "BYTES":
        return [_text(item) for item in array.reshape(-1).tolist()]
    if datatype == "BF16":
        return datatypes.bf16_bits_to_fp32(array).reshape(-1)
    if datatype == "FP16":
        return array.astype(np.float32).reshape(-1)
    return np.ascontiguousarray(array).reshape(-1)


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def to_binary(datatype: str, array: np.ndarray) -> bytes:
    """The binary extension's bytes for an output tensor."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.reshape(-1).tolist():
            encoded = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(encoded)))
            parts.append(encoded)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=datatypes.NUMPY_DTYPES[datatype].newbyteorder("<")).tobytes()
