"""Protocol-free inference: find the model, check the request against its signature, run, select outputs.

Every check happens here, before onnxruntime sees the data, so a wrong name, datatype, shape or element
count is a 400 naming the tensor rather than an onnxruntime error or a crash. The REST and gRPC adapters only
translate their wire format to `InferRequest` and `InferResponse` back, so both protocols share one decode,
validate and run path, and one bound on the requests waiting for it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tandem.api.artifact import TensorSpec
from tandem.server import tensors
from tandem.server.batching import Batcher
from tandem.server.errors import InvalidInput, ModelNotFound, ModelNotReady, Overloaded
from tandem.server.model import PLATFORM, OnnxModel
from tandem.server.wire import InferRequest, InferResponse, RequestOutput, ResponseOutput


def check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    """`shape` must have the signature's rank and match every fixed dimension."""
    if len(shape) != len(spec.shape):
        raise InvalidInput(f"input '{name}': shape {list(shape)} has rank {len(shape)}, model expects {spec.shape}")
    for given, declared in zip(shape, spec.shape, strict=True):
        if declared >= 0 and given != declared:
            raise InvalidInput(f"input '{name}': shape {list(shape)} does not match model shape {spec.shape}")


class DataPlane:
    """Serves a set of models (Tandem runs one per pod, the code does not assume it)."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        observe_batch: Callable[[str, int], None] = lambda model, rows: None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self._models: dict[str, OnnxModel] = {}
        self._executor = executor
        self._batchers: dict[str, Batcher] = {}
        self.observe_batch = observe_batch
        """Called with (model, rows) for every onnxruntime run; metrics hook."""
        self.max_in_flight = max_in_flight
        """Infer requests admitted at once (running plus waiting); beyond it, Overloaded. None: no bound."""
        self.in_flight = 0

    def enable_batching(self, model: OnnxModel, max_batch_size: int, max_delay_s: float, runs: int = 1) -> None:
        """Queue requests for `model` and run them together; only if its dimension 0 is dynamic everywhere.

        `runs` is how many batches may run at once: the executor's threads.
        """
        self._batchers[model.name] = Batcher(
            model,
            self._executor,
            max_batch_size,
            max_delay_s,
            runs,
            lambda rows: self.observe_batch(model.name, rows),
        )

    def add(self, model: OnnxModel) -> None:
        """Serve `model`; its runs learn from `in_flight` whether they are alone (`lonerun`)."""
        self._models[model.name] = model
        model.requests_admitted = lambda: self.in_flight

    @property
    def models(self) -> list[OnnxModel]:
        return list(self._models.values())

    def ready(self) -> bool:
        return bool(self._models) and all(model.ready for model in self._models.values())

    def model(self, name: str, version: str | None = None) -> OnnxModel:
        """The named model; 404 if it is unknown, or a version is asked for that is not the one served.

        A model served without a version has none to match: asking for any version of it is a 404 too, so a
        client pinned to a version never silently gets another model.
        """
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' is not served here")
        if version is not None and version != model.version:
            served = f"version {model.version}" if model.version is not None else "no version"
            raise ModelNotFound(f"model '{name}' version '{version}' is not served here (it is served with {served})")
        return model

    def ready_model(self, name: str, version: str | None = None) -> OnnxModel:
        model = self.model(name, version)
        if not model.ready:
            raise ModelNotReady(f"model '{name}' is {model.state.value}, not ready")
        return model

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """V2 model metadata; the signature exists only once the model has loaded."""
        model = self.ready_model(name, version)
        signature = model.signature
        document: dict[str, Any] = {"name": model.name}
        if model.version is not None:
            document["versions"] = [model.version]
        document["platform"] = PLATFORM
        document["inputs"] = [_spec_json(spec) for spec in signature.inputs]
        document["outputs"] = [_spec_json(spec) for spec in signature.outputs]
        return document

    def decode(self, model: OnnxModel, request: InferRequest) -> dict[str, np.ndarray]:
        """Validated numpy feeds for onnxruntime, checked against the signature."""
        index = model.signature.input_index
        feeds: dict[str, np.ndarray] = {}
        for item in request.inputs:
            spec = index.get(item.name)
            if spec is None:
                raise InvalidInput(
                    f"input '{item.name}' is not an input of model '{model.name}' (inputs: {', '.join(index)})"
                )
            if item.name in feeds:
                raise InvalidInput(f"input '{item.name}' appears more than once")
            if item.datatype != spec.datatype:
                raise InvalidInput(
                    f"input '{item.name}': datatype {item.datatype} does not match model datatype {spec.datatype.value}"
                )
            check_shape(item.name, item.shape, spec)
            if item.raw is not None:
                feeds[item.name] = tensors.from_binary(item.name, item.datatype, item.shape, item.raw)
            else:
                feeds[item.name] = tensors.from_json(item.name, item.datatype, item.shape, item.data)
        missing = [name for name in index if name not in feeds]
        if missing:
            raise InvalidInput(f"model '{model.name}' needs input(s) {', '.join(missing)}")
        return feeds

    def requested_outputs(self, model: OnnxModel, request: InferRequest) -> list[RequestOutput]:
        """The outputs to return, in request order; all of them when the request names none."""
        index = model.signature.output_index
        if not request.outputs:
            return [RequestOutput(name, request.binary_outputs) for name in index]
        seen: set[str] = set()
        for output in request.outputs:
            if output.name not in index:
                raise InvalidInput(
                    f"output '{output.name}' is not an output of model '{model.name}' (outputs: {', '.join(index)})"
                )
            if output.name in seen:
                raise InvalidInput(f"output '{output.name}' is requested more than once")
            seen.add(output.name)
        return [
            RequestOutput(output.name, request.binary_outputs if output.binary is None else output.binary)
            for output in request.outputs
        ]

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check, run and answer one request; Overloaded at once when `max_in_flight` are already admitted."""
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise Overloaded(f"server busy: {self.in_flight} infer requests in flight; retry shortly")
        self.in_flight += 1
        try:
            return await self._infer(request)
        finally:
            self.in_flight -= 1

    async def _infer(self, request: InferRequest) -> InferResponse:
        model = self.ready_model(request.model_name, request.model_version)
        feeds = self.decode(model, request)
        wanted = self.requested_outputs(model, request)
        names = [output.name for output in wanted]
        batcher = self._batchers.get(model.name)
        if batcher is not None and batcher.accepts(feeds):
            arrays = await batcher.submit(feeds, names)
        else:
            self.observe_batch(model.name, _rows(feeds))
            loop = asyncio.get_running_loop()
            arrays = await loop.run_in_executor(self._executor, model.predict, feeds, names)
        index = model.signature.output_index
        outputs = [
            ResponseOutput(
                name=output.name,
                datatype=index[output.name].datatype.value,
                shape=list(array.shape),
                array=array,
                binary=output.binary is True,
            )
            for output, array in zip(wanted, arrays, strict=True)
        ]
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            # As unique as uuid4's 128 random bits, without a system call per request.
            id=request.id if request.id is not None else f"{random.getrandbits(128):032x}",
            outputs=outputs,
        )


def _rows(feeds: dict[str, np.ndarray]) -> int:
    """Batch rows of a request: dimension 0 of its first input (1 for scalars)."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.value, "shape": spec.shape}
