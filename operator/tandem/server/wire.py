"""Wire datamodels of the V2 inference protocol, decoded but not yet checked against a model.

Plain slotted dataclasses rather than pydantic: the request path builds several of these per request and
the codec validates the JSON structure itself, with messages that name the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestInput:
    """One input tensor as the client sent it: JSON `data`, or raw bytes from the binary extension."""

    name: str
    datatype: str
    shape: list[int]
    data: Any = None
    """Flat or nested JSON list, when the tensor came as JSON."""
    raw: memoryview | None = None
    """The tensor's bytes, when it came through the binary tensor data extension."""


@dataclass(slots=True)
class RequestOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool | None = None
    """None: as the request-level `binary_data_output` says."""


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None
    """None means every model output."""
    id: str | None = None
    binary_outputs: bool = False
    """Request-level `binary_data_output`: every output in binary unless it says otherwise."""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ResponseOutput:
    """One output tensor: a numpy array (uint16 bit patterns for BF16) and how to send it."""

    name: str
    datatype: str
    shape: list[int]
    array: Any
    binary: bool = False


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str | None
    id: str
    outputs: list[ResponseOutput]
