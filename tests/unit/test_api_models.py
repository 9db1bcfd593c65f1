from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tandem.api.artifact import ModelArtifact, TrainingFailure
from tandem.api.common import EnvVar
from tandem.api.computepool import ComputePoolSpec, PoolRole
from tandem.api.inferenceservice import InferenceServiceSpec, ModelSource, Placement
from tandem.api.trainingjob import TrainingJobSpec, TrainingJobStatus, TrainingPhase


def test_training_spec_reads_camel_case_and_writes_it_back(training_spec_body: dict[str, Any]) -> None:
    body = {**training_spec_body, "backoffLimit": 5, "ttlSecondsAfterFinished": 60, "activeDeadlineSeconds": 600}
    spec = TrainingJobSpec.model_validate(body)
    assert (spec.backoff_limit, spec.ttl_seconds_after_finished, spec.active_deadline_seconds) == (5, 60, 600)
    wire = spec.to_wire()
    assert wire["backoffLimit"] == 5
    assert wire["ttlSecondsAfterFinished"] == 60
    assert "backoff_limit" not in wire


def test_training_spec_defaults(training_spec_body: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate(training_spec_body)
    assert spec.pool is None
    assert spec.workers == 1
    assert (spec.resources.gpus, spec.resources.cpu, spec.resources.memory) == (1, "2", "4Gi")
    assert spec.backoff_limit == 3
    assert spec.suspend is False
    assert spec.model.export.format == "onnx"


def test_to_wire_leaves_unset_optional_fields_out(training_spec_body: dict[str, Any]) -> None:
    wire = TrainingJobSpec.model_validate(training_spec_body).to_wire()
    assert "pool" not in wire
    assert "queue" not in wire
    assert "checkpoint" not in wire


def test_unknown_spec_fields_are_refused(training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="workerz"):
        TrainingJobSpec.model_validate({**training_spec_body, "workerz": 2})


def test_python_may_use_snake_case_names_but_the_wire_stays_camel_case(training_spec_body: dict[str, Any]) -> None:
    spec = TrainingJobSpec.model_validate({**training_spec_body, "backoff_limit": 7})
    assert spec.backoff_limit == 7
    assert "backoff_limit" not in spec.to_wire()


@pytest.mark.parametrize("uri", ["s3://bucket/models", "pvc://claim/path", "file:///tmp/out"])
def test_model_output_accepts_supported_storage_schemes(uri: str) -> None:
    assert TrainingJobSpec.model_validate({"model": {"output": uri}}).model.output == uri


@pytest.mark.parametrize("uri", ["http://host/model", "gs://bucket/m", "/tmp/models", "s3://", "S3://bucket/m"])
def test_model_output_refuses_other_uris(uri: str) -> None:
    with pytest.raises(ValidationError, match="output"):
        TrainingJobSpec.model_validate({"model": {"output": uri}})


@pytest.mark.parametrize("field", ["workers", "backoffLimit"])
def test_training_counts_have_minimums(field: str, training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainingJobSpec.model_validate({**training_spec_body, field: -1})


def test_zero_workers_are_refused(training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="workers"):
        TrainingJobSpec.model_validate({**training_spec_body, "workers": 0})


@pytest.mark.parametrize("name", ["GPU", "gpu_pool", "-gpu", "gpu-"])
def test_pool_names_must_be_dns_names(name: str, training_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="pool"):
        TrainingJobSpec.model_validate({**training_spec_body, "pool": name})


def test_dns_subdomain_pool_names_are_accepted(training_spec_body: dict[str, Any]) -> None:
    assert TrainingJobSpec.model_validate({**training_spec_body, "pool": "a100.east-1"}).pool == "a100.east-1"


@pytest.mark.parametrize("quantity", ["500m", "2", 2, "4Gi", "1.5", "1e3", "100M"])
def test_quantities_accept_integers_and_kubernetes_strings(quantity: str | int) -> None:
    spec = TrainingJobSpec.model_validate({"model": {"output": "s3://b/m"}, "resources": {"cpu": quantity}})
    assert spec.resources.cpu == quantity


def test_model_artifact_sha256_must_be_lowercase_hex() -> None:
    body: dict[str, Any] = {"uri": "s3://b/m/model.onnx", "sha256": "A" * 64, "sizeBytes": 10}
    with pytest.raises(ValidationError, match="sha256"):
        ModelArtifact.model_validate(body)
    assert ModelArtifact.model_validate({**body, "sha256": "a" * 64}).sha256 == "a" * 64


def test_model_artifact_sha256_must_be_64_characters() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ModelArtifact.model_validate({"uri": "s3://b/m", "sha256": "a" * 63, "sizeBytes": 10})


def test_model_source_sha256_pattern_is_enforced() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ModelSource.model_validate({"uri": "s3://b/m.onnx", "sha256": "not-a-digest"})


def test_model_source_reads_from_training_job_in_camel_case() -> None:
    source = ModelSource.model_validate({"fromTrainingJob": {"name": "digits"}})
    assert source.from_training_job is not None
    assert source.from_training_job.name == "digits"


def test_training_failure_reason_is_camel_case() -> None:
    assert TrainingFailure.model_validate({"reason": "NaNLoss", "error": "loss is nan"}).reason == "NaNLoss"
    with pytest.raises(ValidationError, match="reason"):
        TrainingFailure.model_validate({"reason": "nan loss", "error": "loss is nan"})


def test_inference_service_defaults_to_cpu_placement(serving_spec_body: dict[str, Any]) -> None:
    spec = InferenceServiceSpec.model_validate(serving_spec_body)
    assert spec.placement == Placement.CPU
    assert spec.resources.gpus == 0
    assert (spec.replicas.min, spec.replicas.max) == (1, 1)


def test_inference_service_refuses_unknown_placement(serving_spec_body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="placement"):
        InferenceServiceSpec.model_validate({**serving_spec_body, "placement": "tpu"})


def test_compute_pool_needs_a_node_selector() -> None:
    with pytest.raises(ValidationError, match="nodeSelector"):
        ComputePoolSpec.model_validate({"nodeSelector": {}})


def test_compute_pool_accelerator_is_an_extended_resource_name_or_empty() -> None:
    assert ComputePoolSpec.model_validate({"nodeSelector": {"a": "b"}}).accelerator == ""
    pool = ComputePoolSpec.model_validate({"nodeSelector": {"a": "b"}, "accelerator": "nvidia.com/gpu"})
    assert pool.accelerator == "nvidia.com/gpu"
    with pytest.raises(ValidationError, match="accelerator"):
        ComputePoolSpec.model_validate({"nodeSelector": {"a": "b"}, "accelerator": "gpu"})


def test_compute_pool_role_is_an_enum() -> None:
    assert ComputePoolSpec.model_validate({"nodeSelector": {"a": "b"}, "role": "serving"}).role == PoolRole.SERVING
    with pytest.raises(ValidationError, match="role"):
        ComputePoolSpec.model_validate({"nodeSelector": {"a": "b"}, "role": "batch"})


def test_env_var_names_follow_kubernetes_rules() -> None:
    assert EnvVar.model_validate({"name": "LOG_LEVEL", "value": "debug"}).value == "debug"
    with pytest.raises(ValidationError, match="name"):
        EnvVar.model_validate({"name": "1BAD", "value": "x"})


def test_env_var_value_from_secret_key_ref_round_trips() -> None:
    body = {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}
    assert EnvVar.model_validate(body).to_wire() == body


def test_training_status_serialises_conditions_and_phase_in_camel_case() -> None:
    status = TrainingJobStatus(phase=TrainingPhase.RUNNING, job_name="digits-g1", observed_generation=1)
    wire = status.to_wire()
    assert wire["phase"] == "Running"
    assert wire["jobName"] == "digits-g1"
    assert wire["observedGeneration"] == 1
    assert wire["usage"] == {"gpuSeconds": 0, "coreSeconds": 0, "estimatedCost": 0, "energyWh": 0}
