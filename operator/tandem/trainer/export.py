"""ONNX export that is checked before anyone is told the model exists.

The dynamo exporter (torch.export) is used with a dynamic batch dimension, so a server can batch requests.
Then two checks: onnx.checker for a well-formed graph, and onnxruntime on CPU against torch on real
samples, at batch sizes other than the one exported with, so a batch size baked into the graph shows up
here rather than in production. The largest difference is returned for the metadata.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch

from tandem.api.artifact import TensorDatatype, TensorSpec
from tandem.trainer.failures import ExportFailed, InvalidConfiguration, ParityCheckFailed

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest absolute difference allowed between fp32 torch and onnxruntime outputs."""

ONNX_TO_V2: dict[int, TensorDatatype] = {
    onnx.TensorProto.BOOL: TensorDatatype.BOOL,
    onnx.TensorProto.UINT8: TensorDatatype.UINT8,
    onnx.TensorProto.UINT16: TensorDatatype.UINT16,
    onnx.TensorProto.UINT32: TensorDatatype.UINT32,
    onnx.TensorProto.UINT64: TensorDatatype.UINT64,
    onnx.TensorProto.INT8: TensorDatatype.INT8,
    onnx.TensorProto.INT16: TensorDatatype.INT16,
    onnx.TensorProto.INT32: TensorDatatype.INT32,
    onnx.TensorProto.INT64: TensorDatatype.INT64,
    onnx.TensorProto.FLOAT16: TensorDatatype.FP16,
    onnx.TensorProto.FLOAT: TensorDatatype.FP32,
    onnx.TensorProto.DOUBLE: TensorDatatype.FP64,
    onnx.TensorProto.BFLOAT16: TensorDatatype.BF16,
    onnx.TensorProto.STRING: TensorDatatype.BYTES,
}
"""ONNX element types and their Open Inference Protocol names."""


SAMPLE_SHAPE_ENV = "TANDEM_SAMPLE_INPUT_SHAPE"
"""spec.model.export.sampleInputShape as the operator passes it: the dimensions, comma-separated."""


def declared_sample_shape() -> list[int] | None:
    """The per-sample input shape the TrainingJob declares, or None when it declares none."""
    raw = os.environ.get(SAMPLE_SHAPE_ENV, "").strip()
    if not raw:
        return None
    try:
        shape = [int(part) for part in raw.split(",")]
    except ValueError:
        raise InvalidConfiguration(f"{SAMPLE_SHAPE_ENV}={raw!r} is not a comma-separated list of sizes") from None
    if min(shape) < 1:
        raise InvalidConfiguration(f"{SAMPLE_SHAPE_ENV}={raw!r}: every size must be at least 1")
    return shape


def random_samples(shape: Sequence[int], seed: int = 0) -> tuple[torch.Tensor, list[npt.NDArray[np.float32]]]:
    """Standard-normal fp32 inputs of a per-sample shape: a batch of 4 to trace, batches of 1 and 3 for parity.

    For a script that has no real inputs at hand when it exports; parity on random inputs still catches a
    graph that computes something else, a batch size baked in, or an operator onnxruntime gets wrong.
    """
    generator = torch.Generator().manual_seed(seed)
    trace, one, three = (torch.randn(size, *shape, generator=generator) for size in (4, 1, 3))
    return trace, [one.numpy(), three.numpy()]


def check_sample_shape(sample: torch.Tensor, declared: Sequence[int] | None) -> None:
    """Refuse an export sample whose per-sample shape differs from the one the TrainingJob declares.

    The declared shape is what users were told the model takes; exporting another one would publish a
    model whose inputs nobody expects.
    """
    if declared is not None and list(sample.shape[1:]) != list(declared):
        raise InvalidConfiguration(
            f"the export sample has per-sample shape {list(sample.shape[1:])}, but "
            f"spec.model.export.sampleInputShape declares {list(declared)}"
        )


def export_onnx(
    model: torch.nn.Module,
    sample: torch.Tensor,
    *,
    input_name: str = "input",
    output_name: str = "output",
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export a single-input, single-output model with dimension 0 dynamic, as an fp32 CPU graph.

    The model is copied to CPU in eval mode, so exporting never disturbs the training copy or its device;
    `sample` must have a batch of at least 2, since torch.export specialises sizes 0 and 1.
    """
    if sample.shape[0] < 2:
        raise ExportFailed("the export sample needs a batch of at least 2 to keep the batch dimension dynamic")
    exportable = copy.deepcopy(model).to("cpu", torch.float32).eval()
    example = sample.detach().to("cpu", torch.float32)
    batch = torch.export.Dim("batch", min=1)
    try:
        program: Any = torch.onnx.export(
            exportable,
            (example,),
            dynamo=True,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
        proto: onnx.ModelProto = program.model_proto
    except Exception as exc:
        raise ExportFailed(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportFailed(f"onnx.checker rejected the exported model: {exc}") from exc
    return proto


def opset_of(proto: onnx.ModelProto) -> int | None:
    """The default ('ai.onnx') domain opset the graph was written for."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _specs(values: Sequence[onnx.ValueInfoProto], skip: set[str]) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        datatype = ONNX_TO_V2.get(tensor.elem_type)
        if datatype is None:
            raise ExportFailed(f"tensor {value.name!r} has ONNX element type {tensor.elem_type}, not in V2")
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        specs.append(TensorSpec(name=value.name, datatype=datatype, shape=shape))
    return specs


def signature(proto: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs and outputs as V2 tensor specs; a symbolic or unknown dimension becomes -1."""
    initializers = {init.name for init in proto.graph.initializer}
    return _specs(proto.graph.input, initializers), _specs(proto.graph.output, set())


def parity_max_abs_diff(
    model: torch.nn.Module,
    model_bytes: bytes,
    samples: Sequence[npt.NDArray[np.float32]],
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Run torch (fp32, CPU) and onnxruntime on each sample batch; raise if any output differs by more.

    Returns the largest absolute difference seen. A non-finite difference fails too, since it means one
    side produced NaN or infinity where the other did not.
    """
    import onnxruntime as ort

    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportFailed(f"onnxruntime cannot load the exported model: {exc}") from exc
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for batch in samples:
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch)).numpy()
        try:
            actual = session.run(None, {input_name: batch})[0]
        except Exception as exc:
            raise ParityCheckFailed(f"onnxruntime failed on a batch of shape {list(batch.shape)}: {exc}") from exc
        if actual.shape != expected.shape:
            raise ParityCheckFailed(
                f"onnxruntime output shape {list(actual.shape)} differs from torch's {list(expected.shape)} "
                f"for a batch of {batch.shape[0]}"
            )
        # NaN where torch also gives NaN (say, for a NaN input) is agreement; NaN on one side only is not.
        agree_nan = np.isnan(actual) & np.isnan(expected)
        gaps = np.abs(actual.astype(np.float64) - expected.astype(np.float64))[~agree_nan]
        diff = float(np.max(gaps)) if gaps.size else 0.0
        if not np.isfinite(diff) or diff > worst:
            worst = diff
        if not np.isfinite(diff) or diff > tolerance:
            raise ParityCheckFailed(
                f"onnxruntime and torch outputs differ by {diff:.3g} (tolerance {tolerance:g}) on a batch of "
                f"{batch.shape[0]}: the exported graph does not compute what the model does"
            )
    log.info("parity: max abs diff %.3g over %d batches (tolerance %g)", worst, len(samples), tolerance)
    return worst
