"""Concurrent reconciles of one object on a real API server: the races are forced, not hoped for.

Expected outcomes:
* a resync pass whose list was taken before a spec update never applies the older spec: it reconciles from a
  fresh read under the object's lock, so the old run's Job is not recreated and status keeps the new run;
* while one reconcile of an object is in progress (a worker applying a spec update), a resync of the same
  object waits for it, then works from what that reconcile left;
* a queued event carrying an older generation than one already acted on is read again instead of acted on;
* a status computed from an older body is refused by the API server (409), never written over a newer one.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import wait_until
from support.tandem import body, create, get, patch_spec
from tandem.api.resources import TRAINING_JOB
from tandem.config import OperatorConfig
from tandem.controller.controller import Controller, key_of
from tandem.controller.kube import Kube
from tandem.controller.reconcile import Outcome
from tandem.controller.workqueue import WorkQueue

SHA = hashlib.sha256(b"race").hexdigest()
NAME = "race"


def spec(epochs: str) -> dict[str, Any]:
    return {
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "model": {"output": "s3://models/race"},
        "args": ["--epochs", epochs],
        "podMetadata": {"annotations": {"tandem.dev/fake-duration": "600s"}},
    }


@pytest.fixture
def controller(tandem_api: k8s.ApiClient) -> Iterator[Controller]:
    """The operator's queue and reconcile path wired to the test cluster, without kopf: the test is the watch."""
    controller = Controller(tandem_api, OperatorConfig(), workers=2)
    controller.events.start()
    controller.queue.start()
    yield controller
    controller.stop()


@pytest.fixture
def queue(controller: Controller) -> WorkQueue:
    return controller.queue


def reconciles(controller: Controller, obj: Mapping[str, Any]) -> Outcome | None:
    """A reconcile from the body in hand, as a worker does once it has read the object."""
    key = key_of("TrainingJob", obj)
    return controller.reconcile_object("TrainingJob", key, controller.step_for("TrainingJob"), obj)


def live_jobs(api: k8s.ApiClient, namespace: str) -> list[str]:
    jobs = k8s.BatchV1Api(api).list_namespaced_job(namespace).items
    return sorted(job.metadata.name for job in jobs if not job.metadata.deletion_timestamp)


def stale_list(monkeypatch: pytest.MonkeyPatch, controller: Controller, listed: list[dict[str, Any]]) -> None:
    """Make the resync's list return `listed`: a list taken before what the test does next."""
    monkeypatch.setattr(
        controller, "watched", lambda resource: copy.deepcopy(listed) if resource == TRAINING_JOB else []
    )


def with_kind(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "apiVersion": "tandem.dev/v1alpha1", "kind": "TrainingJob"}


def started(api: k8s.ApiClient, namespace: str, controller: Controller) -> dict[str, Any]:
    """Create the TrainingJob at generation 1 and reconcile it once, so that its run race-g1 exists for the
    newer spec of each race to replace; returns the body that reconcile worked from."""
    create(api, TRAINING_JOB, namespace, body(TRAINING_JOB, NAME, spec("1")))
    first = get(api, TRAINING_JOB, namespace, NAME)
    reconciles(controller, first)
    return first


