"""Profile Jobs for real: `tandem profile` runs in the server image on the real CPU and "GPU" nodes.

The operator's own profile Job (tandem.build.profiling) for a tiny ONNX model on the shared volume runs in
real containers on real-cpu and real-gpu; the operator's reader (tandem.profiling.observed) takes the
figures from the containers' termination messages. This machine has no GPU: the real-gpu profile asked
onnxruntime for CUDA, got the CPU, says so, and the decision's candidate for that pool is excluded with that
note instead of being priced as GPU figures. (The full auto flow is in tests/integration/test_auto_placement.py on kwok,
where serving pods need no real image.)
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e.conftest import ModelVolume
from support.cluster import wait_until
from support.digits import CPU_POOL, GPU_POOL, real_pools
from support.models import tiny_model
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel, Slo
from tandem.build import profiling as profiling_build
from tandem.config import OperatorConfig
from tandem.costing import decide, replica_rates
from tandem.placement import pod_placement
from tandem.profiling import observed

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.timeout(300)]


def run_profile(
    api: k8s.ApiClient, namespace: str, pool_name: str, spec: InferenceServiceSpec, model: ServedModel
) -> observed.Observation:
    pool = ComputePoolSpec.model_validate(real_pools()[pool_name])
    config = OperatorConfig.from_env()
    target = profiling_build.target(
        "tiny", namespace, "none", spec, model, pod_placement(pool_name, pool), pool, config
    )
    job = profiling_build.profile_job(target, config)
    job["metadata"].pop("ownerReferences")
    batch = k8s.BatchV1Api(api)
    batch.create_namespaced_job(namespace, job)

    def finished() -> dict[str, Any] | None:
        found: dict[str, Any] = api.sanitize_for_serialization(batch.read_namespaced_job(target.job_name, namespace))
        return found if observed.job_finished(found) else None

    finished_job = wait_until(finished, timeout=240, interval=1.0, what=f"profile Job on {pool_name} finished")
    pods = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={target.job_name}").items
    return observed.observe(finished_job, [api.sanitize_for_serialization(pod) for pod in pods], model.sha256)


def test_profile_jobs_really_run_and_a_gpu_pool_without_a_gpu_is_reported(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume
) -> None:
    data = tiny_model()
    sha256 = hashlib.sha256(data).hexdigest()
    (models.path / "tiny.onnx").write_bytes(data)
    uri = f"pvc://{models.claim}/tiny.onnx"
    spec = InferenceServiceSpec.model_validate(
        {
            "model": {"uri": uri, "sha256": sha256},
            "placement": "auto",
            "slo": {"p99LatencyMs": 50, "targetRequestsPerSecond": 100},
            "resources": {"cpu": "1", "memory": "1Gi"},
            "runtime": {"threads": 1},
            "env": [
                {"name": "TANDEM_PROFILE_LATENCY_SECONDS", "value": "0.5"},
                {"name": "TANDEM_PROFILE_THROUGHPUT_SECONDS", "value": "0.5"},
            ],
        }
    )
    model = ServedModel(uri=uri, sha256=sha256)

    on_cpu = run_profile(kube, namespace, CPU_POOL, spec, model)
    assert on_cpu.state == observed.ProfileState.SUCCEEDED, on_cpu.message
    assert on_cpu.result is not None
    assert on_cpu.result.sha256 == sha256 and on_cpu.result.device == "cpu"
    assert on_cpu.result.threads == 1  # spec.runtime.threads reached the profiler as it reaches the server
    assert 0 < on_cpu.result.p99_latency_ms < 50 and on_cpu.result.throughput_per_replica > 100

    on_gpu = run_profile(kube, namespace, GPU_POOL, spec, model)
    assert on_gpu.state == observed.ProfileState.SUCCEEDED, on_gpu.message
    assert on_gpu.result is not None
    assert (on_gpu.result.requested_device, on_gpu.result.device) == ("cuda", "cpu")

    pools = {name: ComputePoolSpec.model_validate(body) for name, body in real_pools().items()}
    candidates = [
        observed.candidate(CPU_POOL, False, replica_rates(1, 0, pools[CPU_POOL]), on_cpu),
        observed.candidate(GPU_POOL, True, replica_rates(1, 1, pools[GPU_POOL]), on_gpu),
    ]
    decision = decide(Slo(p99_latency_ms=50, target_requests_per_second=100), candidates)
    assert decision.pool == CPU_POOL and decision.meets_slo
    gpu_estimate = decision.estimates[1]
    assert not gpu_estimate.measured and gpu_estimate.note is not None
    assert gpu_estimate.note.startswith("profile ran on CPU, not on the pool's accelerator")
