"""Child watches filtered by the API server: the operator receives only the Jobs it owns.

Expected outcome: a Job without the `tandem.dev/trainingjob` label, created before a labelled one, never
reaches the watch (one watch stream delivers in resourceVersion order, so by the time the labelled Job's
event arrives, the unlabelled one's would have); the labelled Job's event queues its owner TrainingJob. The
watch's store answers for the Jobs it received, as the API server last sent them, before their owner is
queued, and forgets a deleted one. A child the operator wrote itself is stored when its change comes back but
queues no owner (the reconcile that wrote it saw it all); someone else's change to it does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from support.cluster import wait_until
from tandem.controller.children import ChildWatch
from tandem.controller.exclusive import Key
from tandem.controller.kube import Kube, api_client
from tandem.controller.own_writes import OwnWrites


def job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "suspend": True,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        },
    }


class Recorder:
    """Owner keys queued, and the names of the objects that reached the watch at all."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.received: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, key: Key) -> None:
        with self.lock:
            self.keys.append(key)

    def saw(self, obj: dict[str, Any]) -> None:
        with self.lock:
            self.received.add(obj["metadata"]["name"])


@pytest.fixture
def watched(kube: k8s.ApiClient, namespace: str) -> Iterator[tuple[ChildWatch, Recorder]]:
    recorder = Recorder()
    configuration = kube.configuration
    child_watch = ChildWatch(
        api_client(configuration), "Job", "tandem.dev/trainingjob", "TrainingJob", recorder, namespace, recorder.saw
    )
    child_watch.start()
    yield child_watch, recorder
    child_watch.stop()


def test_only_the_operators_own_jobs_reach_its_watch(
    kube: k8s.ApiClient, namespace: str, watched: tuple[ChildWatch, Recorder]
) -> None:
    child_watch, recorder = watched
    batch = k8s.BatchV1Api(kube)
    assert child_watch.listed.wait(30)  # from here on, every change is an event of the watch
    batch.create_namespaced_job(namespace, job("someone-elses", {"app": "other"}))
    batch.create_namespaced_job(namespace, job("ours-g1", {"tandem.dev/trainingjob": "ours"}))

    wait_until(lambda: ("TrainingJob", namespace, "ours") in recorder.keys, timeout=30, what="the owner queued")
    assert recorder.received == {"ours-g1"}  # the other Job never travelled: the API server filtered it
    assert {name for _, _, name in recorder.keys} == {"ours"}


def test_the_store_holds_a_child_before_its_owner_is_queued_and_forgets_it_when_deleted(
    kube: k8s.ApiClient, namespace: str, watched: tuple[ChildWatch, Recorder]
) -> None:
    child_watch, _ = watched
    batch = k8s.BatchV1Api(kube)
    assert child_watch.listed.wait(30)
    assert child_watch.covers("Job", namespace) and not child_watch.covers("Deployment", namespace)
    seen_when_queued: list[dict[str, Any] | None] = []
    child_watch.enqueue = lambda key: seen_when_queued.append(child_watch.get(namespace, "kept-g1"))
    created = batch.create_namespaced_job(namespace, job("kept-g1", {"tandem.dev/trainingjob": "kept"}))

    wait_until(lambda: bool(seen_when_queued), timeout=30, what="the owner queued")
    first = seen_when_queued[0]
    assert first is not None and first["metadata"]["uid"] == created.metadata.uid
    assert first["spec"]["suspend"] is True and "template" not in first["spec"]
    assert "managedFields" not in first["metadata"]
    batch.delete_namespaced_job("kept-g1", namespace, propagation_policy="Background")
    wait_until(lambda: child_watch.get(namespace, "kept-g1") is None, timeout=30, what="the Job forgotten")


def service(name: str, owner: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"tandem.dev/inferenceservice": owner}},
        "spec": {"ports": [{"name": "http", "port": 8080}]},
    }


def test_the_operators_own_write_coming_back_queues_no_owner_but_someone_elses_change_does(
    kube: k8s.ApiClient, namespace: str
) -> None:
    """A Service, not a Job: no controller writes to it after the operator, so every event is the test's doing."""
    recorder = Recorder()
    own = OwnWrites(["Service"])
    child_watch = ChildWatch(
        api_client(kube.configuration), "Service", "tandem.dev/inferenceservice", "InferenceService", recorder,
        namespace, own_writes=own,
    )
    child_watch.start()
    try:
        assert child_watch.listed.wait(30)
        desired = service("front", "front")
        desired["metadata"]["namespace"] = namespace
        written = Kube(kube, writes=own).apply(desired)
        version = written["metadata"]["resourceVersion"]
        wait_until(
            lambda: (child_watch.get(namespace, "front") or {}).get("metadata", {}).get("resourceVersion") == version
            and not own.awaiting(("Service", namespace, "front")),
            timeout=30,
            what="the operator's write stored and known as its echo",
        )
        assert recorder.keys == []

        patch = {"metadata": {"labels": {"team": "search"}}}
        k8s.CoreV1Api(kube).patch_namespaced_service("front", namespace, patch)
        wait_until(lambda: recorder.keys == [("InferenceService", namespace, "front")], timeout=30, what="queued")
    finally:
        child_watch.stop()
