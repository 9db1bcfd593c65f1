"""What other actors in a shared cluster can do to a run, on a real control plane: a garbage collector behind, a
policy that refuses a status write, an operator away while a run completes with a TTL of 0, a pool deleted.

kwok plays the kubelet (worker pods run for `tandem.dev/fake-duration` and report the termination message that
`tandem.dev/fake-termination-message` carries); the API server, its admission and the Job, TTL and garbage
collection controllers are the real ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from integration.test_operator import SHA_1, SHA_2, _operator_process, phase_is, training_spec
from support.cluster import stop_process, wait_until
from support.tandem import (
    GPU_POOL,
    body,
    condition,
    create,
    delete,
    events_for,
    get,
    patch_spec,
    resource_api,
    wait_for,
)
from tandem.api.resources import COMPUTE_POOL, GROUP, TRAINING_JOB, VERSION

HOLD = "tandem.test/hold"
"""A finalizer of the test's own: it keeps a deleted Job in the API server, as a garbage collector behind would."""

REFUSE = "tandem.test/refuse-status"
"""The label that makes the test's admission policy refuse a TrainingJob's status writes."""


def jobs(api: k8s.ApiClient, namespace: str) -> list[k8s.V1Job]:
    listed: list[k8s.V1Job] = k8s.BatchV1Api(api).list_namespaced_job(namespace).items
    return listed


def job_names(api: k8s.ApiClient, namespace: str) -> list[str]:
    return sorted(job.metadata.name for job in jobs(api, namespace))


def job_is_done_or_gone(api: k8s.ApiClient, namespace: str, name: str) -> bool:
    found = [job for job in jobs(api, namespace) if job.metadata.name == name]
    return not found or bool(found[0].status.succeeded)


def observed(generation: int) -> Callable[[dict[str, Any]], bool]:
    """Whether the object is at this generation and its status says the operator has seen it."""
    def check(obj: dict[str, Any]) -> bool:
        seen = (obj.get("status") or {}).get("observedGeneration")
        return bool(obj["metadata"]["generation"] == seen == generation)

    return check


def label(api: k8s.ApiClient, namespace: str, name: str, labels: dict[str, str | None]) -> None:
    resource_api(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, TRAINING_JOB.plural, name, {"metadata": {"labels": labels}}
    )


def test_a_trainingjob_made_again_before_its_old_job_is_collected_trains_the_new_spec(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    batch = k8s.BatchV1Api(tandem_api)
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "again", training_spec(SHA_1, duration="120s")))
    first = wait_for(tandem_api, TRAINING_JOB, namespace, "again", phase_is("Running"), "the first object running")
    job = first["status"]["jobName"]
    batch.patch_namespaced_job(job, namespace, {"metadata": {"finalizers": [HOLD]}})
    delete(tandem_api, TRAINING_JOB, namespace, "again")
    wait_until(lambda: batch.read_namespaced_job(job, namespace).metadata.deletion_timestamp, timeout=60,
               what="the garbage collector deleting the old object's Job (held by the test's finalizer)")

    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "again", training_spec(SHA_2, duration="3s")))
    second = wait_for(tandem_api, TRAINING_JOB, namespace, "again", lambda o: (o.get("status") or {}).get("jobName"),
                      "the new object's run named")
    assert second["status"]["jobName"] == job  # the same deterministic name: the old Job is in its way
    assert second["status"].get("phase") not in ("Running", "Succeeded")  # not adopted
    batch.patch_namespaced_job(job, namespace, {"metadata": {"finalizers": None}})

    done = wait_for(tandem_api, TRAINING_JOB, namespace, "again", phase_is("Succeeded", "Failed"), "done", timeout=120)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["model"]["sha256"] == SHA_2
    (ran,) = jobs(tandem_api, namespace)
    assert [owner.uid for owner in ran.metadata.owner_references] == [done["metadata"]["uid"]]


