"""The API server itself refuses malformed Tandem resources, with a message that names the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from support.tandem import body, create, patch_spec
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB, Resource

GOOD_TRAINING: dict[str, Any] = {"model": {"output": "pvc://models/digits"}, "resources": {"gpus": 1}}
GOOD_SERVING: dict[str, Any] = {"model": {"fromTrainingJob": {"name": "digits"}}}
GOOD_POOL: dict[str, Any] = {"nodeSelector": {"tandem.dev/pool": "cpu"}}
SCRIPT_VOLUME: dict[str, Any] = {"name": "code", "configMap": {"name": "my-script"}}
SCRIPT_MOUNT: dict[str, Any] = {"name": "code", "mountPath": "/app", "readOnly": True}


def _with(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of spec with the dotted path set (or removed when value is ...)."""
    changed = copy.deepcopy(spec)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return changed


MALFORMED: list[tuple[str, Resource, dict[str, Any], str]] = [
    ("zero workers", TRAINING_JOB, _with(GOOD_TRAINING, "workers", 0), "spec.workers"),
    ("no model", TRAINING_JOB, _with(GOOD_TRAINING, "model", ...), "spec.model"),
    ("http output", TRAINING_JOB, _with(GOOD_TRAINING, "model.output", "http://x/y"), "spec.model.output"),
    ("negative gpus", TRAINING_JOB, _with(GOOD_TRAINING, "resources.gpus", -1), "spec.resources.gpus"),
    ("cpu not a quantity", TRAINING_JOB, _with(GOOD_TRAINING, "resources.cpu", "lots"), "spec.resources.cpu"),
    ("opset too old", TRAINING_JOB, _with(GOOD_TRAINING, "model.export.opset", 3), "spec.model.export.opset"),
    ("unknown field", TRAINING_JOB, _with(GOOD_TRAINING, "wrokers", 2), "wrokers"),
    (
        "resume without uri",
        TRAINING_JOB,
        _with(GOOD_TRAINING, "checkpoint", {"resume": True}),
        "spec.checkpoint.uri",
    ),
    (
        "env with value and valueFrom",
        TRAINING_JOB,
        _with(
            GOOD_TRAINING,
            "env",
            [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        ),
        "spec.env[0]",
    ),
    ("pool not a DNS name", TRAINING_JOB, _with(GOOD_TRAINING, "pool", "GPU Pool"), "spec.pool"),
    ("gs output", TRAINING_JOB, _with(GOOD_TRAINING, "model.output", "gs://b/m"), "gs:// is not supported"),
    (
        "mount of an undeclared volume",
        TRAINING_JOB,
        _with(GOOD_TRAINING, "volumeMounts", [SCRIPT_MOUNT]),
        "spec.volumeMounts: every mount must name a volume declared in spec.volumes",
    ),
    (
        "volume without a mount",
        TRAINING_JOB,
        _with(GOOD_TRAINING, "volumes", [SCRIPT_VOLUME]),
        "spec.volumes: every volume must be mounted",
    ),
    (
        "volume with two sources",
        TRAINING_JOB,
        {**GOOD_TRAINING, "volumes": [{**SCRIPT_VOLUME, "emptyDir": {}}], "volumeMounts": [SCRIPT_MOUNT]},
        "a volume needs exactly one of",
    ),
    (
        "mount over the claims root",
        TRAINING_JOB,
        {**GOOD_TRAINING, "volumes": [SCRIPT_VOLUME], "volumeMounts": [{"name": "code", "mountPath": "/mnt/pvc"}]},
        "spec.volumeMounts[0].mountPath",
    ),
    (
        "service account not a DNS name",
        TRAINING_JOB,
        _with(GOOD_TRAINING, "serviceAccountName", "Trainer"),
        "spec.serviceAccountName",
    ),
    ("dataset on ftp", TRAINING_JOB, _with(GOOD_TRAINING, "dataset", {"uri": "ftp://h/d"}), "spec.dataset.uri"),
    ("gs model", INFERENCE_SERVICE, {"model": {"uri": "gs://b/m.onnx"}}, "gs:// is not supported"),
    (
        "pull secret without a name",
        INFERENCE_SERVICE,
        _with(GOOD_SERVING, "imagePullSecrets", [{}]),
        "spec.imagePullSecrets[0].name",
    ),
    (
        "uri and fromTrainingJob",
        INFERENCE_SERVICE,
        _with(GOOD_SERVING, "model.uri", "s3://bucket/model.onnx"),
        "spec.model",
    ),
    ("no model source", INFERENCE_SERVICE, {"model": {}}, "spec.model"),
    ("max below min", INFERENCE_SERVICE, _with(GOOD_SERVING, "replicas", {"min": 3, "max": 2}), "spec.replicas.max"),
    ("auto without slo", INFERENCE_SERVICE, _with(GOOD_SERVING, "placement", "auto"), "spec.slo"),
    ("unknown placement", INFERENCE_SERVICE, _with(GOOD_SERVING, "placement", "tpu"), "spec.placement"),
    (
        "malformed sha256",
        INFERENCE_SERVICE,
        {"model": {"uri": "s3://b/m.onnx", "sha256": "abc"}},
        "spec.model.sha256",
    ),
    (
        "gpus on the cpu placement",
        INFERENCE_SERVICE,
        _with(GOOD_SERVING, "resources.gpus", 1),
        "spec.resources.gpus",
    ),
    ("zero latency slo", INFERENCE_SERVICE, _with(
        GOOD_SERVING, "slo", {"p99LatencyMs": 0, "targetRequestsPerSecond": 10}
    ), "spec.slo.p99LatencyMs"),
    ("empty node selector", COMPUTE_POOL, {"nodeSelector": {}}, "spec.nodeSelector"),
    ("accelerator without domain", COMPUTE_POOL, _with(GOOD_POOL, "accelerator", "gpu"), "spec.accelerator"),
    ("negative price", COMPUTE_POOL, _with(GOOD_POOL, "price", {"coreHour": -1}), "spec.price.coreHour"),
    ("unknown role", COMPUTE_POOL, _with(GOOD_POOL, "role", "batch"), "spec.role"),
]


@pytest.mark.parametrize(
    ("resource", "spec", "field"),
    [pytest.param(resource, spec, field, id=case) for case, resource, spec, field in MALFORMED],
)
def test_malformed_resource_is_refused_naming_the_field(
    tandem_api: k8s.ApiClient, namespace: str, resource: Resource, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(ApiException) as refused:
        create(tandem_api, resource, namespace, body(resource, "bad", spec))
    assert refused.value.status in (400, 422), refused.value.body  # 400: strict decoding of unknown fields
    assert field in str(refused.value.body), refused.value.body


@pytest.mark.parametrize("resource", [TRAINING_JOB, INFERENCE_SERVICE], ids=lambda r: r.kind)
def test_names_that_cannot_name_a_service_are_refused(
    tandem_api: k8s.ApiClient, namespace: str, resource: Resource
) -> None:
    spec = GOOD_TRAINING if resource is TRAINING_JOB else GOOD_SERVING
    with pytest.raises(ApiException) as refused:
        create(tandem_api, resource, namespace, body(resource, "1digits", spec))
    assert refused.value.status == 422
    assert "DNS-1035" in str(refused.value.body)


def test_training_job_queue_cannot_change(tandem_api: k8s.ApiClient, namespace: str) -> None:
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "queued", {**GOOD_TRAINING, "queue": "team-a"}))
    with pytest.raises(ApiException) as refused:
        patch_spec(tandem_api, TRAINING_JOB, namespace, "queued", {"queue": "team-b"})
    assert refused.value.status == 422
    assert "spec.queue is immutable" in str(refused.value.body)


