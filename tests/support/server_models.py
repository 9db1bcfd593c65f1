"""Small ONNX test models built with onnx.helper: fast to make, no torch, and covering every datatype."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

LINEAR_WEIGHT = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 1.0], [-1.0, 3.0]], dtype=np.float32)
LINEAR_BIAS = np.array([0.5, -0.5], dtype=np.float32)

IDENTITY_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def linear_model(path: Path) -> Path:
    """input FP32 [-1, 4] -> output FP32 [-1, 2] = input @ W + b, and label INT64 [-1] = argmax."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["output"]),
            helper.make_node("ArgMax", ["output"], ["label"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        [numpy_helper.from_array(LINEAR_WEIGHT, "W"), numpy_helper.from_array(LINEAR_BIAS, "B")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def linear_expected(rows: np.ndarray) -> np.ndarray:
    return rows.astype(np.float32) @ LINEAR_WEIGHT + LINEAR_BIAS


def identity_model(path: Path, names: Iterable[str] = IDENTITY_TYPES) -> Path:
    """One Identity per V2 datatype (or per one of `names`): input `in_<DT>` [-1, 2] -> output `out_<DT>`."""
    types = {name: IDENTITY_TYPES[name] for name in names}
    nodes = [helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]) for name in types]
    inputs = [helper.make_tensor_value_info(f"in_{n}", t, ["batch", 2]) for n, t in types.items()]
    outputs = [helper.make_tensor_value_info(f"out_{n}", t, ["batch", 2]) for n, t in types.items()]
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def bf16_model(path: Path) -> Path:
    """in_BF16 [-1, 2] -> out_BF16 (Identity) and as_float FP32 (Cast), to check bfloat16 both ways."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["in_BF16"], ["out_BF16"]),
            helper.make_node("Cast", ["in_BF16"], ["as_float"], to=TensorProto.FLOAT),
        ],
        "bf16",
        [helper.make_tensor_value_info("in_BF16", TensorProto.BFLOAT16, ["batch", 2])],
        [
            helper.make_tensor_value_info("out_BF16", TensorProto.BFLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("as_float", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


LOOKUP_TABLE = np.array([10.0, 20.0, 30.0, 40.0], dtype=np.float32)


def lookup_model(path: Path) -> Path:
    """index INT64 [-1] -> value FP32 [-1] = LOOKUP_TABLE[index] (Gather).

    Any INT64 passes the signature check, but an index outside [-4, 3] fails inside onnxruntime: the input a
    server cannot refuse up front, and which fails every request that shares its run.
    """
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["value"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(LOOKUP_TABLE, "table")],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def slow_model(path: Path, iterations: int = 60, width: int = 1024) -> Path:
    """input FP32 [1, width] -> output: many chained MatMuls, so a run takes tens of milliseconds."""
    weight = numpy_helper.from_array(np.eye(width, dtype=np.float32) * 0.999, "W")
    nodes = []
    previous = "input"
    for i in range(iterations):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["output"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])],
        [weight],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def free_model(path: Path) -> Path:
    """Identity for `values` FP32 and `words` BYTES, every dimension free ([a, b]): the signature that lets a
    client choose any shape of rank 2, so only the server's own checks stand between a shape and numpy."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["values"], ["values_out"]),
            helper.make_node("Identity", ["words"], ["words_out"]),
        ],
        "free",
        [
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["a", "b"]),
            helper.make_tensor_value_info("words", TensorProto.STRING, ["a", "b"]),
        ],
        [
            helper.make_tensor_value_info("values_out", TensorProto.FLOAT, ["a", "b"]),
            helper.make_tensor_value_info("words_out", TensorProto.STRING, ["a", "b"]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)
