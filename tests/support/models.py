"""Small ONNX models built in the test, for paths that need a real model but not a trained one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def tiny_model(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [64, 10], rng.standard_normal(640).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def _dense(rng: np.random.Generator, name: str, rows: int, columns: int) -> list[TensorProto]:
    scale = np.float32(1 / np.sqrt(rows))
    return [
        helper.make_tensor(f"{name}_w", TensorProto.FLOAT, [rows, columns],
                           (rng.standard_normal(rows * columns) * scale).astype(np.float32)),
        helper.make_tensor(f"{name}_b", TensorProto.FLOAT, [columns], np.zeros(columns, dtype=np.float32)),
    ]


def _saved(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def digits_mlp() -> bytes:
    """The shape of the digits example's model: 64 pixels, two hidden layers of 256, 10 classes."""
    rng = np.random.default_rng(1)
    nodes, weights, source = [], [], "input"
    for index, (rows, columns) in enumerate([(64, 256), (256, 256), (256, 10)]):
        weights += _dense(rng, f"l{index}", rows, columns)
        nodes += [helper.make_node("MatMul", [source, f"l{index}_w"], [f"m{index}"]),
                  helper.make_node("Add", [f"m{index}", f"l{index}_b"], [f"a{index}"])]
        source = f"a{index}"
        if index < 2:
            nodes.append(helper.make_node("Relu", [source], [f"r{index}"]))
            source = f"r{index}"
    nodes.append(helper.make_node("Identity", [source], ["logits"]))
    return _saved(helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    ))


def small_cnn() -> bytes:
    """A CNN on 3x32x32 images: two conv+relu+pool stages (16 and 32 channels) and a dense layer to 10."""
    rng = np.random.default_rng(2)
    weights = [
        helper.make_tensor("c1_w", TensorProto.FLOAT, [16, 3, 3, 3],
                           (rng.standard_normal(432) * 0.2).astype(np.float32)),
        helper.make_tensor("c2_w", TensorProto.FLOAT, [32, 16, 3, 3],
                           (rng.standard_normal(4608) * 0.08).astype(np.float32)),
        helper.make_tensor("flat", TensorProto.INT64, [2], np.array([-1, 32 * 8 * 8], dtype=np.int64)),
        *_dense(rng, "fc", 32 * 8 * 8, 10),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "c1_w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2_w"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "fc_w"], ["m"]),
        helper.make_node("Add", ["m", "fc_b"], ["logits"]),
    ]
    return _saved(helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        weights,
    ))


def failing_on_nonzero_model() -> bytes:
    """tiny_model's signature, but inference fails for a first input value of 0.1 or more: it looks up row
    int(10 * input[:, 0]) of a two-row table. The server's warm-up (zeros) passes, so the model loads and
    becomes ready, and then answers real requests with onnxruntime's out-of-bounds error (a 500)."""
    table = np.random.default_rng(3).standard_normal(20).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["input", "column"], ["first"], axis=1),
        helper.make_node("Mul", ["first", "ten"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["row"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "row"], ["logits"], axis=0),
    ]
    return _saved(helper.make_graph(
        nodes, "failing_on_nonzero",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            helper.make_tensor("column", TensorProto.INT64, [], [0]),
            helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
            helper.make_tensor("table", TensorProto.FLOAT, [2, 10], table),
        ],
    ))
