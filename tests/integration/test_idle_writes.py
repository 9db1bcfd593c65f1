"""Writes only on a real difference, measured by the API server itself (apiserver_request_total).

Expected outcome: once Ready InferenceServices and finished TrainingJobs have converged, a resync pass makes no
write at all (no status patch, no child apply, no event) to any resource Tandem touches; its reads are a
paginated list per kind (pools are reconciled from the bodies their watch delivered, their nodes counted from
the node watch). A reconcile that a child's change calls for works from the body the TrainingJob's watch
delivered: no read of it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from integration.test_canary import SHA_3, retrain, served_sha, trained
from integration.test_operator import SHA_1, phase_is
from support.apiserver import requests
from support.cluster import wait_until
from support.tandem import (
    HANDLERS,
    artifact_message,
    body,
    condition,
    create,
    events_for,
    get,
    reconciles,
    resource_api,
    running_controller,
    wait_for,
)
from tandem.api.resources import GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION

WRITES = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
TOUCHED = {
    "trainingjobs",
    "inferenceservices",
    "computepools",
    "jobs",
    "services",
    "deployments",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "events",
}
SHA = hashlib.sha256(b"idle").hexdigest()


def no_namespace_terminating(api: k8s.ApiClient) -> None:
    """Namespaces other tests left being deleted make the controllers write: measurements start once they are gone."""
    core = k8s.CoreV1Api(api)
    wait_until(
        lambda: all(ns.status.phase != "Terminating" for ns in core.list_namespace().items),
        timeout=120,
        what="no namespace terminating",
    )


def assert_no_writes(
    before: Counter[tuple[str, str, str]], after: Counter[tuple[str, str, str]], verbs: set[str] = WRITES
) -> None:
    """No request with one of `verbs` to a resource Tandem touches between the two counts of the API server."""
    delta = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    writes = {key: n for key, n in delta.items() if key[0] in verbs and key[1] in TOUCHED}
    assert writes == {}, delta


@pytest.fixture
def scoped_operator(tandem_api: k8s.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[KopfRunner]:
    """The operator watching only the test's namespace: objects other tests leave behind cannot write in the
    measured window."""
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3")
    monkeypatch.setenv("TANDEM_NAMESPACES", namespace)
    with KopfRunner(["run", "--namespace", namespace, "--standalone", "-m", HANDLERS], timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output[-4000:]
    assert runner.exit_code == 0, runner.output[-4000:]


def _phase(api: k8s.ApiClient, resource: Any, namespace: str, name: str) -> str | None:
    phase: str | None = (get(api, resource, namespace, name).get("status") or {}).get("phase")
    return phase


def test_an_idle_resync_pass_writes_nothing(
    tandem_api: k8s.ApiClient, namespace: str, scoped_operator: KopfRunner
) -> None:
    annotations = {
        "tandem.dev/fake-duration": "1s",
        "tandem.dev/fake-termination-message": artifact_message("s3://models/idle/model.onnx", SHA),
    }
    for index in range(2):
        spec = {
            "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
            "model": {"output": "s3://models/idle"},
            "podMetadata": {"annotations": annotations},
        }
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, f"done-{index}", spec))
        serving = {"model": {"uri": "s3://models/idle/model.onnx"}, "resources": {"cpu": "50m", "memory": "64Mi"}}
        create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, f"ready-{index}", serving))
    for index in range(2):
        wait_until(
            lambda i=index: _phase(tandem_api, TRAINING_JOB, namespace, f"done-{i}") == "Succeeded",
            timeout=120,
            what=f"done-{index} Succeeded",
        )
        wait_until(
            lambda i=index: _phase(tandem_api, INFERENCE_SERVICE, namespace, f"ready-{i}") == "Ready",
            timeout=120,
            what=f"ready-{index} Ready",
        )
    controller = running_controller()
    wait_until(controller.queue.idle, timeout=30, what="the operator's queue drained")
    no_namespace_terminating(tandem_api)

    before = requests(tandem_api)
    controller.resync_once()
    wait_until(controller.queue.idle, timeout=30, what="the pass's work done")
    after = requests(tandem_api)

    assert_no_writes(before, after)
    assert after[("LIST", "trainingjobs", "")] - before[("LIST", "trainingjobs", "")] >= 1


def test_kopf_writes_no_bookkeeping_of_its_own(
    tandem_api: k8s.ApiClient, namespace: str, scoped_operator: KopfRunner
) -> None:
    """Expected: with only watch-event handlers, kopf stores no progress or diff-base annotations and adds no
    finalizer: the operator's writes are its own (and fenced by the lease)."""
    serving = {"model": {"uri": "s3://models/idle/model.onnx"}, "resources": {"cpu": "50m", "memory": "64Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "plain", serving))
    wait_until(lambda: _phase(tandem_api, INFERENCE_SERVICE, namespace, "plain") == "Ready", timeout=120, what="Ready")
    meta = get(tandem_api, INFERENCE_SERVICE, namespace, "plain")["metadata"]
    assert not [key for key in meta.get("annotations") or {} if "kopf" in key or key.startswith("tandem.dev/")]
    assert not meta.get("finalizers")


def test_a_reconcile_a_childs_change_calls_for_reads_its_object_from_the_watch(
    tandem_api: k8s.ApiClient, namespace: str, scoped_operator: KopfRunner
) -> None:
    spec = {"resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}, "model": {"output": "s3://m/held"}, "suspend": True}
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "held", spec))
    wait_until(lambda: _phase(tandem_api, TRAINING_JOB, namespace, "held") == "Queued", timeout=60, what="Queued")
    key = ("TrainingJob", namespace, "held")
    controller = running_controller()
    wait_until(
        lambda: controller.queue.idle() and not controller.own_writes.awaiting(key),
        timeout=30,
        what="the operator's writes back through its watch and its queue drained",
    )
    job = get(tandem_api, TRAINING_JOB, namespace, "held")["status"]["jobName"]
    reconciled = reconciles("TrainingJob")
    before = requests(tandem_api)

    patch = {"metadata": {"labels": {"team": "vision"}}}  # someone else's change to the child Job
    k8s.BatchV1Api(tandem_api).patch_namespaced_job(job, namespace, patch)
    wait_until(lambda: reconciles("TrainingJob") > reconciled, timeout=30, what="the owner reconciled")
    wait_until(controller.queue.idle, timeout=30, what="its work done")

    delta = requests(tandem_api) - before
    assert delta[("GET", "trainingjobs", "")] == 0, delta


def test_a_canary_on_trial_and_a_refused_child_write_nothing_over_three_resync_periods(
    tandem_api: k8s.ApiClient, namespace: str, scoped_operator: KopfRunner
) -> None:
    """The two states that used to write on every look: a trial counting down its window (now it names when the
    window ends), and a child the API server refuses (now a condition, one Warning, and a backoff)."""
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "digits", trained(SHA_1, 0.95)))
    wait_for(tandem_api, TRAINING_JOB, namespace, "digits", lambda o: served_sha(o) == SHA_1, "first model")
    rollout = {"canaryPercent": 50, "canarySeconds": 600, "minMetrics": {"accuracy": 0.9}}
    spec = {"model": {"fromTrainingJob": {"name": "digits"}}, "replicas": {"min": 2, "max": 2}, "rollout": rollout,
            "resources": {"cpu": "50m", "memory": "64Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "digits", spec))
    wait_for(tandem_api, INFERENCE_SERVICE, namespace, "digits", phase_is("Ready"), "ready", timeout=120)
    retrain(tandem_api, namespace, SHA_3, 0.97, ["--epochs", "3"])
    wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "digits",
        lambda o: ((o.get("status") or {}).get("canary") or {}).get("model", {}).get("sha256") == SHA_3, "on trial",
    )
    # A claim name no volume may carry: the Deployment is refused (422) on every try.
    refused = {"model": {"uri": "pvc://Bad_Claim/model.onnx"}, "resources": {"cpu": "50m", "memory": "64Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "refused", refused))
    wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "refused",
        lambda o: (condition(o, "Ready") or {}).get("reason") == "ChildRefused", "ChildRefused",
    )
    keys = [("InferenceService", namespace, "digits"), ("InferenceService", namespace, "refused")]
    controller = running_controller()
    wait_until(
        lambda: controller.queue.quiet() and not any(controller.own_writes.awaiting(key) for key in keys),
        timeout=30,
        what="the operator's writes back through its watch and nothing queued but the trial's next look",
    )
    assert len([e for e in events_for(tandem_api, namespace, "refused") if e.reason == "ChildRefused"]) == 1
    no_namespace_terminating(tandem_api)

    before = requests(tandem_api)
    for _ in range(3):
        controller.resync_once()
        wait_until(controller.queue.quiet, timeout=30, what="the pass's work done")
    after = requests(tandem_api)

    assert_no_writes(before, after)
    assert [e.count for e in events_for(tandem_api, namespace, "refused") if e.reason == "ChildRefused"] == [1]
    # A trial in its window and a hold both keep a recheck waiting: gone before the next test's operator starts.
    for name in ("digits", "refused"):
        resource_api(tandem_api).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, INFERENCE_SERVICE.plural, name
        )
    wait_until(lambda: not resource_api(tandem_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, INFERENCE_SERVICE.plural)["items"], timeout=60, what="the services deleted")


def test_a_deletion_the_watch_never_announced_makes_no_write(
    tandem_api: k8s.ApiClient, namespace: str, scoped_operator: KopfRunner
) -> None:
    """A watch that relists after a deletion announces none: the operator keeps the dead object's body, and its
    children's deletions by the garbage collector queue it. It must forget the object, not recreate them."""
    serving = {"model": {"uri": "s3://models/idle/model.onnx"}, "resources": {"cpu": "50m", "memory": "64Mi"}}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "ghost", serving))
    wait_until(lambda: _phase(tandem_api, INFERENCE_SERVICE, namespace, "ghost") == "Ready", timeout=120, what="Ready")
    key = ("InferenceService", namespace, "ghost")
    controller = running_controller()
    wait_until(lambda: not controller.own_writes.awaiting(key), timeout=30, what="the operator's writes echoed")
    stale = controller.views.kept(key)
    assert stale is not None
    resources = resource_api(tandem_api)
    resources.delete_namespaced_custom_object(GROUP, VERSION, namespace, INFERENCE_SERVICE.plural, "ghost")
    wait_until(lambda: controller.views.kept(key) is None, timeout=30, what="the deletion seen")
    no_namespace_terminating(tandem_api)

    before = requests(tandem_api)
    controller.views.keep(key, stale)  # as if the DELETED event had been missed
    controller.enqueue(key)  # as a child's deletion by the garbage collector would
    apps = k8s.AppsV1Api(tandem_api)
    wait_until(lambda: not apps.list_namespaced_deployment(namespace).items, timeout=120, what="its Deployment gone")
    wait_until(lambda: controller.views.kept(key) is None, timeout=30, what="the dead object forgotten")
    wait_until(controller.queue.quiet, timeout=30, what="nothing left to do")
    after = requests(tandem_api)

    assert_no_writes(before, after, verbs=WRITES - {"DELETE"})  # the garbage collector's deletions aside
