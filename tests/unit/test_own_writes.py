"""The operator's own writes, told apart when its watches deliver them back."""

from __future__ import annotations

import threading
from typing import Any

from support.clock import Clock
from tandem.controller.own_writes import OwnWrites

JOB = ("Job", "ns", "run-g1")


def written(kind: str = "Job", version: str = "7", name: str = "run-g1") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


def test_the_echo_of_the_latest_write_is_recognised_once() -> None:
    writes = OwnWrites(["Job"])
    writes.wrote(written(version="7"))
    assert writes.awaiting(JOB)
    assert not writes.echo(JOB, "6")  # an older change, someone else's: not ours
    assert writes.echo(JOB, "7")
    assert not writes.awaiting(JOB)
    assert not writes.echo(JOB, "7")  # the same version again (a relist) is news to no one, but not an echo


def test_a_second_write_replaces_the_first_so_only_its_echo_counts() -> None:
    writes = OwnWrites(["Job"])
    writes.wrote(written(version="7"))
    writes.wrote(written(version="9"))
    assert not writes.echo(JOB, "7")
    assert writes.awaiting(JOB)
    assert writes.echo(JOB, "9")


def test_writes_of_kinds_not_watched_are_not_kept() -> None:
    writes = OwnWrites(["Job"])
    writes.wrote(written(kind="Event", name="run.17a"))
    writes.wrote({"kind": "Job", "metadata": {"namespace": "ns", "name": "run-g1"}})  # no version: a Status reply
    assert not writes.awaiting(("Event", "ns", "run.17a"))
    assert not writes.awaiting(JOB)


def test_an_echo_that_never_comes_stops_being_awaited_after_the_ttl() -> None:
    clock = Clock()
    writes = OwnWrites(["Job"], ttl=30, clock=clock)
    writes.wrote(written(version="7"))
    clock.now += 29
    assert writes.awaiting(JOB)
    clock.now += 2
    assert not writes.awaiting(JOB)
    assert not writes.echo(JOB, "7")  # too late to vouch that the reconcile saw everything since


def test_expired_records_are_dropped_so_memory_follows_recent_writes() -> None:
    clock = Clock()
    writes = OwnWrites(["Job"], ttl=30, clock=clock)
    for index in range(100):
        writes.wrote(written(name=f"run-{index}"))
    clock.now += 31
    writes.wrote(written(name="fresh"))
    assert len(writes) == 1


def test_an_echo_that_overtakes_its_writes_response_waits_for_it() -> None:
    writes = OwnWrites(["Job"])
    verdicts: list[bool] = []
    with writes.sending(JOB):
        watch = threading.Thread(target=lambda: verdicts.append(writes.echo(JOB, "7", wait=30)))
        watch.start()
        writes.wrote(written(version="7"))
    watch.join(30)
    assert verdicts == [True]
    assert not writes.awaiting(JOB)


def test_an_echo_that_may_not_wait_is_remembered_until_the_response_names_it() -> None:
    writes = OwnWrites(["Job"])
    with writes.sending(JOB):
        assert not writes.echo(JOB, "7", wait=0)  # kopf's loop: the response has not come back yet
        writes.wrote(written(version="7"))
    assert not writes.awaiting(JOB), "the write's echo already came: the kept body is current"


def test_a_write_that_never_answers_lets_the_event_count_as_someone_elses_after_the_wait() -> None:
    writes = OwnWrites(["Job"])
    with writes.sending(JOB):
        assert not writes.echo(JOB, "7", wait=0.01)
    writes.wrote(written(version="9"))  # a later write of ours: its own echo still counts
    assert writes.awaiting(JOB) and writes.echo(JOB, "9", wait=0)
