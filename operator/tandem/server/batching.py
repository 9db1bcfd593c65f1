"""Dynamic batching: requests that arrive close together run as one onnxruntime call.

A request waits at most `max_delay_s` for company; a batch runs as soon as it holds `max_batch_size` rows.
Only requests whose inputs agree on everything but dimension 0 (and on the outputs wanted) share a run,
and only models whose every input and output has a dynamic dimension 0 are batched at all. Off by default:
on a small CPU model, batch-1 latency is lowest unbatched; batching pays when one run of N rows costs much
less than N runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tandem.server.errors import InferenceFailed
from tandem.server.model import OnnxModel


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, np.ndarray]
    names: tuple[str, ...]
    rows: int
    future: asyncio.Future[list[np.ndarray]]


def batchable(model: OnnxModel) -> bool:
    """True when every input and output of the model has a dynamic (or absent-batch-safe) dimension 0."""
    signature = model.signature
    return all(spec.shape and spec.shape[0] == -1 for spec in (*signature.inputs, *signature.outputs))


class Batcher:
    """Collects requests for one model and runs them together in the executor."""

    def __init__(
        self,
        model: OnnxModel,
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        max_delay_s: float,
        observe_rows: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max(0.0, max_delay_s)
        self._executor = executor
        self._observe_rows = observe_rows
        self._enabled = batchable(model)
        self._queue: list[_Pending] = []
        self._queued_rows = 0
        self._timer: asyncio.TimerHandle | None = None

    def accepts(self, feeds: dict[str, np.ndarray]) -> bool:
        """Whether this request can join a batch (else the caller runs it alone)."""
        if not self._enabled:
            return False
        rows = {array.shape[0] if array.ndim else -1 for array in feeds.values()}
        return len(rows) == 1 and 0 < next(iter(rows)) <= self.max_batch_size

    async def submit(self, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        rows = int(next(iter(feeds.values())).shape[0])
        pending = _Pending(feeds, tuple(names), rows, loop.create_future())
        if self._queued_rows + rows > self.max_batch_size:
            self._flush()
        self._queue.append(pending)
        self._queued_rows += rows
        if self._queued_rows >= self.max_batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_delay_s, self._flush)
        return await pending.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue, self._queued_rows = self._queue, [], 0
        groups: dict[tuple[object, ...], list[_Pending]] = {}
        for pending in queue:
            key = (
                pending.names,
                tuple((name, array.dtype.str, array.shape[1:]) for name, array in pending.feeds.items()),
            )
            groups.setdefault(key, []).append(pending)
        for group in groups.values():
            asyncio.get_running_loop().create_task(self._run(group))

    async def _run(self, group: list[_Pending]) -> None:
        names = list(group[0].names)
        if len(group) == 1:
            feeds = group[0].feeds
        else:
            feeds = {name: np.concatenate([p.feeds[name] for p in group]) for name in group[0].feeds}
        total = sum(p.rows for p in group)
        self._observe_rows(total)
        loop = asyncio.get_running_loop()
        try:
            arrays = await loop.run_in_executor(self._executor, self.model.predict, feeds, names)
            if any(array.ndim == 0 or array.shape[0] != total for array in arrays):
                raise InferenceFailed("model output is not batched along dimension 0; disable batching")
        except Exception as exc:
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in group:
            end = start + pending.rows
            if not pending.future.done():
                pending.future.set_result([array[start:end] for array in arrays])
            start = end
