"""Per-object exclusion: one reconcile of an object at a time, and no acting on a spec older than one acted on."""

from __future__ import annotations

import threading

from tandem.controller.exclusive import Exclusive

KEY = ("TrainingJob", "ml", "digits")


def test_a_second_reconcile_of_the_same_object_waits_for_the_first() -> None:
    exclusive = Exclusive()
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with exclusive.hold(KEY):
            order.append("first in")
            inside.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        inside.wait(5)
        with exclusive.hold(KEY):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    inside.wait(5)
    threads[1].join(0.3)  # the second is blocked while the first holds the key
    assert threads[1].is_alive()
    assert order == ["first in"]
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first in", "first out", "second in"]


def test_different_objects_do_not_wait_for_each_other() -> None:
    exclusive = Exclusive()
    with exclusive.hold(KEY):
        done = threading.Event()

        def other() -> None:
            with exclusive.hold(("TrainingJob", "ml", "other")):
                done.set()

        threading.Thread(target=other).start()
        assert done.wait(5)


def test_locks_are_dropped_once_nobody_holds_or_waits() -> None:
    exclusive = Exclusive()
    with exclusive.hold(KEY):
        assert exclusive.busy() == 1
    assert exclusive.busy() == 0


def test_a_body_older_than_the_generation_acted_on_is_behind() -> None:
    exclusive = Exclusive()
    exclusive.acted(KEY, "uid-1", 2)
    assert exclusive.behind(KEY, "uid-1", 1)
    assert not exclusive.behind(KEY, "uid-1", 2)
    assert not exclusive.behind(KEY, "uid-1", 3)


def test_acting_on_an_older_generation_does_not_lower_the_mark() -> None:
    exclusive = Exclusive()
    exclusive.acted(KEY, "uid-1", 3)
    exclusive.acted(KEY, "uid-1", 2)
    assert exclusive.behind(KEY, "uid-1", 2)


def test_an_object_created_again_under_the_same_name_is_not_behind() -> None:
    exclusive = Exclusive()
    exclusive.acted(KEY, "uid-1", 5)
    assert not exclusive.behind(KEY, "uid-2", 1)
    exclusive.acted(KEY, "uid-2", 1)
    assert not exclusive.behind(KEY, "uid-2", 1)


def test_a_forgotten_object_is_never_behind() -> None:
    exclusive = Exclusive()
    exclusive.acted(KEY, "uid-1", 5)
    exclusive.forget(KEY)
    assert not exclusive.behind(KEY, "uid-1", 1)
