"""A replica on an accelerator pool is a GPU replica in everything; a CPU replica in nothing.

The GPU replica gets the CUDA server image, the pool's accelerator request and tolerations, and dynamic
batching by default; the CPU replica gets none of them, whatever the GPU settings say.
"""

from __future__ import annotations

from typing import Any

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.config import OperatorConfig
from tandem.decide.placement import pod_placement, serving_accelerators
from tandem.render.serving import GPU_MAX_BATCH_SIZE, Serving, deployment


def replica(body: dict[str, Any], pools: dict[str, ComputePoolSpec], pool: str, **fields: Any) -> dict[str, Any]:
    spec = InferenceServiceSpec.model_validate({**body, **fields})
    serving = Serving(
        name="digits", namespace="ml", uid="uid", spec=spec, model=ServedModel(uri="s3://m/model.onnx"),
        placement=pod_placement(pool, pools[pool]), pool=pools[pool],
        accelerators=serving_accelerators(spec, pools[pool]), replicas=spec.replicas,
    )
    pod: dict[str, Any] = deployment(serving, OperatorConfig(server_image="cpu:1", server_gpu_image="gpu:1"))[
        "spec"
    ]["template"]["spec"]
    return pod


def env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in pod["containers"][0]["env"]}


def test_a_gpu_replica_gets_the_gpu_image_the_accelerator_and_the_pools_tolerations(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    pod = replica(serving_spec_body, pools, "gpu")
    server = pod["containers"][0]
    assert server["image"] == "gpu:1"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == [toleration.to_wire() for toleration in pools["gpu"].tolerations]
    assert env(pod)["TANDEM_EXECUTION_PROVIDER"] == "auto"  # the server finds the GPU it was given


def test_a_gpu_replica_batches_by_default_and_keeps_an_explicit_batch_size(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert env(replica(serving_spec_body, pools, "gpu"))["TANDEM_MAX_BATCH_SIZE"] == str(GPU_MAX_BATCH_SIZE)
    pinned = replica(serving_spec_body, pools, "gpu", runtime={"maxBatchSize": 1})
    assert env(pinned)["TANDEM_MAX_BATCH_SIZE"] == "1"


def test_a_cpu_replica_gets_no_gpu_image_request_toleration_or_batching(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    pod = replica(serving_spec_body, pools, "cpu", runtime={"executionProvider": "cpu"})
    server = pod["containers"][0]
    assert server["image"] == "cpu:1"
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    assert "tolerations" not in pod
    assert (env(pod)["TANDEM_MAX_BATCH_SIZE"], env(pod)["TANDEM_EXECUTION_PROVIDER"]) == ("1", "cpu")


def test_an_image_named_in_the_spec_wins_on_either_pool(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    for pool in ("cpu", "gpu"):
        assert replica(serving_spec_body, pools, pool, image="mine:2")["containers"][0]["image"] == "mine:2"
