"""The model artifact: what a training run produces and what a server loads.

The trainer writes it twice: as `metadata.json` beside `model.onnx` at the output URI, and as JSON in the
container's termination message, which is how the operator learns of it without storage credentials or extra
RBAC. The operator copies it into TrainingJob status; the server checks the sha256 before it serves.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from tandem.api.base import ApiModel

TERMINATION_MESSAGE_LIMIT = 4096
"""Kubernetes truncates termination messages at 4096 bytes; the artifact JSON must fit."""

EXIT_CRASH = 1
"""A training process crashed unexpectedly: retried within the backoff limit."""
EXIT_USAGE = 2
"""Bad command-line arguments (click's exit code): retrying cannot help."""
EXIT_PERMANENT = 3
"""A failure no retry can fix (NaN loss, failed parity check, missing dataset)."""
EXIT_RETRYABLE = 4
"""A failure that may pass on retry (storage unreachable)."""
EXIT_PEER_LOST = 5
"""This worker was well, but a peer of its process group was lost: the whole group restarts together from the
last checkpoint, and only the peer's own failure counts against the backoff limit."""


class TensorDatatype(StrEnum):
    """Open Inference Protocol (KServe V2) tensor datatypes."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BF16 = "BF16"
    BYTES = "BYTES"


class TensorSpec(ApiModel):
    """One model input or output: V2 name, datatype and shape (-1 marks a dynamic dimension)."""

    name: str = Field(min_length=1)
    """Tensor name as the ONNX graph declares it."""
    datatype: TensorDatatype
    """Open Inference Protocol datatype."""
    shape: list[int]
    """Dimensions; -1 for a dynamic one such as the batch dimension."""


class ModelArtifact(ApiModel):
    """A trained, exported and checked model."""

    uri: str = Field(min_length=1)
    """Where model.onnx lives (file://, pvc://claim/path, s3://)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of model.onnx; servers refuse a file that does not match."""
    size_bytes: int = Field(ge=0)
    """Size of model.onnx in bytes."""
    format: str = "onnx"
    """Serialisation format of the model file."""
    opset: int | None = Field(default=None, ge=1)
    """ONNX default-domain opset the model was exported with."""
    inputs: list[TensorSpec] = Field(default_factory=list)
    """Input signature."""
    outputs: list[TensorSpec] = Field(default_factory=list)
    """Output signature."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Training and validation figures, such as accuracy and loss."""
    parity_max_abs_diff: float | None = Field(default=None, ge=0)
    """Largest absolute difference between torch and onnxruntime outputs on sample inputs."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Library versions that produced the model (torch, onnx, onnxruntime)."""
    run: str | None = Field(default=None, max_length=128)
    """The run that published it, `<TrainingJob uid>/<generation>`: a version is written once, and only the
    run that wrote it announces it again."""


class TrainingFailure(ApiModel):
    """What a failed training run writes to its termination message instead of an artifact."""

    reason: str = Field(pattern=r"^[A-Z][A-Za-z]*$")
    """CamelCase cause, such as OutputUnwritable, DatasetMissing, ParityCheckFailed or NaNLoss."""
    error: str
    """Human-readable explanation, naming the URI, file or figure at fault."""
