"""The work queue: a key waits at most once, one worker per key at a time, failed keys come back later, urgent
keys go first."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator

import pytest

from support.cluster import wait_until
from tandem.controller.workqueue import WorkQueue


class Recorder:
    """A `process` that records keys, can hold a key inside until released, and can ask for retries."""

    def __init__(self) -> None:
        self.seen: list[tuple[Hashable, int]] = []
        self.inside: dict[Hashable, int] = {}
        self.most_inside = 0
        self.hold: dict[Hashable, threading.Event] = {}
        self.entered: dict[Hashable, threading.Event] = {}
        self.retries: dict[Hashable, int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: Hashable, attempt: int) -> float | None:
        with self.lock:
            self.seen.append((key, attempt))
            self.inside[key] = self.inside.get(key, 0) + 1
            self.most_inside = max(self.most_inside, self.inside[key])
        self.entered.setdefault(key, threading.Event()).set()
        if key in self.hold:
            self.hold[key].wait(10)
        with self.lock:
            self.inside[key] -= 1
            if self.retries.get(key, 0) > 0:
                self.retries[key] -= 1
                return 0.01
        return None


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def queue(recorder: Recorder) -> Iterator[WorkQueue]:
    work = WorkQueue(recorder, workers=4)
    yield work
    work.stop()


def busy_with(work: WorkQueue, recorder: Recorder, key: str) -> None:
    """Make a worker hold `key` until recorder.hold[key] is set: it is inside process() once this returns."""
    recorder.hold[key] = threading.Event()
    work.add(key)
    assert recorder.entered.setdefault(key, threading.Event()).wait(5)


def test_a_key_added_many_times_before_a_worker_takes_it_is_processed_once(
    queue: WorkQueue, recorder: Recorder
) -> None:
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    queue.start()
    wait_until(queue.idle, timeout=5, what="the queue drained")
    assert sorted(recorder.seen) == [("a", 0), ("b", 0)]


def test_a_key_added_while_processed_runs_again_after_never_beside(queue: WorkQueue, recorder: Recorder) -> None:
    queue.start()
    busy_with(queue, recorder, "a")
    queue.add("a")
    queue.add("a")
    recorder.hold["a"].set()
    wait_until(queue.idle, timeout=5, what="the queue drained")
    assert recorder.seen == [("a", 0), ("a", 0)]
    assert recorder.most_inside == 1


def test_a_failed_key_comes_back_with_its_attempt_counted(queue: WorkQueue, recorder: Recorder) -> None:
    recorder.retries["a"] = 2
    queue.start()
    queue.add("a")
    wait_until(queue.idle, timeout=5, what="the retries done")
    assert recorder.seen == [("a", 0), ("a", 1), ("a", 2)]
    queue.add("a")
    wait_until(lambda: len(recorder.seen) == 4 and queue.idle(), timeout=5, what="a fresh round")
    assert recorder.seen[-1] == ("a", 0)  # success reset the count


def test_a_delayed_key_waits_until_its_time(queue: WorkQueue, recorder: Recorder) -> None:
    queue.start()
    queue.add("later", delay=3600)
    queue.add("now")
    wait_until(lambda: recorder.seen == [("now", 0)], timeout=5, what="the undelayed key")
    assert not queue.idle() and len(queue) == 1
    wait_until(queue.quiet, timeout=5, what="nothing but the delayed key left")


def test_a_queue_with_a_key_to_process_is_not_quiet(queue: WorkQueue, recorder: Recorder) -> None:
    queue.add("now")
    assert not queue.quiet()
    queue.start()
    wait_until(queue.quiet, timeout=5, what="the key processed")
    assert recorder.seen == [("now", 0)]


def test_a_key_delayed_many_times_waits_once_for_the_earliest_time(queue: WorkQueue, recorder: Recorder) -> None:
    for delay in (3600, 0.05, 1800, 0.1):
        queue.add("recheck", delay=delay)
    assert len(queue) == 1
    queue.start()
    wait_until(queue.idle, timeout=5, what="the earliest recheck done and no other left")
    assert recorder.seen == [("recheck", 0)]


def test_other_keys_go_on_while_one_is_held(queue: WorkQueue, recorder: Recorder) -> None:
    queue.start()
    busy_with(queue, recorder, "slow")
    queue.add("fast")
    wait_until(lambda: ("fast", 0) in recorder.seen, timeout=5, what="the other key processed")
    recorder.hold["slow"].set()


@pytest.fixture
def one_worker(recorder: Recorder) -> Iterator[WorkQueue]:
    """A started queue with one worker: the order keys are taken in is the order they are processed in."""
    work = WorkQueue(recorder, workers=1)
    work.start()
    yield work
    work.stop()


def test_urgent_keys_are_taken_before_every_other_waiting_key_and_each_once(
    one_worker: WorkQueue, recorder: Recorder
) -> None:
    busy_with(one_worker, recorder, "first")
    for key in ("resync-a", "resync-b", "resync-c"):
        one_worker.add(key)
    one_worker.add("new", urgent=True)
    one_worker.add("resync-c", urgent=True)  # a waiting key whose spec changed moves ahead
    one_worker.add("new")  # a plain add of an urgent key leaves it urgent
    recorder.hold["first"].set()
    wait_until(one_worker.idle, timeout=5, what="the queue drained")
    assert [key for key, _ in recorder.seen] == ["first", "new", "resync-c", "resync-a", "resync-b"]


def test_a_key_made_urgent_while_processed_runs_again_first(one_worker: WorkQueue, recorder: Recorder) -> None:
    busy_with(one_worker, recorder, "busy")
    one_worker.add("waiting")
    one_worker.add("busy", urgent=True)
    recorder.hold.pop("busy").set()
    wait_until(one_worker.idle, timeout=5, what="the queue drained")
    assert [key for key, _ in recorder.seen] == ["busy", "busy", "waiting"]
    assert recorder.most_inside == 1
