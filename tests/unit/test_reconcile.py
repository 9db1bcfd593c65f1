"""reconcile.py against an in-memory `Kube` that records every call (support.fake_kube); the real API server is in
integration."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from support.fake_kube import FakeKube
from tandem.api.resources import TRAINING_JOB
from tandem.config import OperatorConfig
from tandem.controller import reconcile
from tandem.controller.reconcile import Outcome, reconcile_pool, reconcile_serving, reconcile_training

ARTIFACT = {"uri": "s3://models/digits/v1/model.onnx", "sha256": "e" * 64, "sizeBytes": 1}
COMPLETE = {"type": "Complete", "status": "True"}


def _body(kind: str, spec: dict[str, Any], generation: int = 1, name: str = "digits") -> dict[str, Any]:
    return {
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": generation},
        "spec": spec,
    }


def _condition(outcome: Outcome, kind: str) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = outcome.status["conditions"]
    return next(condition for condition in conditions if condition["type"] == kind)


class TrainingLoop:
    """A TrainingJob body whose status is what the last reconcile wrote, as the API server would keep it."""

    def __init__(self, kube: FakeKube, spec: dict[str, Any], pools: Mapping[str, Any], config: OperatorConfig):
        self.kube, self.pools, self.config = kube, pools, config
        self.body = kube.holds(_body("TrainingJob", spec))

    def reconcile(self) -> Outcome:
        outcome = reconcile_training(self.kube, self.body, self.pools, self.config)
        self.body["status"] = outcome.status
        return outcome

    def change_spec(self, **fields: Any) -> None:
        self.body["spec"] = {**self.body["spec"], **fields}
        self.body["metadata"]["generation"] += 1


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def loop(
    kube: FakeKube,
    training_spec_body: dict[str, Any],
    pool_bodies: dict[str, dict[str, Any]],
    config: OperatorConfig,
) -> TrainingLoop:
    return TrainingLoop(kube, training_spec_body, pool_bodies, config)


def test_training_job_creates_exactly_one_job(kube: FakeKube, loop: TrainingLoop) -> None:
    outcome = loop.reconcile()
    assert kube.writes("create") == [("create", "Job", "digits-g1")]
    assert outcome.status["jobName"] == "digits-g1"
    assert outcome.status["phase"] == "Pending"
    assert [event.reason for event in outcome.events].count("Created") == 1


def test_reconciling_twice_creates_nothing_new(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    written = len(kube.writes("patch_status"))
    second = loop.reconcile()
    assert kube.writes("create") == [("create", "Job", "digits-g1")]
    assert len(kube.writes("patch_status")) == written
    assert second.events == []


def test_a_new_run_is_named_in_status_before_its_job_is_created(kube: FakeKube, loop: TrainingLoop) -> None:
    """A status write refused after the create would leave a Job no status names, never deleted."""
    loop.reconcile()
    loop.change_spec(workers=3)
    refused = ApiException(status=409, reason="Conflict")

    def conflict(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise refused

    kube.patch_status = conflict  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        loop.reconcile()
    assert ("create", "Job", "digits-g2") not in kube.calls
    assert ("batch/v1", "Job", "ml", "digits-g2") not in kube.objects


def test_a_job_left_by_an_earlier_object_of_the_same_name_is_replaced_not_adopted(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.reconcile()
    old = kube.objects[("batch/v1", "Job", "ml", "digits-g1")]
    gone = {"apiVersion": "tandem.dev/v1alpha1", "kind": "TrainingJob", "name": "digits", "uid": "uid-gone",
            "controller": True}
    old["metadata"]["ownerReferences"] = [gone]
    old["metadata"]["annotations"]["tandem.dev/spec-hash"] = "of the old spec"
    loop.body["status"] = {}
    with pytest.raises(ApiException) as refused:
        loop.reconcile()
    assert refused.value.status == 409
    assert ("delete", "Job", "digits-g1") in kube.calls
    loop.reconcile()
    job = kube.objects[("batch/v1", "Job", "ml", "digits-g1")]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-digits"


def test_the_earlier_objects_job_still_being_collected_is_never_read_as_this_run(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    """The new object's status already names the run; the old Job under that name is not its run until it is gone."""
    loop.reconcile()
    key = ("batch/v1", "Job", "ml", "digits-g1")
    old = kube.objects[key]
    old["metadata"]["ownerReferences"] = [{"apiVersion": "tandem.dev/v1alpha1", "kind": "TrainingJob",
                                           "name": "digits", "uid": "uid-gone", "controller": True}]
    kube.add_pod("digits-g1", "Succeeded", message=json.dumps(ARTIFACT), seconds=30)
    kube.set_status("batch/v1", "Job", "digits-g1", {"succeeded": 1, "conditions": [COMPLETE]})
    loop.body["status"] = {"jobName": "digits-g1", "phase": "Pending"}
    written = len(kube.writes("patch_status"))
    with pytest.raises(ApiException) as refused:
        loop.reconcile()
    assert refused.value.status == 409
    assert ("delete", "Job", "digits-g1") in kube.calls
    assert len(kube.writes("patch_status")) == written  # nothing of the old run recorded


