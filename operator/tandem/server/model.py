"""One ONNX model with a lifecycle: fetch, verify, open, warm up, ready; then predict.

The session is opened from the fetched bytes, so exactly the bytes whose sha256 was checked are the ones
served (no second read of a file that could change between the check and the load).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from tandem import storage
from tandem.api.artifact import TensorSpec
from tandem.server import datatypes
from tandem.server.errors import InferenceFailed, ModelLoadError
from tandem.server.lonerun import LoneRunSessions
from tandem.server.providers import ExecutionProvider, open_session, running_provider

log = logging.getLogger("tandem.server.model")

PLATFORM = "onnx_onnxv1"
"""The platform string V2 metadata uses for ONNX models (Triton's name for onnxruntime)."""


class ModelState(StrEnum):
    NEW = "New"
    LOADING = "Loading"
    READY = "Ready"
    FAILED = "Failed"
    UNLOADED = "Unloaded"


@dataclass(frozen=True)
class Signature:
    """The model's V2 inputs and outputs as onnxruntime reports them; -1 marks a dynamic dimension."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_index: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_index: Mapping[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_index", {spec.name: spec for spec in self.inputs})
        object.__setattr__(self, "output_index", {spec.name: spec for spec in self.outputs})


@dataclass(frozen=True)
class SessionSettings:
    """How to open the onnxruntime session."""

    intra_op_threads: int = 1
    """Threads for one operator in a run that overlaps another (every run when `lone_run_threads` is off)."""
    lone_run_threads: int = 0
    """Threads for a run that starts while no other is in progress, on a second session (`lonerun`); CPU
    provider only. 0, or no more than `intra_op_threads`: off, one session for every run."""
    wide_session_max_model_bytes: int | None = None
    """The largest model that gets the wide session: it holds another copy of the weights, which a pod's
    memory limit may not afford (`budget.MemoryBudget.wide_session_max_model_bytes`). None: any model."""
    spinning: bool = False
    """Let idle intra-op threads busy-wait. Off: on few cores the spinning steals CPU from HTTP parsing."""
    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    """auto: CUDA (TensorRT first where it loads) when the container sees a GPU, CPU otherwise (`providers`)."""


def _dims(shape: Sequence[Any] | None) -> list[int]:
    """ONNX shape -> V2 shape: symbolic or unknown dimensions become -1."""
    if shape is None:
        return []
    return [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape]


def signature_of(session: Any) -> Signature:
    """The V2 signature of an onnxruntime session; ModelLoadError for a type the protocol cannot carry."""
    try:
        inputs = tuple(
            TensorSpec(name=arg.name, datatype=datatypes.from_ort(arg.type), shape=_dims(arg.shape))
            for arg in session.get_inputs()
        )
        outputs = tuple(
            TensorSpec(name=arg.name, datatype=datatypes.from_ort(arg.type), shape=_dims(arg.shape))
            for arg in session.get_outputs()
        )
    except ValueError as exc:
        raise ModelLoadError(f"model signature cannot be served over V2: {exc}") from exc
    return Signature(inputs=inputs, outputs=outputs)


def warmup_feeds(signature: Signature) -> dict[str, np.ndarray]:
    """Zero inputs of the declared shapes with every dynamic dimension set to 1."""
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=datatypes.NUMPY_DTYPES[spec.datatype])
    return feeds


class OnnxModel:
    """A named ONNX model served from a URI."""

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        sha256: str | None = None,
        version: str | None = None,
        session: SessionSettings | None = None,
    ) -> None:
        self.name = name
        self.uri = uri
        self.expected_sha256 = sha256.lower() if sha256 else None
        self.version = version
        self.settings = session or SessionSettings()
        self.state = ModelState.NEW
        self.sha256: str | None = None
        self.execution_provider: str | None = None
        """The provider the session runs on (cpu, cuda, tensorrt), once loaded."""
        self.sessions: LoneRunSessions | None = None
        """The sessions a run chooses from (a wide one for lone runs on CPU, `lonerun`), once loaded."""
        self.requests_admitted: Callable[[], int] = lambda: 0
        """Infer requests the server has admitted and not yet answered; the data plane that serves the model
        sets it. A run is alone only when it is the only one, so none waits for a run or is being decoded."""
        self._signature: Signature | None = None
        self._bf16_inputs: frozenset[str] = frozenset()
        self._bf16 = False

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self._signature

    def load(self) -> None:
        """Fetch, verify, open and warm up; READY on success, FAILED and ModelLoadError otherwise."""
        self.state = ModelState.LOADING
        try:
            self._load()
        except ModelLoadError:
            self.state = ModelState.FAILED
            raise
        except Exception as exc:
            self.state = ModelState.FAILED
            raise ModelLoadError(f"model {self.name}: {type(exc).__name__}: {exc}") from exc
        self.state = ModelState.READY

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            data = storage.read_bytes(self.uri)
        except storage.StorageError as exc:
            raise ModelLoadError(f"cannot read model {self.name} from {self.uri}: {exc}") from exc
        self.sha256 = storage.sha256_hex(data)
        if self.expected_sha256 is not None and self.sha256 != self.expected_sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {self.uri}: expected {self.expected_sha256}, got {self.sha256}; "
                "refusing to serve a model that is not the one the InferenceService names"
            )
        session = self._open(data, self.settings.intra_op_threads, self.settings.execution_provider)
        self.execution_provider = running_provider(session)
        wide = None
        if self._wants_wide_session(len(data)):
            wide = self._open(data, self.settings.lone_run_threads, ExecutionProvider.CPU)
        self.sessions = LoneRunSessions(session, wide, lambda: self.requests_admitted())
        self._signature = signature_of(session)
        self._bf16_inputs = frozenset(s.name for s in self._signature.inputs if s.datatype == "BF16")
        self._bf16 = any(s.datatype == "BF16" for s in (*self._signature.inputs, *self._signature.outputs))
        if self._bf16 and any(s.datatype == "BYTES" for s in self._signature.inputs):
            raise ModelLoadError(
                f"model {self.name} has bfloat16 tensors and string inputs; onnxruntime's Python API can "
                "feed bfloat16 only as OrtValues, which cannot hold strings"
            )
        fetched = time.perf_counter()
        feeds = warmup_feeds(self._signature)
        try:
            self.predict(feeds, None)  # alone: the wide session where there is one
            if wide is not None:
                with self.sessions.session():  # as if beside another run: the narrow session
                    self.predict(feeds, None)
        except InferenceFailed as exc:
            raise ModelLoadError(f"warm-up inference failed for {self.name}: {exc.message}") from exc
        log.info(
            "model loaded",
            extra={
                "model": self.name,
                "uri": self.uri,
                "sha256": self.sha256,
                "bytes": len(data),
                "load_s": round(fetched - started, 3),
                "warmup_s": round(time.perf_counter() - fetched, 3),
                "threads": self.settings.intra_op_threads,
                "lone_run_threads": self.settings.lone_run_threads if wide is not None else None,
                "execution_provider": self.execution_provider,
                "requested_provider": self.settings.execution_provider.value,
            },
        )

    def _wants_wide_session(self, model_bytes: int) -> bool:
        """Whether to open the wide session for lone runs: asked for, on CPU, and affordable (else logged why)."""
        settings = self.settings
        if settings.lone_run_threads <= settings.intra_op_threads or self.execution_provider != "cpu":
            return False
        if settings.wide_session_max_model_bytes is not None and model_bytes > settings.wide_session_max_model_bytes:
            log.warning(
                "wide session not opened: the memory budget cannot hold a second copy of the model; every run "
                "uses the narrow session",
                extra={
                    "model": self.name,
                    "bytes": model_bytes,
                    "max_bytes": settings.wide_session_max_model_bytes,
                    "threads": settings.intra_op_threads,
                },
            )
            return False
        return True

    def _open(self, data: bytes, threads: int, provider: ExecutionProvider) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.settings.spinning else "0")
        try:
            return open_session(ort, data, options, provider, self.name)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot open {self.uri}: {exc}") from exc

    def predict(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None) -> list[Any]:
        """Run the session on validated inputs; thread-safe, releases the GIL while onnxruntime works.

        Returns numpy arrays, except BF16 outputs, which come back as uint16 bit patterns.
        """
        if self.sessions is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        names = list(outputs) if outputs is not None else [s.name for s in self.signature.outputs]
        try:
            with self.sessions.session() as session:
                if self._bf16:
                    return self._predict_ortvalues(session, feeds, names)
                result: list[Any] = session.run(names, feeds)
        except Exception as exc:
            raise InferenceFailed(f"the model failed on these inputs: {_short(exc)}") from exc
        return result

    def _predict_ortvalues(self, session: Any, feeds: dict[str, np.ndarray], names: list[str]) -> list[Any]:
        """The slow path for bfloat16, which numpy cannot hold: feed and fetch OrtValues."""
        import onnxruntime as ort

        values = {
            name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, datatypes.ONNX_BFLOAT16)
            if name in self._bf16_inputs
            else ort.OrtValue.ortvalue_from_numpy(array)
            for name, array in feeds.items()
        }
        results = session.run_with_ort_values(names, values)
        arrays: list[Any] = []
        for name, value in zip(names, results, strict=True):
            if self.signature.output_index[name].datatype == "BF16":
                arrays.append(_bf16_output(value))
            else:
                arrays.append(value.numpy())
        return arrays

    def unload(self) -> None:
        self.sessions = None
        self.state = ModelState.UNLOADED


def _bf16_output(value: Any) -> np.ndarray:
    """uint16 bit patterns of a bfloat16 OrtValue (onnxruntime cannot convert it to numpy itself)."""
    shape = value.shape()
    count = int(np.prod(shape)) if shape else 1
    import ctypes

    buffer = memoryview((ctypes.c_uint16 * count).from_address(value.data_ptr())).cast("B")
    return np.frombuffer(buffer, dtype=np.uint16, count=count).copy().reshape(shape)


def _short(exc: BaseException) -> str:
    """onnxruntime's exception text without its long C++ prefix."""
    text = str(exc)
    marker = "] : "
    return text.split(marker, 1)[-1].strip()[:500] if marker in text else text[:500]