def test_a_resync_pass_listed_before_a_spec_update_never_applies_the_older_spec(
    tandem_api: k8s.ApiClient, namespace: str, controller: Controller, queue: WorkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(tandem_api, namespace, controller)
    assert live_jobs(tandem_api, namespace) == ["race-g1"]
    listed = [with_kind(get(tandem_api, TRAINING_JOB, namespace, NAME))]
    stale_list(monkeypatch, controller, listed)  # the pass lists here

    patch_spec(tandem_api, TRAINING_JOB, namespace, NAME, spec("2"))
    reconciles(controller, get(tandem_api, TRAINING_JOB, namespace, NAME))
    wait_until(lambda: live_jobs(tandem_api, namespace) == ["race-g2"], timeout=30, what="run g1 replaced by g2")

    controller.resync_once()  # ... and reaches the object only now
    wait_until(queue.idle, timeout=30, what="the resync's work done")

    assert live_jobs(tandem_api, namespace) == ["race-g2"]
    status = get(tandem_api, TRAINING_JOB, namespace, NAME)["status"]
    assert (status["jobName"], status["observedGeneration"]) == ("race-g2", 2)


def test_a_resync_waits_for_a_reconcile_in_progress_and_works_from_what_it_left(
    tandem_api: k8s.ApiClient, namespace: str, controller: Controller, queue: WorkQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(tandem_api, namespace, controller)
    stale_list(monkeypatch, controller, [with_kind(get(tandem_api, TRAINING_JOB, namespace, NAME))])
    patch_spec(tandem_api, TRAINING_JOB, namespace, NAME, spec("2"))
    updated = get(tandem_api, TRAINING_JOB, namespace, NAME)

    inside, proceed = threading.Event(), threading.Event()
    step = controller.step_for("TrainingJob")

    def paused_step(obj: Mapping[str, Any]) -> Outcome:
        inside.set()  # a worker holds the object's lock here, mid-reconcile of the update
        assert proceed.wait(30)
        return step(obj)

    key = key_of("TrainingJob", updated)
    worker = threading.Thread(target=controller.reconcile_object, args=("TrainingJob", key, paused_step, updated))
    worker.start()
    assert inside.wait(30)
    controller.resync_once()
    exclusive = controller.views.exclusive
    wait_until(lambda: exclusive.waiting(key) == 1, timeout=30, what="the resync's reconcile waiting")
    assert live_jobs(tandem_api, namespace) == ["race-g1"]  # it has not acted meanwhile
    proceed.set()
    worker.join(30)
    assert not worker.is_alive()
    wait_until(queue.idle, timeout=30, what="the resync's work done")

    wait_until(lambda: live_jobs(tandem_api, namespace) == ["race-g2"], timeout=30, what="only run g2")
    status = get(tandem_api, TRAINING_JOB, namespace, NAME)["status"]
    assert (status["jobName"], status["observedGeneration"]) == ("race-g2", 2)


def test_an_event_older_than_the_generation_acted_on_is_read_again(
    tandem_api: k8s.ApiClient, namespace: str, controller: Controller, queue: WorkQueue
) -> None:
    old = started(tandem_api, namespace, controller)
    patch_spec(tandem_api, TRAINING_JOB, namespace, NAME, spec("2"))
    reconciles(controller, get(tandem_api, TRAINING_JOB, namespace, NAME))
    wait_until(lambda: live_jobs(tandem_api, namespace) == ["race-g2"], timeout=30, what="run g2 alone")

    reconciles(controller, old)  # an event of generation 1, delivered late

    assert live_jobs(tandem_api, namespace) == ["race-g2"]
    assert get(tandem_api, TRAINING_JOB, namespace, NAME)["status"]["jobName"] == "race-g2"


def test_a_status_computed_from_an_older_body_is_refused(tandem_api: k8s.ApiClient, namespace: str) -> None:
    kube = Kube(tandem_api)
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, NAME, spec("1")))
    read = get(tandem_api, TRAINING_JOB, namespace, NAME)
    newer = kube.patch_status(
        TRAINING_JOB, namespace, NAME, {"phase": "Running", "jobName": "race-g2"}, read["metadata"]["resourceVersion"]
    )
    assert newer["status"]["jobName"] == "race-g2"

    stale = {"phase": "Pending", "jobName": "race-g1"}
    with pytest.raises(ApiException) as refused:
        kube.patch_status(TRAINING_JOB, namespace, NAME, stale, read["metadata"]["resourceVersion"])

    assert refused.value.status == 409
    assert get(tandem_api, TRAINING_JOB, namespace, NAME)["status"]["jobName"] == "race-g2"