def test_a_job_of_the_runs_name_that_no_trainingjob_made_is_refused_and_never_touched(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.reconcile()
    theirs = kube.objects[("batch/v1", "Job", "ml", "digits-g1")]
    theirs["metadata"]["ownerReferences"] = []
    loop.body["status"] = {}
    outcome = loop.reconcile()
    assert _condition(outcome, "Running")["reason"] == "ChildRefused"
    assert "not made by any TrainingJob" in _condition(outcome, "Running")["message"]
    assert ("delete", "Job", "digits-g1") not in kube.calls
    assert kube.objects[("batch/v1", "Job", "ml", "digits-g1")] is theirs


@pytest.mark.parametrize(
    "owners",
    [[], [{"kind": "Job", "name": "digits-g1", "uid": "uid-of-another-job", "controller": True}]],
    ids=["no-owner", "another-controller"],
)
def test_a_pod_labelled_like_worker_0_but_not_made_by_the_job_publishes_nothing(
    kube: FakeKube, loop: TrainingLoop, owners: list[dict[str, Any]]
) -> None:
    """`kubectl debug --copy-to` keeps a worker's labels and annotations; only the Job's uid says who made it."""
    loop.reconcile()
    kube.add_pod("digits-g1", "Succeeded", message=json.dumps(ARTIFACT), seconds=30)
    forged = kube.objects.pop(("v1", "Pod", "ml", "digits-g1-0-abcde"))
    forged["metadata"]["ownerReferences"] = owners
    kube.objects[("v1", "Pod", "ml", "digits-g1-0-forged")] = forged
    outcome = loop.reconcile()
    assert outcome.status["phase"] != "Succeeded"
    assert not outcome.status.get("model")
    kube.set_status("batch/v1", "Job", "digits-g1", {"succeeded": 1, "conditions": [COMPLETE]})
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Failed"  # the Job's own worker reported no model
    assert not outcome.status.get("model")


def test_a_finished_run_gets_its_ttl_only_once_its_model_is_recorded(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(ttlSecondsAfterFinished=0)
    loop.reconcile()
    job = kube.objects[("batch/v1", "Job", "ml", "digits-g2")]
    assert "ttlSecondsAfterFinished" not in job["spec"]
    kube.add_pod("digits-g2", "Succeeded", message=json.dumps(ARTIFACT), seconds=30)
    kube.set_status("batch/v1", "Job", "digits-g2", {"succeeded": 1, "conditions": [COMPLETE]})
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Succeeded"
    assert job["spec"]["ttlSecondsAfterFinished"] == 0
    loop.reconcile()
    assert kube.writes("merge_patch", "Job") == [("merge_patch", "Job", "digits-g2")]


def test_a_run_whose_pool_was_deleted_still_records_its_finished_job(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.reconcile()
    kube.add_pod("digits-g1", "Succeeded", message=json.dumps(ARTIFACT), seconds=30)
    kube.set_status("batch/v1", "Job", "digits-g1", {"succeeded": 1, "conditions": [COMPLETE]})
    loop.pools = {}
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Succeeded"
    assert outcome.status["model"]["uri"] == ARTIFACT["uri"]
    pool = _condition(outcome, "PoolResolved")
    assert (pool["status"], pool["reason"]) == ("False", "NoTrainingPool")


def test_several_workers_also_create_the_headless_service(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(workers=2)
    loop.reconcile()
    loop.reconcile()
    assert sorted(kube.writes("apply")) == [("apply", "Service", "digits-g2")]
    assert kube.writes("create") == [("create", "Job", "digits-g2")]


def test_spec_change_replaces_the_run_with_a_new_generation(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    loop.change_spec(args=["--epochs", "5"])
    outcome = loop.reconcile()
    assert ("delete", "Job", "digits-g1") in kube.writes("delete")
    assert kube.writes("create") == [("create", "Job", "digits-g1"), ("create", "Job", "digits-g2")]
    assert ("batch/v1", "Job", "ml", "digits-g1") not in kube.objects
    assert outcome.status["jobName"] == "digits-g2"
    assert "RunReplaced" in [event.reason for event in outcome.events]


def test_existing_job_is_adopted_after_a_crash_before_status_was_written(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    del loop.body["status"]
    outcome = loop.reconcile()
    assert [key for key in kube.objects if key[1] == "Job"] == [("batch/v1", "Job", "ml", "digits-g1")]
    assert outcome.status["jobName"] == "digits-g1"
    assert "Created" not in [event.reason for event in outcome.events]


def test_suspend_toggle_patches_the_job_without_a_new_run(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    loop.change_spec(suspend=True)
    outcome = loop.reconcile()
    assert kube.writes("merge_patch") == [("merge_patch", "Job", "digits-g1")]
    assert kube.writes("create") == [("create", "Job", "digits-g1")]
    assert kube.writes("delete") == []
    assert kube.objects[("batch/v1", "Job", "ml", "digits-g1")]["spec"]["suspend"] is True
    assert outcome.status["phase"] == "Queued"
    assert outcome.status["observedGeneration"] == 2


def test_usage_is_not_counted_again_after_a_suspend_toggle(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    kube.add_pod("digits-g1", "Succeeded", seconds=600)
    loop.reconcile()
    assert loop.body["status"]["usage"]["coreSeconds"] == 1200
    loop.change_spec(suspend=True)
    loop.reconcile()
    loop.reconcile()
    assert loop.body["status"]["usage"]["coreSeconds"] == 1200


def test_successful_run_reports_its_model(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    kube.set_status("batch/v1", "Job", "digits-g1", {"conditions": [{"type": "Complete", "status": "True"}]})
    artifact = '{"uri": "s3://models/digits/v1", "sha256": "' + "e" * 64 + '", "sizeBytes": 1}'
    kube.add_pod("digits-g1", "Succeeded", message=artifact)
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Succeeded"
    assert outcome.status["model"]["uri"] == "s3://models/digits/v1"


def test_ttl_deleted_job_is_not_recreated(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    kube.set_status("batch/v1", "Job", "digits-g1", {"conditions": [{"type": "Complete", "status": "True"}]})
    kube.add_pod("digits-g1", "Succeeded", message='{"uri": "s3://m/v1", "sha256": "' + "e" * 64 + '", "sizeBytes": 1}')
    loop.reconcile()
    kube.objects.clear()
    outcome = loop.reconcile()
    assert kube.writes("create") == [("create", "Job", "digits-g1")]
    assert outcome.status["phase"] == "Succeeded"


def test_unknown_pool_is_a_false_condition_and_a_warning(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(pool="tpu")
    outcome = loop.reconcile()
    condition = _condition(outcome, "PoolResolved")
    assert (condition["status"], condition["reason"]) == ("False", "PoolNotFound")
    assert [(event.type, event.reason) for event in outcome.events] == [("Warning", "PoolNotFound")]
    assert kube.writes("apply") == []


def test_repeated_problem_writes_no_status_and_no_event_again(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(pool="tpu")
    loop.reconcile()
    again = loop.reconcile()
    assert again.events == []
    assert len(kube.writes("patch_status")) == 1


def test_spec_the_models_refuse_is_an_invalid_spec_condition(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(workers=0)
    outcome = loop.reconcile()
    condition = _condition(outcome, "PoolResolved")
    assert condition["reason"] == "InvalidSpec"
    assert "spec.workers" in condition["message"]


@pytest.fixture
def serving_body(kube: FakeKube, serving_spec_body: dict[str, Any]) -> dict[str, Any]:
    return kube.holds(_body("InferenceService", serving_spec_body))


def test_inference_service_applies_deployment_service_and_budget(
    kube: FakeKube, serving_body: dict[str, Any], pool_bodies: dict[str, Any], config: OperatorConfig
) -> None:
    outcome = reconcile_serving(kube, serving_body, pool_bodies, config)
    assert sorted(kube.writes("apply")) == [
        ("apply", "Deployment", "digits"),
        ("apply", "PodDisruptionBudget", "digits"),
        ("apply", "Service", "digits"),
    ]
    assert outcome.status["url"] == "http://digits.ml.svc.cluster.local/v2/models/digits"
    assert outcome.status["placement"]["pool"] == "cpu"
    assert outcome.status["phase"] == "Deploying"
    assert kube.writes("patch_status") == [("patch_status", "InferenceService", "digits")]


def test_autoscaled_inference_service_also_gets_an_autoscaler(
    kube: FakeKube, serving_body: dict[str, Any], pool_bodies: dict[str, Any], config: OperatorConfig
) -> None:
    serving_body["spec"]["replicas"] = {"min": 1, "max": 3}
    reconcile_serving(kube, serving_body, pool_bodies, config)
    assert ("apply", "HorizontalPodAutoscaler", "digits") in kube.writes("apply")


def test_inference_service_is_ready_once_the_rollout_completes(
    kube: FakeKube, serving_body: dict[str, Any], pool_bodies: dict[str, Any], config: OperatorConfig
) -> None:
    reconcile_serving(kube, serving_body, pool_bodies, config)
    kube.set_status(
        "apps/v1",
        "Deployment",
        "digits",
        {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    )
    outcome = reconcile_serving(kube, serving_body, pool_bodies, config)
    assert outcome.status["phase"] == "Ready"
    assert _condition(outcome, "Ready")["status"] == "True"


def test_missing_training_job_is_model_resolved_false(
    kube: FakeKube, pool_bodies: dict[str, Any], config: OperatorConfig
) -> None:
    body = _body("InferenceService", {"model": {"fromTrainingJob": {"name": "absent"}}})
    outcome = reconcile_serving(kube, body, pool_bodies, config)
    condition = _condition(outcome, "ModelResolved")
    assert (condition["status"], condition["reason"]) == ("False", "TrainingJobNotFound")
    assert [(event.type, event.reason) for event in outcome.events] == [("Warning", "TrainingJobNotFound")]
    assert kube.writes("apply") == []


def test_model_from_a_succeeded_training_job_is_served(
    kube: FakeKube, pool_bodies: dict[str, Any], config: OperatorConfig
) -> None:
    sha = "d" * 64
    kube.custom[(TRAINING_JOB.kind, "ml", "trainer")] = {
        "status": {
            "phase": "Succeeded",
            "modelGeneration": 4,
            "model": {"uri": "s3://m/v4", "sha256": sha, "sizeBytes": 9},
        }
    }
    body = kube.holds(_body("InferenceService", {"model": {"fromTrainingJob": {"name": "trainer"}}}))
    outcome = reconcile_serving(kube, body, pool_bodies, config)
    assert outcome.status["model"] == {"uri": "s3://m/v4", "sha256": sha, "version": "4", "trainingJob": "trainer"}
    env = kube.objects[("apps/v1", "Deployment", "ml", "digits")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TANDEM_MODEL_URI", "value": "s3://m/v4"} in env


def test_pool_status_counts_the_nodes(kube: FakeKube, pool_bodies: dict[str, Any]) -> None:
    kube.node_list = [
        {
            "metadata": {"labels": {"tandem.dev/pool": "cpu"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "allocatable": {"cpu": "8"}},
        }
    ]
    body = {"metadata": {"name": "cpu", "uid": "u", "generation": 1}, "spec": pool_bodies["cpu"]}
    outcome = reconcile_pool(kube, body)
    assert (outcome.status["nodes"], outcome.status["readyNodes"]) == (1, 1)
    assert outcome.status["allocatable"]["cpu"] == "8"


def test_status_is_written_conditionally_on_the_resource_version_it_was_computed_from(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.body["metadata"]["resourceVersion"] = "42"
    loop.reconcile()
    assert kube.preconditions == ["42", "43"]  # the run named (see above), then its status once created


class ServingLoop:
    """An InferenceService body whose status is what the last reconcile wrote; the clock is set by the test."""

    def __init__(self, kube: FakeKube, body: dict[str, Any], pools: Mapping[str, Any], config: OperatorConfig):
        self.kube, self.body, self.pools, self.config = kube, body, pools, config

    def reconcile(self) -> Outcome:
        outcome = reconcile_serving(self.kube, self.body, self.pools, self.config)
        self.body["status"] = outcome.status
        return outcome

    def ready(self, replicas: int = 1) -> None:
        """The Deployment controller's report once `replicas` pods of the current template serve."""
        counts = ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas")
        self.kube.set_status("apps/v1", "Deployment", "digits", dict.fromkeys(counts, replicas))

    def up(self) -> Outcome:
        """The reconcile that finds the children it applied ready: the state every later change starts from."""
        self.reconcile()
        self.ready()
        return self.reconcile()

    def writes_after(self, idle: timedelta) -> list[tuple[str, ...]]:
        """The calls of a reconcile once nothing has changed for `idle`, as a resync makes it: each one a write
        to the API server, which a fleet of services at rest must not pay for."""
        writes = len(self.kube.calls)
        CLOCK[0] += idle
        self.reconcile()
        return self.kube.calls[writes:]


@pytest.fixture
def serving(
    kube: FakeKube,
    serving_body: dict[str, Any],
    pool_bodies: dict[str, Any],
    config: OperatorConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> ServingLoop:
    monkeypatch.setattr(reconcile, "now", lambda: CLOCK[0])
    CLOCK[0] = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return ServingLoop(kube, serving_body, pool_bodies, config)


CLOCK = [datetime(2024, 5, 1, 12, 0, tzinfo=UTC)]


def test_an_idle_ready_service_reconciled_again_costs_no_write(serving: ServingLoop) -> None:
    assert serving.up().status["phase"] == "Ready"
    assert serving.writes_after(timedelta(seconds=30)) == []


def test_a_ready_service_at_rest_writes_no_usage_however_long_it_serves(serving: ServingLoop) -> None:
    serving.up()
    assert serving.writes_after(timedelta(days=3)) == []


def test_the_usage_ledger_catches_up_with_the_next_change(kube: FakeKube, serving: ServingLoop) -> None:
    serving.up()
    CLOCK[0] += timedelta(hours=1)
    serving.ready(replicas=2)
    serving.reconcile()
    assert serving.body["status"]["readyReplicas"] == 2
    assert serving.body["status"]["usage"]["coreSeconds"] == 7200.0  # the hour of the one 2-core replica before
    assert serving.body["status"]["usageObservedAt"].startswith("2024-05-01T13:00:00")


def test_a_new_model_without_a_spec_change_applies_the_children_again(kube: FakeKube, serving: ServingLoop) -> None:
    serving.up()
    serving.body["spec"]["model"] = {"uri": "s3://models/digits/v2/model.onnx", "sha256": "b" * 64}
    serving.reconcile()
    applied = [call for call in kube.writes("apply") if call[1] == "Deployment"]
    assert len(applied) == 2
    env = kube.objects[("apps/v1", "Deployment", "ml", "digits")]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "TANDEM_MODEL_URI", "value": "s3://models/digits/v2/model.onnx"} in env


def test_switching_from_fixed_to_autoscaled_replicas_keeps_the_current_count_for_the_hpa(
    kube: FakeKube, serving: ServingLoop
) -> None:
    serving.body["spec"]["replicas"] = {"min": 3, "max": 3}
    serving.reconcile()
    serving.body["spec"]["replicas"] = {"min": 3, "max": 6}
    serving.body["metadata"]["generation"] += 1
    serving.reconcile()
    deployment = kube.objects[("apps/v1", "Deployment", "ml", "digits")]
    assert deployment["spec"]["replicas"] == 3
    assert kube.writes("apply", "Deployment")[-2:] == [
        ("apply", "Deployment", "digits", "tandem-handover-to-hpa"),
        ("apply", "Deployment", "digits"),
    ]


def test_an_autoscaled_deployment_applied_again_hands_nothing_over(kube: FakeKube, serving: ServingLoop) -> None:
    serving.body["spec"]["replicas"] = {"min": 1, "max": 6}
    serving.reconcile()
    serving.body["spec"]["model"] = {"uri": "s3://models/digits/v2/model.onnx", "sha256": "b" * 64}
    serving.reconcile()
    assert kube.writes("apply", "Deployment") == [("apply", "Deployment", "digits")] * 2


INVALID_VOLUME = (
    'Deployment.apps "digits" is invalid: spec.template.spec.volumes[0].name: Invalid value: "pvc-Bad_Claim"'
)


def test_a_child_the_api_server_refuses_is_a_condition_and_one_warning_not_an_error(
    kube: FakeKube, serving: ServingLoop
) -> None:
    kube.invalid["Deployment"] = INVALID_VOLUME
    outcome = serving.reconcile()
    ready = _condition(outcome, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ChildRefused")
    assert INVALID_VOLUME in ready["message"]
    assert [(event.type, event.reason) for event in outcome.events] == [("Warning", "ChildRefused")]
    assert outcome.refused == ("uid-digits", 1)


def test_a_child_refused_again_writes_no_status_and_posts_no_event_again(kube: FakeKube, serving: ServingLoop) -> None:
    kube.invalid["Deployment"] = INVALID_VOLUME
    serving.reconcile()
    writes = len(kube.writes("patch_status"))
    again = serving.reconcile()
    assert len(kube.writes("patch_status")) == writes
    assert again.events == [] and again.refused == ("uid-digits", 1)


def test_a_training_job_whose_job_is_refused_says_so_once(kube: FakeKube, loop: TrainingLoop) -> None:
    kube.invalid["Job"] = 'Job.batch "digits-g1" is invalid: spec.template.spec.volumes[0].name: Invalid value'
    outcome = loop.reconcile()
    running = _condition(outcome, "Running")
    assert (running["status"], running["reason"]) == ("False", "ChildRefused")
    assert [(event.type, event.reason) for event in outcome.events] == [("Warning", "ChildRefused")]
    assert outcome.refused == ("uid-digits", 1)
    assert loop.reconcile().events == []


def test_a_refused_spec_is_held_with_a_doubling_backoff_and_a_new_spec_is_not() -> None:
    first = reconcile.hold_after(None, ("uid", 1), at=100.0)
    second = reconcile.hold_after(first, ("uid", 1), at=first.until)
    assert (first.until, second.until) == (100.0 + reconcile.REFUSAL_RETRY, first.until + 2 * reconcile.REFUSAL_RETRY)
    assert reconcile.held(second, ("uid", 1), at=second.until - 1)
    assert not reconcile.held(second, ("uid", 1), at=second.until)
    assert not reconcile.held(second, ("uid", 2), at=100.0)  # the spec changed: tried at once
    assert not reconcile.held(second, ("other-uid", 1), at=100.0)  # another object of the same name
    assert reconcile.hold_after(second, ("uid", 2), at=0.0).attempts == 1


def test_a_refusal_backoff_is_capped() -> None:
    hold = None
    for _ in range(20):
        hold = reconcile.hold_after(hold, ("uid", 1), at=0.0)
    assert hold is not None and hold.until == reconcile.REFUSAL_RETRY_CAP


def test_a_service_deleted_without_a_watch_event_gets_nothing_created(kube: FakeKube, serving: ServingLoop) -> None:
    serving.reconcile()
    kube.delete_unannounced("InferenceService", "digits")
    writes = len(kube.calls)
    with pytest.raises(reconcile.Gone):
        serving.reconcile()  # from the body kept of it, as a child's deletion queues it
    assert kube.calls[writes:] == []
    assert ("apps/v1", "Deployment", "ml", "digits") not in kube.objects


def test_a_service_replaced_by_another_of_the_same_name_gets_nothing_created_for_the_old_uid(
    kube: FakeKube, serving: ServingLoop
) -> None:
    serving.reconcile()
    kube.delete_unannounced("InferenceService", "digits")
    kube.custom[("InferenceService", "ml", "digits")] = {"metadata": {"name": "digits", "uid": "uid-new"}}
    writes = len(kube.calls)
    with pytest.raises(reconcile.Gone):
        serving.reconcile()  # from the old object's body: its uid's children are not made again
    assert kube.calls[writes:] == []


def test_a_training_job_deleted_without_a_watch_event_gets_no_job_again(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    kube.delete_unannounced("TrainingJob", "digits")
    writes = len(kube.calls)
    with pytest.raises(reconcile.Gone):
        loop.reconcile()
    assert kube.calls[writes:] == []


def test_a_status_patch_that_finds_the_object_gone_ends_the_reconcile(kube: FakeKube, serving: ServingLoop) -> None:
    serving.reconcile()
    kube.deleted.add(("InferenceService", "ml", "digits"))  # deleted after the children were seen, before the write
    serving.ready()
    with pytest.raises(reconcile.Gone):
        serving.reconcile()


def test_a_pool_lists_only_its_own_nodes(kube: FakeKube, pool_bodies: dict[str, Any]) -> None:
    kube.node_list = [
        {"metadata": {"labels": {"tandem.dev/pool": "cpu"}}, "status": {}},
        {"metadata": {"labels": {"tandem.dev/pool": "gpu"}}, "status": {}},
    ]
    body = {"metadata": {"name": "cpu", "uid": "u", "generation": 1}, "spec": pool_bodies["cpu"]}
    outcome = reconcile_pool(kube, body)
    assert ("nodes", "[('tandem.dev/pool', 'cpu')]") in kube.calls
    assert outcome.status["nodes"] == 1


def test_a_suspended_job_without_pods_costs_no_pod_list(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(suspend=True)
    loop.reconcile()
    kube.set_status("batch/v1", "Job", "digits-g2", {"conditions": [{"type": "Suspended", "status": "True"}]})
    loop.reconcile()
    assert kube.writes("list") == []


def test_a_suspended_job_still_counting_pods_has_them_listed(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(suspend=True)
    loop.reconcile()
    kube.set_status("batch/v1", "Job", "digits-g2", {"terminating": 1})
    loop.reconcile()
    assert kube.writes("list") == [("list", "Pod", "[('job-name', 'digits-g2')]")]


def test_a_missing_service_account_holds_the_run_with_a_condition_that_names_it(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.change_spec(serviceAccountName="trainer-identity")
    outcome = loop.reconcile()
    assert kube.writes("create") == []
    assert outcome.status["phase"] == "Pending"
    condition = _condition(outcome, "Running")
    assert (condition["status"], condition["reason"]) == ("False", "ServiceAccountNotFound")
    assert "ServiceAccount trainer-identity" in condition["message"] and "namespace ml" in condition["message"]
    assert [(event.type, event.reason) for event in outcome.events] == [("Warning", "ServiceAccountNotFound")]


def test_creating_the_service_account_later_lets_the_held_run_start(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(serviceAccountName="trainer-identity")
    loop.reconcile()
    kube.objects[("v1", "ServiceAccount", "ml", "trainer-identity")] = {"metadata": {"name": "trainer-identity"}}
    outcome = loop.reconcile()
    assert kube.writes("create") == [("create", "Job", "digits-g2")]
    job = kube.objects[("batch/v1", "Job", "ml", "digits-g2")]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "trainer-identity"
    assert _condition(outcome, "Running")["reason"] == "WorkersPending"


def test_a_spec_change_to_a_missing_service_account_keeps_the_previous_run(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    loop.change_spec(serviceAccountName="not-yet")
    outcome = loop.reconcile()
    assert kube.writes("delete") == []
    assert outcome.status["jobName"] == "digits-g1"
    assert _condition(outcome, "Running")["reason"] == "ServiceAccountNotFound"


def test_the_service_account_is_looked_up_only_until_the_job_exists(kube: FakeKube, loop: TrainingLoop) -> None:
    kube.objects[("v1", "ServiceAccount", "ml", "trainer-identity")] = {"metadata": {"name": "trainer-identity"}}
    loop.change_spec(serviceAccountName="trainer-identity")
    loop.reconcile()
    del kube.objects[("v1", "ServiceAccount", "ml", "trainer-identity")]
    outcome = loop.reconcile()
    assert _condition(outcome, "Running")["reason"] == "WorkersPending"


def test_a_new_priority_class_relabels_the_queued_job_without_a_new_run(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.change_spec(queue="gpu", priorityClass="ordinary")
    loop.reconcile()
    loop.change_spec(priorityClass="urgent")
    outcome = loop.reconcile()
    assert kube.writes("create") == [("create", "Job", "digits-g2")]
    assert kube.writes("merge_patch", "Job") == [("merge_patch", "Job", "digits-g2")]
    assert kube.objects[("batch/v1", "Job", "ml", "digits-g2")]["metadata"]["labels"][
        "kueue.x-k8s.io/priority-class"
    ] == "urgent"
    assert outcome.status["jobName"] == "digits-g2"
    loop.reconcile()
    assert len(kube.writes("merge_patch", "Job")) == 1


def test_the_run_hash_ignores_fields_at_their_defaults_so_new_api_fields_keep_existing_runs() -> None:
    from tandem.api.trainingjob import TrainingJobSpec

    plain = TrainingJobSpec.model_validate({"model": {"output": "s3://models/digits"}})
    explicit = TrainingJobSpec.model_validate({"model": {"output": "s3://models/digits"}, "workers": 1, "env": []})
    assert reconcile.run_spec_hash(plain) == reconcile.run_spec_hash(explicit)
    assert reconcile.run_spec_hash(plain) != reconcile.run_spec_hash(plain.model_copy(update={"workers": 2}))


def test_a_preempted_run_has_its_pods_listed_for_the_checkpoint_its_stopped_worker_reports(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    loop.change_spec(queue="gpu")
    loop.reconcile()
    kube.set_status("batch/v1", "Job", "digits-g2", {"conditions": [{"type": "Suspended", "status": "True"}]})
    kube.objects[("kueue.x-k8s.io/v1beta2", "Workload", "ml", "job-digits-g2")] = {
        "metadata": {"name": "job-digits-g2", "namespace": "ml", "labels": {"kueue.x-k8s.io/job-uid": "job-uid"}},
        "spec": {"active": True},
        "status": {"conditions": [
            {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "Preempted to accommodate"},
            {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "Preempted to accommodate"},
        ]},
    }
    kube.objects[("batch/v1", "Job", "ml", "digits-g2")]["metadata"]["uid"] = "job-uid"
    stopped = '{"reason":"Stopped","error":"stopped by signal 15","checkpoint":{"step":500}}'
    kube.add_pod("digits-g2", "Failed", message=stopped)
    outcome = loop.reconcile()
    assert ("list", "Pod", "[('job-name', 'digits-g2')]") in kube.calls
    assert outcome.status["checkpoint"] == {"step": 500, "uri": None, "resumedFromStep": None}
    assert _condition(outcome, "Running")["reason"] == "Preempted"
    assert _condition(outcome, "Running")["message"].endswith("; it resumes from checkpoint step 500")


def test_a_reconcile_that_sees_a_preempted_worker_stopping_waits_for_its_report(
    kube: FakeKube, loop: TrainingLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "STOP_REPORT_POLL", 0.0)
    loop.change_spec(queue="gpu")
    loop.reconcile()
    job = kube.objects[("batch/v1", "Job", "ml", "digits-g2")]
    job["metadata"]["uid"] = "job-uid"
    job["status"] = {"active": 1, "conditions": [{"type": "Suspended", "status": "True"}]}
    kube.objects[("kueue.x-k8s.io/v1beta2", "Workload", "ml", "job-digits-g2")] = {
        "metadata": {"name": "job-digits-g2", "namespace": "ml", "labels": {"kueue.x-k8s.io/job-uid": "job-uid"}},
        "spec": {"active": True},
        "status": {"conditions": [{"type": "Evicted", "status": "True", "reason": "Preempted", "message": "..."}]},
    }
    kube.add_pod("digits-g2", "Running")
    pod = kube.objects[("v1", "Pod", "ml", "digits-g2-0-abcde")]
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:01:00Z"
    pod["status"]["containerStatuses"][0]["state"] = {"running": {}}
    lists = 0
    listed = kube.list_objects

    def kubelet_reports_on_the_third_look(api_version: str, kind: str, namespace: str, selector: dict[str, str]) -> Any:
        nonlocal lists
        lists += kind == "Pod"
        if kind == "Pod" and lists == 3:
            pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                "exitCode": 143, "message": '{"reason":"Stopped","error":"stopped","checkpoint":{"step":700}}'}}}]}
        return listed(api_version, kind, namespace, selector)

    monkeypatch.setattr(kube, "list_objects", kubelet_reports_on_the_third_look)
    outcome = loop.reconcile()
    assert lists == 3
    assert outcome.status["checkpoint"]["step"] == 700


def test_the_wait_for_a_stopping_worker_is_bounded(
    kube: FakeKube, loop: TrainingLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconcile, "STOP_REPORT_WAIT", 0.05)
    monkeypatch.setattr(reconcile, "STOP_REPORT_POLL", 0.01)
    job = {"metadata": {"name": "digits-g2", "namespace": "ml", "uid": "job-uid"}}
    owner = [{"kind": "Job", "name": "digits-g2", "uid": "job-uid", "controller": True}]
    running = [{"metadata": {"deletionTimestamp": "2024-01-01T00:01:00Z", "ownerReferences": owner},
                "status": {"phase": "Running"}}]  # fmt: skip
    assert reconcile._stop_reports(kube, job, "digits-g2", running) == []  # listed again: the fake has none
    monkeypatch.setattr(kube, "list_objects", lambda *args: running)
    assert reconcile._stop_reports(kube, job, "digits-g2", running) == running  # gave up after the deadline


def _gpu_node(name: str, cpu: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"tandem.dev/pool": "gpu"}},
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": cpu, "memory": "32Gi", "nvidia.com/gpu": "4", "pods": "110"},
        },
    }


def test_a_gang_without_a_queue_waits_suspended_as_one_until_the_pool_fits_all_of_it(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    kube.node_list = [_gpu_node("gpu-0", cpu="2")]
    loop.change_spec(workers=2)
    outcome = loop.reconcile()
    job = kube.objects[("batch/v1", "Job", "ml", "digits-g2")]
    assert job["spec"]["suspend"] is True
    assert outcome.status["phase"] == "Queued"
    running = _condition(outcome, "Running")
    assert running["reason"] == "WaitingForCapacity"
    assert "all 2 workers of cpu 2, memory 4Gi, nvidia.com/gpu 1 each: only 1 fit now" in running["message"]
    assert outcome.recheck_after == reconcile.GANG_RECHECK

    kube.node_list.append(_gpu_node("gpu-1", cpu="2"))
    outcome = loop.reconcile()
    assert kube.objects[("batch/v1", "Job", "ml", "digits-g2")]["spec"]["suspend"] is False
    assert outcome.recheck_after is None


def test_a_single_worker_is_left_to_the_scheduler(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    assert kube.objects[("batch/v1", "Job", "ml", "digits-g1")]["spec"]["suspend"] is False
    assert ("live_pods",) not in kube.calls


def test_a_model_published_by_a_worker_that_then_failed_is_recorded_and_its_job_stopped(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    """Exit 139 in teardown after the model was stored: the Job would retry worker 0, which could only wait
    for peers that finished, or train again."""
    loop.reconcile()
    kube.add_pod("digits-g1", "Failed", message=json.dumps(ARTIFACT), seconds=30, exit_code=139)
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Succeeded"
    assert outcome.status["model"]["uri"] == ARTIFACT["uri"]
    message = _condition(outcome, "Succeeded")["message"]
    assert "worker 0 published the model and then failed (exit code 139): the Job is stopped" in message
    assert ("delete", "Job", "digits-g1") in kube.calls
    loop.reconcile()
    assert kube.writes("create", "Job") == [("create", "Job", "digits-g1")]  # never run again


def test_a_worker_that_fails_after_its_peer_finished_fails_the_run_at_once_as_a_broken_gang(
    kube: FakeKube, loop: TrainingLoop
) -> None:
    kube.node_list = [_gpu_node("gpu-0", cpu="8")]
    loop.change_spec(workers=2)
    loop.reconcile()
    kube.add_pod("digits-g2", "Succeeded", seconds=30, index=1)
    kube.add_pod("digits-g2", "Failed", message='{"reason":"InternalError","error":"boom"}', seconds=40,
                 exit_code=1)  # fmt: skip
    kube.add_pod("digits-g2", "Pending", attempt="retry")
    kube.set_status("batch/v1", "Job", "digits-g2", {"active": 1, "succeeded": 1, "failed": 1})
    outcome = loop.reconcile()
    assert outcome.status["phase"] == "Failed"
    failed = _condition(outcome, "Failed")
    assert failed["reason"] == "GangBroken"
    assert "worker(s) 1 finished and left the group, then worker 0 failed (exit code 1)" in failed["message"]
    assert ("delete", "Job", "digits-g2") in kube.calls


def test_a_pod_the_job_did_not_make_publishes_nothing(kube: FakeKube, loop: TrainingLoop) -> None:
    loop.reconcile()
    kube.add_pod("digits-g1", "Succeeded", message=json.dumps(ARTIFACT), seconds=30)
    forged = kube.objects[("v1", "Pod", "ml", "digits-g1-0-abcde")]
    forged["metadata"]["ownerReferences"] = []
    kube.set_status("batch/v1", "Job", "digits-g1", {"active": 1})
    outcome = loop.reconcile()
    assert outcome.status["phase"] != "Succeeded"
    assert outcome.status.get("model") is None