def test_valid_resources_are_accepted_with_defaults(tandem_api: k8s.ApiClient, namespace: str) -> None:
    created = create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "ok", GOOD_TRAINING))
    assert created["spec"]["workers"] == 1
    assert created["spec"]["backoffLimit"] == 3
    served = create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "ok", GOOD_SERVING))
    assert served["spec"]["placement"] == "cpu"


def test_identity_volumes_and_a_dataset_are_accepted(tandem_api: k8s.ApiClient, namespace: str) -> None:
    spec = {
        **GOOD_TRAINING,
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "registry"}],
        "volumes": [SCRIPT_VOLUME],
        "volumeMounts": [SCRIPT_MOUNT],
        "dataset": {"uri": "pvc://datasets/digits.csv"},
    }
    created = create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "byo", spec))
    assert created["spec"]["volumes"] == [SCRIPT_VOLUME]
    assert created["spec"]["serviceAccountName"] == "trainer"


def test_a_served_model_may_come_from_an_https_url(tandem_api: k8s.ApiClient, namespace: str) -> None:
    spec = {"model": {"uri": "https://models.example.com/digits.onnx"}, "serviceAccountName": "reader"}
    created = create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "web", spec))
    assert created["spec"]["model"]["uri"] == "https://models.example.com/digits.onnx"
