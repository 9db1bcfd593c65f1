"""Profile Jobs for real: the replica's server and `tandem profile` run in real containers on the real nodes.

The operator's own profile Job (tandem.render.profiling) for ONNX models on the shared volume runs on real-cpu
and real-gpu (the server as a native sidecar, in the CPU or the GPU server image); the operator's reader
(tandem.decide.observed) takes the figures from the containers' termination messages. This machine has no
GPU: the real-gpu server fell back to the CPU, the profile says so, and the decision's candidate for that
pool is excluded with that note instead of being priced as GPU figures. Then the profile's prediction is
held against real replicas under load. (The full auto flow is in tests/integration/test_auto_placement.py on kwok,
where serving pods need no real image.)
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from typing import Any

import numpy as np
import pytest
from kubernetes import client as k8s

from e2e.conftest import ModelVolume, Release, service_address
from support.cluster import wait_until
from support.digits import CPU_POOL, GPU_POOL, real_pools
from support.models import digits_mlp, small_cnn, tiny_model
from support.tandem import body, create, wait_for
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel, Slo
from tandem.api.resources import INFERENCE_SERVICE
from tandem.config import OperatorConfig
from tandem.decide import observed
from tandem.decide.costing import decide, replica_rates
from tandem.decide.placement import pod_placement
from tandem.profiling import load
from tandem.profiling.measure import sample_request
from tandem.render import profiling as profiling_build

pytestmark = pytest.mark.timeout(400)


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

    finished_job = wait_until(finished, timeout=300, interval=1.0, what=f"profile Job on {pool_name} finished")
    pods = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={target.job_name}").items
    return observed.observe(finished_job, [api.sanitize_for_serialization(pod) for pod in pods], model.sha256)


def model_metadata_of(pod_ip: str, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{pod_ip}:8080/v2/models/{model}", timeout=10) as reply:
        document: dict[str, Any] = json.loads(reply.read())
    return document


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


MODELS = {"mlp": digits_mlp, "cnn": small_cnn}


def ready_pods(api: k8s.ApiClient, namespace: str, service: str) -> list[k8s.V1Pod]:
    pods = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"tandem.dev/inferenceservice={service}")
    return [
        pod for pod in pods.items
        if pod.status.pod_ip and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_profile_predicts_a_replica_and_the_replicas_it_plans_hold_the_target_rate(
    kube: k8s.ApiClient, namespace: str, models: ModelVolume, release: Release, kind: str
) -> None:
    """The profile's requests/s per replica against a real replica's at the same concurrency (printed; held to
    within 4x), then the auto plan for a target rate of 0.96 replicas' worth (two replicas at 80%) under that
    rate through the Service. Half-core replicas, so that two of them and the load generator fit this
    machine's two cores."""
    data = MODELS[kind]()
    (models.path / f"{kind}.onnx").write_bytes(data)
    uri = f"pvc://{models.claim}/{kind}.onnx"
    sha256 = hashlib.sha256(data).hexdigest()
    base = {
        "model": {"uri": uri, "sha256": sha256},
        "resources": {"cpu": "500m", "memory": "512Mi"},
        "runtime": {"threads": 1},
    }
    spec = InferenceServiceSpec.model_validate(
        {**base, "placement": "auto", "slo": {"p99LatencyMs": 1000, "targetRequestsPerSecond": 1}}
    )
    profiled = run_profile(kube, namespace, CPU_POOL, spec, ServedModel(uri=uri, sha256=sha256))
    assert profiled.state == observed.ProfileState.SUCCEEDED and profiled.result is not None, profiled.message
    predicted, concurrency = profiled.result.throughput_per_replica, profiled.result.concurrency

    # The operator finds that profile by its cache labels and plans from it: two replicas for this rate.
    target = round(predicted * 0.8 * 1.2, 1)
    slo = {"p99LatencyMs": 1000, "targetRequestsPerSecond": target}
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, kind, {
        **base, "placement": "auto", "slo": slo, "replicas": {"min": 1, "max": 2},
    }))
    served = wait_for(
        kube, INFERENCE_SERVICE, namespace, kind,
        lambda obj: (obj.get("status") or {}).get("readyReplicas") == 2, "two ready replicas", timeout=300,
    )
    assert served["status"]["placement"]["pool"] == CPU_POOL, served["status"]["placement"]
    body_bytes = sample_request(model_metadata_of(ready_pods(kube, namespace, kind)[0].status.pod_ip, kind))

    one = ready_pods(kube, namespace, kind)[0].status.pod_ip
    # Anything else on this shared 2-core machine only slows a window down, so the replica's rate is the best
    # of three windows (as timeit takes the best of its repeats); all three are printed.
    windows = [load.closed_loop(f"http://{one}:8080", kind, body_bytes, concurrency, 3.0).rate for _ in range(3)]
    ratio = max(windows) / predicted
    print(f"{kind}: profile {predicted:.0f} req/s per replica, a real replica {max(windows):.0f} req/s "
          f"(windows {', '.join(f'{rate:.0f}' for rate in windows)}) at concurrency {concurrency}: ratio {ratio:.2f}")
    # The 25% is a measurement (0.96 and 1.00 on a quiet machine, in the closing notes), printed here;
    # CI runs on this shared 2-core VM measured 0.42 to 1.00, both sides slowed at different moments. What the
    # test holds is that the profile measures the replica, not an in-process loop five times off.
    assert 0.25 <= ratio <= 4.0

    address = service_address(kube, namespace, kind)
    held = load.fixed_rate(f"http://{address}", kind, body_bytes, rate=target, seconds=8.0, connections=32)
    achieved = len(held.latencies) / held.seconds / target
    p99 = float(np.percentile(np.asarray(held.latencies) * 1000, 99))
    print(f"{kind}: two replicas at {target} req/s through the Service: {achieved:.2f} of the rate, "
          f"p99 {p99:.1f} ms, {held.late} requests sent late")
    assert achieved >= 0.8
