"""Adaptive dynamic batching: requests that wait for a free onnxruntime run go together as one run.

A request that finds a run slot free runs at once, alone: batching never makes an idle server wait. Requests
that arrive while every slot is busy queue, and when a slot frees, as many as fit in `max_batch_size` rows
run together. So the batch size follows the load: 1 at low concurrency, up to `max_batch_size` when requests
pile up, which is when one run of N rows (far cheaper than N runs on a CPU) pays. `max_delay_s` > 0 adds
Triton's classic behaviour on top: a free slot waits up to that long for a batch to fill.

Only requests whose inputs agree on everything but dimension 0 (and on the outputs wanted) share a run, and
only models whose every input and output has a dynamic dimension 0 are batched at all.

One bad request fails alone: when onnxruntime fails on a batch of several requests, each is run again by
itself, so the one whose input the model cannot take gets the error and the others their answers (and a
canary counts one failure against the new model, not a batch of them). The retry happens only on a failure,
so it costs nothing while the model runs; a bad request costs its batch one extra run per member, on the
batch's own run slot.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tandem.server.errors import InferenceFailed
from tandem.server.model import OnnxModel


@dataclass(slots=True)
class _Pending:
    feeds: dict[str, np.ndarray]
    names: tuple[str, ...]
    rows: int
    future: asyncio.Future[list[np.ndarray]]
    arrived: float
    key: tuple[object, ...] = field(init=False)
    """Requests share a run only when their keys are equal: the outputs, and each input's dtype and row shape."""

    def __post_init__(self) -> None:
        self.key = (self.names, tuple((name, a.dtype.str, a.shape[1:]) for name, a in self.feeds.items()))


def batchable(model: OnnxModel) -> bool:
    """True when every input and output of the model has a dynamic dimension 0."""
    signature = model.signature
    return all(spec.shape and spec.shape[0] == -1 for spec in (*signature.inputs, *signature.outputs))


class Batcher:
    """Collects requests for one model and runs them, together when they had to wait, in the executor."""

    def __init__(
        self,
        model: OnnxModel,
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        max_delay_s: float,
        runs: int = 1,
        observe_rows: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.model = model
        self.max_batch_size = max(1, max_batch_size)
        self.max_delay_s = max(0.0, max_delay_s)
        self.runs = max(1, runs)
        """Batches in flight at once; more would only queue in the executor, where they cannot grow."""
        self._executor = executor
        self._observe_rows = observe_rows
        self._enabled = batchable(model)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._running: set[asyncio.Task[None]] = set()
        """Batches in flight; the set also keeps their tasks referenced until they finish."""
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
        pending = _Pending(feeds, tuple(names), rows, loop.create_future(), loop.time())
        self._queue.append(pending)
        self._queued_rows += rows
        self._pump()
        return await pending.future

    def _pump(self) -> None:
        """Start batches while a run slot is free and requests wait (after the delay, if one is set)."""
        loop = asyncio.get_running_loop()
        while self._queue and len(self._running) < self.runs:
            if self.max_delay_s > 0 and self._queued_rows < self.max_batch_size:
                due = self._queue[0].arrived + self.max_delay_s
                if loop.time() < due:
                    if self._timer is None:
                        self._timer = loop.call_at(due, self._on_timer)
                    return
            task = loop.create_task(self._run(self._take()))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _take(self) -> list[_Pending]:
        """The oldest request and those queued after it that can share its run, up to max_batch_size rows."""
        first = self._queue.popleft()
        group, rows, kept = [first], first.rows, deque[_Pending]()
        while self._queue:
            pending = self._queue.popleft()
            if pending.key == first.key and rows + pending.rows <= self.max_batch_size:
                group.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        self._queued_rows -= rows
        return group

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._pump()

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
        except InferenceFailed as exc:
            if len(group) == 1:
                _settle(group[0], exc)
            else:
                await self._run_apart(group, names)
            return
        except Exception as exc:
            for pending in group:
                _settle(pending, exc)
            return
        if len(group) == 1:  # a lone request gets the outputs as they are, as it would unbatched
            _settle(group[0], arrays)
            return
        if any(array.ndim == 0 or array.shape[0] != total for array in arrays):
            failure = InferenceFailed("model output is not batched along dimension 0; disable batching")
            for pending in group:
                _settle(pending, failure)
            return
        start = 0
        for pending in group:
            end = start + pending.rows
            _settle(pending, [array[start:end] for array in arrays])
            start = end

    async def _run_apart(self, group: list[_Pending], names: list[str]) -> None:
        """Run each request of a failed batch by itself, in turn, on the batch's run slot."""
        loop = asyncio.get_running_loop()
        for pending in group:
            if pending.future.done():  # its caller gave up (cancelled) while the batch ran
                continue
            self._observe_rows(pending.rows)
            try:
                arrays = await loop.run_in_executor(self._executor, self.model.predict, pending.feeds, names)
            except Exception as exc:
                _settle(pending, exc)
            else:
                _settle(pending, arrays)


def _settle(pending: _Pending, outcome: list[np.ndarray] | BaseException) -> None:
    """Answer a request, unless its caller already stopped waiting."""
    if pending.future.done():
        return
    if isinstance(outcome, BaseException):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