@pytest.fixture
def status_policy(tandem_api: k8s.ApiClient, namespace: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy, bound to the test's namespace, that refuses (403) every status write of a
    TrainingJob labelled REFUSE, as a policy engine or a quota hook a cluster admin installs can."""
    admission = k8s.AdmissionregistrationV1Api(tandem_api)
    name = f"refuse-status-{namespace}"
    policy: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{"apiGroups": [GROUP], "apiVersions": [VERSION], "operations": ["UPDATE"],
                                   "resources": [f"{TRAINING_JOB.plural}/status"]}],
            },
            "validations": [{
                "expression": f"!has(object.metadata.labels) || !('{REFUSE}' in object.metadata.labels)",
                "message": "status writes refused by the cluster's policy",
                "reason": "Forbidden",
            }],
        },
    }
    binding: dict[str, Any] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
        },
    }
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def status_write_refused(api: k8s.ApiClient, namespace: str, name: str) -> bool:
    """Whether the API server refuses a status write of the object now (a dry run: nothing is stored)."""
    try:
        resource_api(api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, TRAINING_JOB.plural, name, {"status": {}}, dry_run="All"
        )
    except ApiException as exc:
        if exc.status == 403:
            return True
        raise
    return False


def test_a_refused_status_write_leaves_no_job_that_status_does_not_name(
    tandem_api: k8s.ApiClient, namespace: str, status_policy: None, operator: KopfRunner
) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "refused", training_spec(SHA_1, duration="120s")))
    first = wait_for(tandem_api, TRAINING_JOB, namespace, "refused", phase_is("Running"), "the first run running")
    assert job_names(tandem_api, namespace) == [first["status"]["jobName"]]

    label(tandem_api, namespace, "refused", {REFUSE: "true"})
    wait_until(lambda: status_write_refused(tandem_api, namespace, "refused"), timeout=60,
               what="the admission policy in force")
    patch_spec(tandem_api, TRAINING_JOB, namespace, "refused", {"args": ["--epochs", "2"]})
    wait_until(lambda: any(e.reason == "ApplyFailed" for e in events_for(tandem_api, namespace, "refused")),
               timeout=60, what="the operator's refused status write reported")
    # The replaced run may be gone already (it is deleted before the new one is named); the new one never starts.
    assert set(job_names(tandem_api, namespace)) <= {first["status"]["jobName"]}

    label(tandem_api, namespace, "refused", {REFUSE: None})
    patch_spec(tandem_api, TRAINING_JOB, namespace, "refused", {"args": ["--epochs", "3"]})
    last = wait_for(tandem_api, TRAINING_JOB, namespace, "refused", observed(3), "the third spec observed")
    wait_until(lambda: job_names(tandem_api, namespace) == [last["status"]["jobName"]], timeout=60,
               what=f"only {last['status']['jobName']} left, never a Job of the refused spec")


def test_ttl_0_with_the_operator_away_across_the_completion_records_the_model_exactly_once(
    tandem_api: k8s.ApiClient, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_RESYNC_SECONDS", "3")
    kubeconfig = os.environ["KUBECONFIG"]
    spec = training_spec(SHA_1, duration="10s", ttlSecondsAfterFinished=0)
    first = _operator_process(kubeconfig)
    try:
        create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "ttl", spec))
        running = wait_for(tandem_api, TRAINING_JOB, namespace, "ttl", phase_is("Running"), "running")
    finally:
        stop_process(first)
    job = running["status"]["jobName"]
    wait_until(lambda: job_is_done_or_gone(tandem_api, namespace, job), timeout=90,
               what="the run completed while the operator is away")

    second = _operator_process(kubeconfig)
    try:
        done = wait_for(tandem_api, TRAINING_JOB, namespace, "ttl", phase_is("Succeeded", "Failed"), "done")
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["model"]["sha256"] == SHA_1
        wait_until(lambda: not job_names(tandem_api, namespace), timeout=60,
                   what="the TTL controller deleting the Job once its result is recorded")
        kept = get(tandem_api, TRAINING_JOB, namespace, "ttl")["status"]
        assert (kept["phase"], kept["model"]) == ("Succeeded", done["status"]["model"])
    finally:
        stop_process(second)
    published = [e for e in events_for(tandem_api, namespace, "ttl") if e.reason == "ModelPublished"]
    assert sum(e.count or 1 for e in published) == 1


@pytest.fixture
def doomed_pool(tandem_api: k8s.ApiClient, namespace: str) -> Iterator[str]:
    """A pool of the gpu nodes of the test's own, for the test to delete: the shared pools stay."""
    name = f"doomed-{namespace}"[:63]
    create(tandem_api, COMPUTE_POOL, None, body(COMPUTE_POOL, name, GPU_POOL))
    try:
        yield name
    finally:
        try:
            resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def test_a_run_whose_pool_is_deleted_still_records_its_finished_job(
    tandem_api: k8s.ApiClient, namespace: str, doomed_pool: str, operator: KopfRunner
) -> None:
    spec = training_spec(SHA_1, duration="10s", pool=doomed_pool)
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "orphaned", spec))
    wait_for(tandem_api, TRAINING_JOB, namespace, "orphaned", phase_is("Running"), "running")
    resource_api(tandem_api).delete_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural, doomed_pool)

    done = wait_for(tandem_api, TRAINING_JOB, namespace, "orphaned", phase_is("Succeeded", "Failed"), "done",
                    timeout=120)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["model"]["sha256"] == SHA_1
    pool = condition(done, "PoolResolved")
    assert pool is not None and pool["status"] == "False"
