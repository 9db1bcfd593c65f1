"""Bad input catalogue: malformed resources refused by the API server, semantically invalid ones reported.

Malformed (schema, CEL, types): refused at create time with a 4xx that names the field. These add to the 22
cases of tests/integration/test_api_validation.py (which this file does not repeat): together more than 25.

Semantically invalid (valid to the schema, impossible to run: an unknown pool, GPUs asked of a CPU pool, a
model source that does not exist or failed): the operator turns each into a False condition naming the
reason and a Warning event, and keeps running (the operator fixture asserts it exits cleanly).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.cluster import wait_until
from support.tandem import artifact_message, body, condition, create, events_for, get
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB, Resource

pytestmark = pytest.mark.cluster

TRAINING: dict[str, Any] = {"model": {"output": "s3://models/digits"}, "resources": {"gpus": 1}}
SERVING: dict[str, Any] = {"model": {"uri": "s3://models/digits/model.onnx"}}
POOL: dict[str, Any] = {"nodeSelector": {"tandem.dev/pool": "cpu"}}
SHA = "a" * 64


def _with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of spec with the dotted path set."""
    changed = copy.deepcopy(spec)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return changed


MALFORMED: list[tuple[str, Resource, dict[str, Any], str]] = [
    ("too many workers", TRAINING_JOB, _with(TRAINING, "workers", 129), "spec.workers"),
    ("workers not an integer", TRAINING_JOB, _with(TRAINING, "workers", "two"), "spec.workers"),
    ("negative backoff limit", TRAINING_JOB, _with(TRAINING, "backoffLimit", -1), "spec.backoffLimit"),
    ("zero deadline", TRAINING_JOB, _with(TRAINING, "activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds"),
    ("too many gpus per worker", TRAINING_JOB, _with(TRAINING, "resources.gpus", 17), "spec.resources.gpus"),
    ("memory not a quantity", TRAINING_JOB, _with(TRAINING, "resources.memory", "4 GB"), "spec.resources.memory"),
    ("ftp checkpoint", TRAINING_JOB, _with(TRAINING, "checkpoint", {"uri": "ftp://x/y"}), "spec.checkpoint.uri"),
    (
        "unknown export format",
        TRAINING_JOB,
        _with(TRAINING, "model.export.format", "torchscript"),
        "spec.model.export.format",
    ),
    (
        "zero sample dimension",
        TRAINING_JOB,
        _with(TRAINING, "model.export.sampleInputShape", [0]),
        "spec.model.export.sampleInputShape",
    ),
    ("env without a name", TRAINING_JOB, _with(TRAINING, "env", [{"value": "1"}]), "spec.env[0].name"),
    (
        "too many env vars",
        TRAINING_JOB,
        _with(TRAINING, "env", [{"name": f"V{i}", "value": "1"} for i in range(65)]),
        "spec.env",
    ),
    ("no spec", TRAINING_JOB, ..., "spec"),  # type: ignore[list-item]
    ("zero min replicas", INFERENCE_SERVICE, _with(SERVING, "replicas", {"min": 0, "max": 1}), "spec.replicas.min"),
    ("zero threads", INFERENCE_SERVICE, _with(SERVING, "runtime.threads", 0), "spec.runtime.threads"),
    (
        "batch delay over a second",
        INFERENCE_SERVICE,
        _with(SERVING, "runtime.maxBatchDelayMs", 5000),
        "spec.runtime.maxBatchDelayMs",
    ),
    (
        "utilisation over 100",
        INFERENCE_SERVICE,
        _with(SERVING, "autoscaling.targetCpuUtilization", 101),
        "spec.autoscaling.targetCpuUtilization",
    ),
    (
        "sha256 with fromTrainingJob",
        INFERENCE_SERVICE,
        {"model": {"fromTrainingJob": {"name": "digits"}, "sha256": SHA}},
        "spec.model.sha256",
    ),
    ("gs uri without path", INFERENCE_SERVICE, _with(SERVING, "model.uri", "gs://"), "spec.model.uri"),
    (
        "unknown toleration operator",
        COMPUTE_POOL,
        _with(POOL, "tolerations", [{"key": "k", "operator": "Maybe"}]),
        "spec.tolerations[0].operator",
    ),
    (
        "price not a number",
        COMPUTE_POOL,
        _with(POOL, "price", {"acceleratorHour": "cheap"}),
        "spec.price.acceleratorHour",
    ),
]


@pytest.mark.parametrize(
    ("resource", "spec", "field"),
    [pytest.param(resource, spec, field, id=case) for case, resource, spec, field in MALFORMED],
)
def test_malformed_resource_is_refused_naming_the_field(
    tandem_api: k8s.ApiClient, namespace: str, resource: Resource, spec: Any, field: str
) -> None:
    """Expected: the API server refuses the create (400 strict decoding, 422 invalid) naming the field."""
    obj = body(resource, "bad", {}) if spec is ... else body(resource, "bad", spec)
    if spec is ...:
        del obj["spec"]
    with pytest.raises(ApiException) as refused:
        create(tandem_api, resource, namespace, obj)
    assert refused.value.status in (400, 422), refused.value.body
    assert field in str(refused.value.body), refused.value.body


def _training(**extra: Any) -> dict[str, Any]:
    return {**copy.deepcopy(TRAINING), **extra}


def _failing_training() -> dict[str, Any]:
    annotations = {
        "tandem.dev/fake-duration": "1s",
        "tandem.dev/fake-exit-code": "2",
        "tandem.dev/fake-termination-message": '{"reason": "Crash", "error": "boom"}',
    }
    return _training(backoffLimit=0, podMetadata={"annotations": annotations})


# (name, resource, spec, condition type, reason)
SEMANTIC: list[tuple[str, Resource, dict[str, Any], str, str]] = [
    ("tj-unknown-pool", TRAINING_JOB, _training(pool="nowhere"), "PoolResolved", "PoolNotFound"),
    ("tj-gpus-on-cpu-pool", TRAINING_JOB, _training(pool="cpu"), "PoolResolved", "PoolHasNoAccelerator"),
    (
        "tj-no-gpus-on-gpu-pool",
        TRAINING_JOB,
        _training(pool="gpu", resources={"gpus": 0}),
        "PoolResolved",
        "AcceleratorNotRequested",
    ),
    (
        "tj-no-gpus-default-pool",
        TRAINING_JOB,
        _training(resources={"gpus": 0}),
        "PoolResolved",
        "AcceleratorNotRequested",
    ),
    (
        "is-missing-tj",
        INFERENCE_SERVICE,
        {"model": {"fromTrainingJob": {"name": "absent"}}},
        "ModelResolved",
        "TrainingJobNotFound",
    ),
    (
        "is-failed-tj",
        INFERENCE_SERVICE,
        {"model": {"fromTrainingJob": {"name": "tj-fails"}}},
        "ModelResolved",
        "TrainingFailed",
    ),
    (
        "is-tj-that-cannot-run",
        INFERENCE_SERVICE,
        {"model": {"fromTrainingJob": {"name": "tj-unknown-pool"}}},
        "ModelResolved",
        "WaitingForModel",
    ),
    ("is-unknown-pool", INFERENCE_SERVICE, {**SERVING, "pool": "nowhere"}, "PlacementDecided", "PoolNotFound"),
    (
        "is-gpu-pool-without-gpus",
        INFERENCE_SERVICE,
        {**SERVING, "pool": "gpu"},
        "PlacementDecided",
        "AcceleratorNotRequested",
    ),
    (
        "is-gpus-on-cpu-pool",
        INFERENCE_SERVICE,
        {**SERVING, "pool": "cpu", "resources": {"gpus": 1}},
        "PlacementDecided",
        "PoolHasNoAccelerator",
    ),
    (
        "is-gpu-placement-on-cpu-pool",
        INFERENCE_SERVICE,
        {**SERVING, "placement": "gpu", "pool": "cpu", "resources": {"gpus": 2}},
        "PlacementDecided",
        "PoolHasNoAccelerator",
    ),
]


def test_semantically_invalid_resources_become_false_conditions_and_warnings(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """Expected: every resource gets its named condition False with the stated reason, a Warning event with
    that reason, no child Job or Deployment, and the operator keeps reconciling (a valid service still
    becomes Ready afterwards), logs no error (before the fix, events found by the periodic resync, such as
    TrainingFailed here, raised LookupError in kopf.event and were lost) and stops cleanly."""
    assert len(SEMANTIC) >= 10
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "tj-fails", _failing_training()))
    for name, resource, spec, _, _ in SEMANTIC:
        create(tandem_api, resource, namespace, body(resource, name, spec))

    seen: dict[str, Any] = {}
    for name, resource, _, kind, reason in SEMANTIC:

        def reported(name: str = name, resource: Resource = resource, kind: str = kind, reason: str = reason) -> Any:
            # A source TrainingJob that fails goes through WaitingForModel first: wait for the final reason.
            seen[name] = condition(get(tandem_api, resource, namespace, name), kind)
            found = seen[name]
            return found if found and found["status"] == "False" and found["reason"] == reason else None

        try:
            found = wait_until(reported, timeout=90, interval=0.5, what=f"{name}: {kind} False {reason}")
        except TimeoutError as error:
            raise AssertionError(f"{name}: last {kind} condition {seen.get(name)}") from error
        assert found["message"], name
        try:
            wait_until(
                lambda name=name, reason=reason: any(  # type: ignore[misc]
                    e.type == "Warning" and e.reason == reason for e in events_for(tandem_api, namespace, name)
                ),
                timeout=30,
                what=f"{name}: Warning {reason}",
            )
        except TimeoutError as error:
            posted = [(e.type, e.reason, e.message) for e in events_for(tandem_api, namespace, name)]
            raise AssertionError(f"{name}: no Warning {reason}; events {posted}") from error

    apps, batch = k8s.AppsV1Api(tandem_api), k8s.BatchV1Api(tandem_api)
    assert not apps.list_namespaced_deployment(namespace).items
    assert [job.metadata.name for job in batch.list_namespaced_job(namespace).items] == ["tj-fails-g1"]

    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "still-works", SERVING))
    wait_until(
        lambda: (
            (get(tandem_api, INFERENCE_SERVICE, namespace, "still-works").get("status") or {}).get("phase") == "Ready"
        ),
        timeout=90,
        what="a valid service Ready after the invalid ones",
    )
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("tandem")]
    assert not unexpected, [r.getMessage() for r in unexpected]


def test_artifact_message_helper_is_well_formed() -> None:
    """Guard for the helper the fault tests rely on: the fake termination message parses as an artifact."""
    assert '"sha256": "' + SHA in artifact_message("s3://m/model.onnx", SHA)
