from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec
from tandem.api.trainingjob import TrainingJobSpec
from tandem.decide.placement import (
    PlacementError,
    pod_placement,
    resource_requirements,
    serving_accelerators,
    serving_pool,
    training_pool,
)

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}


def _training(body: dict[str, Any], **fields: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({**body, **fields})


def _serving(body: dict[str, Any], **fields: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({**body, **fields})


def _refusal(decide: Callable[..., object], *args: Any) -> PlacementError:
    """The PlacementError `decide(*args)` raises: its reason is what the resource's condition will say, so each
    refusal test names the one it expects. A placement returned instead fails the test."""
    with pytest.raises(PlacementError) as raised:
        decide(*args)
    return raised.value


def test_training_job_defaults_to_the_training_role_pool(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert training_pool(_training(training_spec_body), pools) == "gpu"


def test_training_job_without_a_training_pool_is_refused(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert _refusal(training_pool, _training(training_spec_body), {"cpu": pools["cpu"]}).reason == "NoTrainingPool"


def test_training_job_runs_on_its_named_pool(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    other = pools["gpu"].model_copy(update={"role": None})
    assert training_pool(_training(training_spec_body, pool="a100"), {**pools, "a100": other}) == "a100"


def test_unknown_pool_is_pool_not_found_naming_the_pool(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    refusal = _refusal(training_pool, _training(training_spec_body, pool="tpu"), pools)
    assert refusal.reason == "PoolNotFound"
    assert "'tpu'" in refusal.message
    assert "cpu, gpu" in refusal.message


def test_gpus_on_a_cpu_pool_are_refused(training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]) -> None:
    spec = _training(training_spec_body, pool="cpu", resources={"gpus": 1})
    assert _refusal(training_pool, spec, pools).reason == "PoolHasNoAccelerator"


def test_zero_gpus_on_a_gpu_pool_are_refused(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    spec = _training(training_spec_body, resources={"gpus": 0})
    assert _refusal(training_pool, spec, pools).reason == "AcceleratorNotRequested"


def test_cpu_only_training_job_may_run_on_a_named_cpu_pool(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert training_pool(_training(training_spec_body, pool="cpu", resources={"gpus": 0}), pools) == "cpu"


def test_several_training_pools_pick_the_alphabetically_first(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert training_pool(_training(training_spec_body), {**pools, "a100": pools["gpu"]}) == "a100"


def test_inference_service_defaults_to_the_cpu_serving_pool(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    name, reason = serving_pool(_serving(serving_spec_body), pools)
    assert name == "cpu"
    assert "serving pool cpu" in reason


def test_cpu_serving_prefers_a_serving_role_pool_over_other_cpu_pools(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    batch = pools["cpu"].model_copy(update={"role": None})
    assert serving_pool(_serving(serving_spec_body), {**pools, "a-batch": batch})[0] == "cpu"


def test_cpu_serving_pods_never_get_gpu_tolerations(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    name, _ = serving_pool(_serving(serving_spec_body), pools)
    placed = pod_placement(name, pools[name]).apply({"containers": []})
    assert "tolerations" not in placed
    assert placed["nodeSelector"] == {"tandem.dev/pool": "cpu"}


def test_gpu_placement_picks_the_accelerator_pool_with_at_least_one_accelerator(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    spec = _serving(serving_spec_body, placement="gpu")
    name, _ = serving_pool(spec, pools)
    assert name == "gpu"
    assert serving_accelerators(spec, pools[name]) == 1


def test_gpu_placement_keeps_a_larger_accelerator_request(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    spec = _serving(serving_spec_body, placement="gpu", resources={"gpus": 2})
    assert serving_accelerators(spec, pools["gpu"]) == 2


def test_gpu_placement_without_an_accelerator_pool_is_refused(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    spec = _serving(serving_spec_body, placement="gpu")
    assert _refusal(serving_pool, spec, {"cpu": pools["cpu"]}).reason == "NoMatchingPool"


def test_auto_placement_is_left_to_profiles(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    spec = _serving(serving_spec_body, placement="auto", slo={"p99LatencyMs": 50, "targetRequestsPerSecond": 100})
    assert _refusal(serving_pool, spec, pools).reason == "NeedsProfile"


def test_explicit_serving_pool_overrides_placement(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    name, reason = serving_pool(_serving(serving_spec_body, pool="gpu", resources={"gpus": 1}), pools)
    assert name == "gpu"
    assert "spec.pool" in reason


def test_explicit_unknown_serving_pool_is_pool_not_found(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert _refusal(serving_pool, _serving(serving_spec_body, pool="nope"), pools).reason == "PoolNotFound"


def test_serving_on_a_cpu_pool_requests_no_accelerators(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert serving_accelerators(_serving(serving_spec_body), pools["cpu"]) == 0


def test_gpu_pool_pods_get_the_pool_tolerations_and_selector(pools: dict[str, ComputePoolSpec]) -> None:
    placed = pod_placement("gpu", pools["gpu"]).apply({"containers": []})
    assert placed["tolerations"] == [GPU_TOLERATION]
    assert placed["nodeSelector"] == {"tandem.dev/pool": "gpu"}
    assert placed["containers"] == []


def test_pool_affinity_is_copied_onto_pods(pools: dict[str, ComputePoolSpec]) -> None:
    affinity: dict[str, Any] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    pool = pools["cpu"].model_copy(update={"affinity": affinity})
    assert pod_placement("cpu", pool).apply({})["affinity"] == affinity


def test_resource_requests_equal_limits_and_name_the_accelerator(pools: dict[str, ComputePoolSpec]) -> None:
    resources = resource_requirements("4", "8Gi", 2, pools["gpu"])
    assert resources["requests"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"}
    assert resources["limits"] == resources["requests"]


def test_resource_requests_without_accelerators_name_none(pools: dict[str, ComputePoolSpec]) -> None:
    resources = resource_requirements(2, "1Gi", 0, pools["cpu"])
    assert resources["requests"] == {"cpu": "2", "memory": "1Gi"}
    assert resources["limits"] == resources["requests"]
