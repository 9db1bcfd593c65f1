"""The one reconcile path of the operator's Controller, without kopf running: what it keeps of an object, when it
holds one; and no module of the controller keeping a running operator's state."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from tandem.config import OperatorConfig
from tandem.controller import reconcile
from tandem.controller.controller import Controller, Step
from tandem.controller.kube import api_client
from tandem.controller.reconcile import Outcome
from tandem.controller.workqueue import WorkQueue

KEY = ("InferenceService", "ml", "digits")
BODY = {
    "apiVersion": "tandem.dev/v1alpha1",
    "kind": "InferenceService",
    "metadata": {"name": "digits", "namespace": "ml", "uid": "uid-digits", "generation": 1, "resourceVersion": "7"},
    "spec": {},
}


@pytest.fixture
def controller() -> Iterator[Controller]:
    """A Controller that no API server answers (none is asked), holding BODY as its watch delivered it; BODY is
    forgotten again after the test."""
    controller = Controller(api_client(k8s.Configuration()), OperatorConfig())
    controller.views.keep(KEY, BODY)
    yield controller
    controller.forget(*KEY)


def test_a_reconcile_that_finds_its_object_gone_forgets_the_body_kept_of_it(controller: Controller) -> None:
    def gone(body: Mapping[str, Any]) -> Outcome:
        raise reconcile.Gone("InferenceService ml/digits (uid uid-digits) no longer exists")

    assert controller.reconcile_object("InferenceService", KEY, gone, controller.views.kept(KEY)) is None
    assert controller.views.kept(KEY) is None  # the next child's event reads it afresh: 404, nothing to do


def test_an_object_whose_child_was_refused_is_held_until_its_spec_changes(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def refusing(kind: str) -> Step:
        def step(body: Mapping[str, Any]) -> Outcome:
            generation = int(body["metadata"]["generation"])
            seen.append(generation)
            return Outcome({}, refused=(str(body["metadata"]["uid"]), generation))

        return step

    monkeypatch.setattr(controller, "step_for", refusing)
    monkeypatch.setattr(controller, "queue", WorkQueue(lambda key, attempt: None))
    controller.process(KEY, 0)
    controller.process(KEY, 0)  # a resync, or a child's event, before the hold ends
    assert seen == [1]
    assert len(controller.queue) == 1  # one recheck, at the end of the hold
    controller.views.keep(KEY, {**BODY, "metadata": {**BODY["metadata"], "generation": 2, "resourceVersion": "8"}})
    controller.process(KEY, 0)
    assert seen == [1, 2]


def test_a_controller_stopped_while_it_starts_starts_no_worker_and_no_resync() -> None:
    """kopf cancels a startup that the operator's stop interrupts and runs no cleanup after it: the startup
    handler stops the Controller, which must then end its start instead of going on to act (no API server answers
    here, so its child watches never list)."""
    controller = Controller(api_client(k8s.Configuration(host="http://127.0.0.1:9")), OperatorConfig())
    starting = threading.Thread(target=controller.start, args=(0.1,))
    starting.start()
    for _ in range(50):  # until it waits for its child watches' first lists
        if controller.child_watches:
            break
        threading.Event().wait(0.1)
    assert controller.child_watches
    controller.stop()
    starting.join(5)
    assert not starting.is_alive()
    assert not controller.running.is_set()
    assert not any(thread.name.startswith(("tandem-reconcile", "tandem-resync")) for thread in threading.enumerate())

CONTROLLER = Path(__file__).resolve().parents[2] / "operator" / "tandem" / "controller"
CONSTANT_CALLS = {"getLogger", "TypeVar", "Counter", "Gauge", "Histogram", "frozenset", "tuple"}
"""Module-level calls that make nothing a running operator changes: loggers, type variables, Prometheus metrics
(process-wide by convention)."""
PROCESS_WIDE = {
    ("children", "API_VERSIONS"): "a lookup table, never written",
    ("children", "QUERY"): "a lookup table, never written",
    ("kube", "_PATHS"): "a lookup table, never written",
    ("controller", "KINDS"): "a lookup table, never written",
    ("metrics", "_phases"): "the memory behind the process-wide tandem_resources gauge",
    ("metrics", "_counts"): "the memory behind the process-wide tandem_resources gauge",
    ("metrics", "_phases_lock"): "guards the two above",
}
"""Module-level objects left in the controller, each with why it is not a running operator's state."""


def _module_objects(path: Path) -> set[str]:
    """Names a module binds at its top level to a container or to an object some call made."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if isinstance(value, ast.Call):
            func = value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in CONSTANT_CALLS:
                continue
        elif not isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
            continue
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def test_no_module_of_the_controller_keeps_a_running_operators_state() -> None:
    """The queue, the kept bodies, the own writes, the holds, the node summaries, the fence and kopf's indexes live
    in one Controller that kopf's memo carries (issue 29), not in module globals."""
    found = {(path.stem, name) for path in CONTROLLER.glob("*.py") for name in _module_objects(path)}
    assert found == set(PROCESS_WIDE)
