"""Events are posted in the background and identical ones are aggregated, as client-go's recorder does.

Expected outcome, on the real API server: the same event recorded three times about one TrainingJob is one
Event object whose count is 3 (two PATCHes, not three objects); an event with another message is an Event of
its own; an Event that expired (deleted by the API server's TTL, here by hand) is posted again, not patched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from support.cluster import wait_until
from support.tandem import body, create, events_for, resource_api
from tandem.api.resources import COMPUTE_POOL, GROUP, TRAINING_JOB, VERSION
from tandem.controller.events import EventRecorder
from tandem.controller.kube import Kube

SPEC = {
    "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
    "model": {"output": "s3://models/events"},
    "suspend": True,
}


@pytest.fixture
def recorder(tandem_api: k8s.ApiClient) -> Iterator[EventRecorder]:
    kube = Kube(tandem_api)
    events = EventRecorder(lambda: kube)
    events.start()
    yield events
    events.stop()


def counts(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, int]:
    return {event.message: event.count for event in events_for(api, namespace, name)}


def test_an_event_repeated_is_one_event_with_a_count(
    tandem_api: k8s.ApiClient, namespace: str, recorder: EventRecorder
) -> None:
    job = create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "noisy", SPEC))
    for _ in range(3):
        recorder.record(job, "Warning", "NoMatchingPool", "no ComputePool named gpu-x")
    recorder.record(job, "Warning", "NoMatchingPool", "no ComputePool named gpu-y")
    wait_until(
        lambda: counts(tandem_api, namespace, "noisy") == {"no ComputePool named gpu-x": 3,
                                                           "no ComputePool named gpu-y": 1},
        timeout=30,
        what="one Event counted three times and one of its own",
    )


def test_an_event_that_expired_is_posted_again(
    tandem_api: k8s.ApiClient, namespace: str, recorder: EventRecorder
) -> None:
    job = create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "expired", SPEC))
    recorder.record(job, "Normal", "Created", "Job expired-g1 with 1 workers")
    wait_until(lambda: counts(tandem_api, namespace, "expired") == {"Job expired-g1 with 1 workers": 1},
               timeout=30, what="the first Event")
    core = k8s.CoreV1Api(tandem_api)
    for event in events_for(tandem_api, namespace, "expired"):
        core.delete_namespaced_event(event.metadata.name, namespace)
    recorder.record(job, "Normal", "Created", "Job expired-g1 with 1 workers")
    wait_until(lambda: counts(tandem_api, namespace, "expired") == {"Job expired-g1 with 1 workers": 1},
               timeout=30, what="a new Event posted in place of the expired one")



def test_an_event_about_a_computepool_is_accepted_in_the_default_namespace(
    tandem_api: k8s.ApiClient, recorder: EventRecorder, namespace: str
) -> None:
    """A ComputePool has no namespace, and the API server takes a core/v1 Event about such an object only in
    `default`: that is where its events go, and where a namespaced install's chart grants them."""
    name = f"{namespace}-pool"
    pool = create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, name, {"nodeSelector": {"tandem.dev/pool": name}}))
    try:
        recorder.record(pool, "Warning", "NoNodes", "no node matches the selector")
        wait_until(lambda: counts(tandem_api, "default", name) == {"no node matches the selector": 1},
                   timeout=30, what="the pool's Event in default")
    finally:
        resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, name)
