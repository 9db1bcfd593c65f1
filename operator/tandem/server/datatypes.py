"""The V2 datatype table: how each Open Inference Protocol datatype maps to numpy and to onnxruntime.

BF16 has no numpy dtype; a BF16 tensor travels through the server as uint16 holding the raw bfloat16 bits
(what the binary extension carries anyway) and is handed to onnxruntime as an OrtValue tagged BFLOAT16.
BYTES becomes a numpy object array of str for ONNX string inputs, which is what onnxruntime accepts.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from tandem.api.artifact import TensorDatatype

NUMPY_DTYPES: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(object),
}
"""V2 datatype -> the numpy dtype the server holds the tensor in (little-endian, native on x86/arm)."""

ORT_TYPES: Final[dict[str, str]] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}
"""onnxruntime NodeArg.type -> V2 datatype; a type missing here (sequences, maps, float8) is not servable."""

ONNX_BFLOAT16: Final = 16
"""onnx.TensorProto.BFLOAT16, for OrtValue.ortvalue_from_numpy_with_onnx_type."""

INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    name: (int(np.iinfo(NUMPY_DTYPES[name]).min), int(np.iinfo(NUMPY_DTYPES[name]).max))
    for name in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
}
"""Inclusive value range of each integer datatype, to refuse JSON numbers that would wrap around."""

FLOAT_TYPES: Final = frozenset({"FP16", "FP32", "FP64", "BF16"})


def is_known(datatype: str) -> bool:
    return datatype in NUMPY_DTYPES


def from_ort(ort_type: str) -> TensorDatatype:
    """The V2 datatype for an onnxruntime tensor type string; ValueError for non-tensor or exotic types."""
    try:
        return TensorDatatype(ORT_TYPES[ort_type])
    except KeyError:
        raise ValueError(f"unsupported onnxruntime type {ort_type}") from None


def element_size(datatype: str) -> int:
    """Bytes per element in the binary extension; 0 for BYTES, whose elements are length-prefixed."""
    if datatype == "BYTES":
        return 0
    return NUMPY_DTYPES[datatype].itemsize


def fp32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16); NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exact."""
    return (np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
