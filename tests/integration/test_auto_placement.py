"""placement: auto on a real control plane: profile Jobs scheduled onto each pool, decision, deployment.

kwok plays the kubelet, so no profile really runs here: a profile pod reports the JSON that its
`tandem.dev/fake-termination-message` annotation carries (propagated from spec.podMetadata), exactly where a
real `tandem profile` writes it. The figures fed are the issue's ResNet-18 measurements. A GPU pool's profile
that ran without a GPU says device "cpu", and the status must say so rather than use those numbers as GPU
figures. Pools are tests/support's: a 16-core CPU replica costs 0.48/h, a 16-core one-GPU replica 2.82/h.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from kopf.testing import KopfRunner
from kubernetes import client as k8s

from support.cluster import wait_until
from support.tandem import CPU_POOL, GPU_POOL, body, condition, create, events_for, patch_spec, wait_for
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.api.resources import INFERENCE_SERVICE
from tandem.config import OperatorConfig
from tandem.decide.placement import pod_placement
from tandem.render import profiling as profiling_build

SHA = hashlib.sha256(b"resnet18").hexdigest()
URI = "s3://models/resnet18/model.onnx"  # no volume: the test namespace has no claim


def profile_json(p99_ms: float, rps: float, device: str) -> str:
    return json.dumps(
        {
            "sha256": SHA, "device": device, "requestedDevice": device, "threads": 16, "concurrency": 2,
            "maxBatchSize": 1, "p50LatencyMs": p99_ms * 0.8, "p90LatencyMs": p99_ms * 0.9, "p99LatencyMs": p99_ms,
            "latencySamples": 2000, "throughputPerReplica": rps, "loadedP99LatencyMs": p99_ms,
            "throughputSeconds": 3.0,
        }
    )


def auto_spec(rps: float, p99_ms: float = 20, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "model": {"uri": URI, "sha256": SHA},
        "placement": "auto",
        "slo": {"p99LatencyMs": p99_ms, "targetRequestsPerSecond": rps},
        "resources": {"cpu": "16", "memory": "4Gi"},
        "replicas": {"min": 1, "max": 40},
        "podMetadata": {"annotations": annotations or {}},
    }


def decided(reason: str, pool: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        found = condition(obj, "PlacementDecided") or {}
        placed = ((obj.get("status") or {}).get("placement") or {}).get("pool")
        return found.get("reason") == reason and (pool is None or placed == pool)

    return check


def profile_jobs(api: k8s.ApiClient, namespace: str) -> list[k8s.V1Job]:
    jobs: list[k8s.V1Job] = k8s.BatchV1Api(api).list_namespaced_job(
        namespace, label_selector=profiling_build.SHA_LABEL
    ).items
    return jobs


def node_pool(api: k8s.ApiClient, node_name: str) -> str:
    return str((k8s.CoreV1Api(api).read_node(node_name).metadata.labels or {}).get("tandem.dev/pool"))


def deployment_pool(api: k8s.ApiClient, namespace: str, name: str) -> str:
    deployment = k8s.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    return str(deployment.spec.template.spec.node_selector.get("tandem.dev/pool"))


def test_auto_service_is_profiled_on_both_pools_decided_and_deployed_with_its_reasons(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    fake = {"tandem.dev/fake-duration": "2s", "tandem.dev/fake-termination-message": profile_json(4.2, 322, "cpu")}
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "resnet", auto_spec(50, annotations=fake)))

    profiling = wait_for(tandem_api, INFERENCE_SERVICE, namespace, "resnet", decided("Profiling"), "profiling")
    assert profiling["status"]["phase"] == "Pending"
    apps = k8s.AppsV1Api(tandem_api)
    assert not apps.list_namespaced_deployment(namespace).items  # nothing deployed before the decision

    jobs = {job.metadata.labels[profiling_build.POOL_LABEL]: job for job in profile_jobs(tandem_api, namespace)}
    assert set(jobs) == {"cpu", "gpu"}
    gpu_server = jobs["gpu"].spec.template.spec.init_containers[0]  # the replica's server, as a sidecar
    assert gpu_server.resources.requests["nvidia.com/gpu"] == "1" and gpu_server.restart_policy == "Always"
    assert jobs["cpu"].metadata.owner_references[0].name == "resnet"

    placed = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", decided("CheapestWithinSlo", "cpu"), "decided", timeout=120
    )
    for pool, job in jobs.items():
        pods = k8s.CoreV1Api(tandem_api).list_namespaced_pod(namespace, label_selector=f"job-name={job.metadata.name}")
        assert pods.items and {node_pool(tandem_api, pod.spec.node_name) for pod in pods.items} == {pool}
    placement = placed["status"]["placement"]
    cpu, gpu = placement["candidates"]
    assert cpu == {
        "pool": "cpu", "measured": True, "p99LatencyMs": 4.2, "throughputPerReplica": 322.0, "replicas": 1,
        "costPerHour": 0.48, "costPerMillionInferences": 2.666667, "joulesPerInference": 1.92, "meetsSlo": True,
    }  # at the SLO's 50 req/s: 0.48 for 180,000 requests an hour, 96 W over 50 requests a second
    assert (placement["costPerMillionInferences"], placement["joulesPerInference"]) == (2.666667, 1.92)
    # No GPU here: the GPU pool's profile ran on CPU, and the status says so instead of pricing those numbers.
    assert not gpu["measured"] and gpu.get("p99LatencyMs") is None and gpu.get("costPerHour") is None
    assert gpu["note"].startswith("profile ran on CPU, not on the pool's accelerator")
    message = condition(placed, "PlacementDecided")["message"]  # type: ignore[index]
    assert "cpu: 1 x 0.48/h = 0.48/h, p99 4.2 ms, 322 req/s per replica" in message
    assert "not considered: gpu (profile ran on CPU" in message
    assert deployment_pool(tandem_api, namespace, "resnet") == "cpu"
    reasons = [event.reason for event in events_for(tandem_api, namespace, "resnet")]
    assert "Profiling" in reasons and "PlacementDecided" in reasons

    # Serving pods must not finish like profile pods: drop the fake annotations. Profiles stay cached (pod
    # metadata does not change a replica's speed), so the decision stands and nothing is re-measured.
    patch_spec(tandem_api, INFERENCE_SERVICE, namespace, "resnet", {"podMetadata": {"annotations": None}})
    ready = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", lambda o: o["status"].get("phase") == "Ready", "ready"
    )
    assert ready["status"]["placement"]["pool"] == "cpu"
    assert len(profile_jobs(tandem_api, namespace)) == 2


def completed_profile(api: k8s.ApiClient, namespace: str, pool_name: str, message: str) -> None:
    """A profile another service ran earlier: a completed Job with the cache labels, reporting `message`."""
    pool_body = {"gpu": GPU_POOL, "cpu": CPU_POOL}[pool_name]
    pool = ComputePoolSpec.model_validate(pool_body)
    spec = InferenceServiceSpec.model_validate(
        {**auto_spec(50), "podMetadata": {"annotations": {"tandem.dev/fake-duration": "1s",
                                                           "tandem.dev/fake-termination-message": message}}}
    )
    config = OperatorConfig.from_env()  # the image is part of the cache key; the operator reads the same env
    target = profiling_build.target(
        "earlier", namespace, "none", spec, ServedModel(uri=URI, sha256=SHA), pod_placement(pool_name, pool), pool,
        config,
    )
    job = profiling_build.profile_job(target, config)
    job["metadata"].pop("ownerReferences")
    k8s.BatchV1Api(api).create_namespaced_job(namespace, job)

    def complete() -> bool:
        status = k8s.BatchV1Api(api).read_namespaced_job(target.job_name, namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in status.conditions or [])

    wait_until(complete, timeout=60, what=f"profile Job on {pool_name} complete")


def test_cached_profiles_decide_at_once_and_a_changed_slo_re_decides(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    completed_profile(tandem_api, namespace, "cpu", profile_json(4.2, 322, "cpu"))
    completed_profile(tandem_api, namespace, "gpu", profile_json(2.4, 18_000, "cuda"))
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "resnet", auto_spec(5_000)))

    # 5,000 req/s: 20 CPU replicas (9.6/h) against one GPU replica (2.82/h).
    on_gpu = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", decided("CheapestWithinSlo", "gpu"), "on the GPU pool"
    )
    assert on_gpu["status"]["placement"]["costPerHour"] == 2.82
    assert [c["costPerHour"] for c in on_gpu["status"]["placement"]["candidates"]] == [9.6, 2.82]
    assert len(profile_jobs(tandem_api, namespace)) == 2  # the cache answered; nothing re-measured
    ready = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", lambda o: o["status"].get("phase") == "Ready", "ready"
    )
    pods = k8s.CoreV1Api(tandem_api).list_namespaced_pod(namespace, label_selector="tandem.dev/inferenceservice=resnet")
    assert {node_pool(tandem_api, pod.spec.node_name) for pod in pods.items} == {"gpu"}
    assert pods.items[0].spec.containers[0].resources.requests["nvidia.com/gpu"] == "1"
    assert ready["status"]["placement"]["pool"] == "gpu"

    patch_spec(tandem_api, INFERENCE_SERVICE, namespace, "resnet", {"slo": {"targetRequestsPerSecond": 50}})
    wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", decided("CheapestWithinSlo", "cpu"),
        "re-decided for 50 req/s",
    )
    assert deployment_pool(tandem_api, namespace, "resnet") == "cpu"

    patch_spec(tandem_api, INFERENCE_SERVICE, namespace, "resnet", {"slo": {"p99LatencyMs": 1}})
    unattainable = wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "resnet", decided("SloUnattainable", "gpu"), "unattainable"
    )
    assert condition(unattainable, "PlacementDecided")["status"] == "False"  # type: ignore[index]
    assert deployment_pool(tandem_api, namespace, "resnet") == "gpu"
    warnings = [e for e in events_for(tandem_api, namespace, "resnet") if e.reason == "PlacementDecided"]
    assert {event.type for event in warnings} == {"Normal", "Warning"}
    assert len(profile_jobs(tandem_api, namespace)) == 2
