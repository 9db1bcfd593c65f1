"""Identity, pull secrets, volumes and datasets: what a spec may borrow from its namespace, checked on parse."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tandem.api.crdgen import openapi_schema
from tandem.api.inferenceservice import InferenceServiceSpec, ModelSource
from tandem.api.trainingjob import TrainingJobSpec

SCRIPT_VOLUME = {"name": "code", "configMap": {"name": "my-script"}}
SCRIPT_MOUNT = {"name": "code", "mountPath": "/app", "readOnly": True}


def _training(training_spec_body: dict[str, Any], **fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**training_spec_body, **fields})


def test_identity_and_pull_secrets_parse_and_go_back_to_the_wire(training_spec_body: dict[str, Any]) -> None:
    spec = _training(training_spec_body, serviceAccountName="trainer", imagePullSecrets=[{"name": "registry"}])
    assert spec.service_account_name == "trainer"
    wire = spec.to_wire()
    assert wire["serviceAccountName"] == "trainer"
    assert wire["imagePullSecrets"] == [{"name": "registry"}]


def test_a_mounted_volume_is_accepted(training_spec_body: dict[str, Any]) -> None:
    spec = _training(training_spec_body, volumes=[SCRIPT_VOLUME], volumeMounts=[SCRIPT_MOUNT])
    assert spec.volumes[0].config_map is not None and spec.volumes[0].config_map.name == "my-script"
    assert spec.volume_mounts[0].mount_path == "/app"


def test_a_mount_of_an_undeclared_volume_is_refused_naming_it(training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"spec.volumeMounts.*undeclared: code"):
        _training(training_spec_body, volumeMounts=[SCRIPT_MOUNT])


def test_a_volume_without_a_mount_is_refused_naming_it(training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"spec.volumes.*unmounted: code"):
        _training(training_spec_body, volumes=[SCRIPT_VOLUME])


@pytest.mark.parametrize(
    "volume",
    [
        {"name": "code"},
        {"name": "code", "configMap": {"name": "a"}, "secret": {"secretName": "b"}},
    ],
    ids=["no source", "two sources"],
)
def test_a_volume_needs_exactly_one_source(training_spec_body: dict[str, Any], volume: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        _training(training_spec_body, volumes=[volume], volumeMounts=[SCRIPT_MOUNT])


@pytest.mark.parametrize("name", ["tmp", "dshm", "pvc-models"])
def test_tandems_own_volume_names_are_refused(training_spec_body: dict[str, Any], name: str) -> None:
    volume = {"name": name, "emptyDir": {}}
    with pytest.raises(ValidationError, match="Tandem's own"):
        _training(training_spec_body, volumes=[volume], volumeMounts=[{"name": name, "mountPath": "/x"}])


@pytest.mark.parametrize("path", ["/tmp", "/dev/shm/", "/mnt/pvc", "/mnt/pvc/models"])
def test_mounts_over_tandems_own_paths_are_refused(training_spec_body: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError, match="Tandem's own"):
        _training(training_spec_body, volumes=[SCRIPT_VOLUME], volumeMounts=[{"name": "code", "mountPath": path}])


def test_mount_paths_are_absolute(training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="mountPath"):
        _training(training_spec_body, volumes=[SCRIPT_VOLUME], volumeMounts=[{"name": "code", "mountPath": "app"}])


def test_a_dataset_names_artifact_storage(training_spec_body: dict[str, Any]) -> None:
    assert _training(training_spec_body, dataset={"uri": "pvc://data/digits.csv"}).dataset is not None
    with pytest.raises(ValidationError, match="dataset"):
        _training(training_spec_body, dataset={"uri": "ftp://host/data"})


def test_the_schema_refuses_gs_by_name_rather_than_by_pattern_alone() -> None:
    output = openapi_schema(TrainingJobSpec)["properties"]["model"]["properties"]["output"]
    assert "gs://" not in output["pattern"]
    assert any("gs:// is not supported" in rule["message"] for rule in output["x-kubernetes-validations"])


def test_the_schema_keeps_volumes_and_mounts_as_maps_keyed_by_name_and_path() -> None:
    properties = openapi_schema(TrainingJobSpec)["properties"]
    assert properties["volumes"]["x-kubernetes-list-map-keys"] == ["name"]
    assert properties["volumeMounts"]["x-kubernetes-list-map-keys"] == ["mountPath"]


@pytest.mark.parametrize("uri", ["https://models.example.com/digits/model.onnx", "http://10.0.0.1:8000/m.onnx"])
def test_a_served_model_may_come_from_http(uri: str) -> None:
    assert ModelSource.model_validate({"uri": uri}).uri == uri


def test_a_served_model_may_not_come_from_gs() -> None:
    with pytest.raises(ValidationError, match="uri"):
        ModelSource.model_validate({"uri": "gs://bucket/model.onnx"})


def test_inference_service_takes_identity_and_pull_secrets(serving_spec_body: dict[str, Any]) -> None:
    spec = InferenceServiceSpec.model_validate(
        {**serving_spec_body, "serviceAccountName": "reader", "imagePullSecrets": [{"name": "registry"}]}
    )
    assert spec.service_account_name == "reader"
    assert [secret.name for secret in spec.image_pull_secrets] == ["registry"]
