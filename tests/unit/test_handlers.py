"""The one reconcile path of the operator's handlers, without kopf running: what it keeps of an object, when it holds
one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tandem.controller import handlers, reconcile
from tandem.controller.reconcile import Outcome
from tandem.controller.workqueue import WorkQueue

KEY = ("InferenceService", "ml", "digits")
BODY = {
    "apiVersion": "tandem.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-digits", "generation": 1, "resourceVersion": "7"},
    "spec": {},
}


@pytest.fixture(autouse=True)
def kept() -> Iterator[None]:
    """The body of BODY as its watch delivered it; forgotten again after the test."""
    handlers._keep(KEY, BODY)
    yield
    handlers._forget(*KEY)


def test_a_reconcile_that_finds_its_object_gone_forgets_the_body_kept_of_it() -> None:
    def gone(body: Mapping[str, Any]) -> Outcome:
        raise reconcile.Gone("InferenceService ml/digits (uid uid-digits) no longer exists")

    assert handlers.reconcile_object("InferenceService", KEY, gone, handlers._view(KEY)) is None
    assert handlers._view(KEY) is None  # the next child's event reads it afresh: 404, nothing to do


def test_an_object_whose_child_was_refused_is_held_until_its_spec_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def refusing(kind: str) -> handlers.Step:
        def step(body: Mapping[str, Any]) -> Outcome:
            generation = int(body["metadata"]["generation"])
            seen.append(generation)
            return Outcome({}, refused=(str(body["metadata"]["uid"]), generation))

        return step

    monkeypatch.setattr(handlers, "_step", refusing)
    monkeypatch.setitem(handlers._state, "queue", WorkQueue(lambda key, attempt: None))
    handlers.process(KEY, 0)
    handlers.process(KEY, 0)  # a resync, or a child's event, before the hold ends
    assert seen == [1]
    assert len(handlers.queue()) == 1  # one recheck, at the end of the hold
    handlers._keep(KEY, {**BODY, "metadata": {**BODY["metadata"], "generation": 2, "resourceVersion": "8"}})
    handlers.process(KEY, 0)
    assert seen == [1, 2]
