"""placement: auto through reconcile_serving, against an in-memory API: profile Jobs, cache, decision, ledger.

The fake stores what the operator applies and answers label-selected lists, which is all the auto path asks of
the API server; the tests then play the Job controller and kubelet by marking profile Jobs complete with a
termination message, as kwok does on the dev cluster.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support import fake_kube
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.config import OperatorConfig
from tandem.controller import reconcile
from tandem.decide import observed
from tandem.decide.placement import pod_placement
from tandem.render import profiling as profiling_build

SHA = "ab" * 32


class FakeKube(fake_kube.FakeKube):
    """The shared in-memory API, holding the services of these tests (uids from service() or the test) and
    playing the Job controller and kubelet for profile Jobs."""

    def __init__(self) -> None:
        super().__init__()
        for name, uid in (("resnet", "uid-1"), ("resnet-b", "uid-2")):
            self.custom[("InferenceService", "ml", name)] = {"metadata": {"name": name, "uid": uid}}

    def jobs(self) -> list[dict[str, Any]]:
        """The stored Jobs themselves: finish() changes them in place."""
        return [obj for (_, kind, _, _), obj in self.objects.items() if kind == "Job"]

    def finish(self, job: dict[str, Any], message: str, succeeded: bool = True) -> None:
        """Play the Job controller and kubelet: the Job completes and its pod reports `message`."""
        name = job["metadata"]["name"]
        condition = "Complete" if succeeded else "Failed"
        job["status"] = {"conditions": [{"type": condition, "status": "True", "reason": "Done"}]}
        pod = {
            "kind": "Pod",
            "metadata": {"name": f"{name}-x", "namespace": "ml", "labels": {"job-name": name}},
            "status": {
                "phase": "Succeeded" if succeeded else "Failed",
                "containerStatuses": [
                    {"name": "profiler", "state": {"terminated": {"message": message, "exitCode": 0}}}
                ],
            },
        }
        self.objects[("v1", "Pod", "ml", pod["metadata"]["name"])] = pod


def profile_message(p99: float, rps: float, device: str = "cpu", sha256: str = SHA) -> str:
    return json.dumps(
        {
            "sha256": sha256, "device": device, "requestedDevice": device, "threads": 16, "concurrency": 2,
            "maxBatchSize": 1, "p50LatencyMs": p99 / 2, "p90LatencyMs": p99 / 1.5, "p99LatencyMs": p99,
            "latencySamples": 1000, "throughputPerReplica": rps, "loadedP99LatencyMs": p99, "throughputSeconds": 3,
        }
    )


def service(slo_rps: float = 50, p99: float = 20, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tandem.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "resnet", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {"uri": "s3://models/resnet18.onnx", "sha256": SHA},
            "placement": "auto",
            "slo": {"p99LatencyMs": p99, "targetRequestsPerSecond": slo_rps},
            "resources": {"cpu": "16", "memory": "4Gi"},
            "replicas": {"min": 1, "max": 40},
            **spec,
        },
    }


@pytest.fixture
def five_x_pools(pool_bodies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A CPU replica (16 cores) at 1.0/h and a GPU replica (16 cores and a GPU) at 5.0/h."""
    pool_bodies["cpu"]["price"] = {"coreHour": 0.0625}
    pool_bodies["gpu"]["price"] = {"coreHour": 0.0625, "acceleratorHour": 4.0}
    return pool_bodies


def by_pool(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {job["metadata"]["labels"][profiling_build.POOL_LABEL]: job for job in kube.jobs()}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(item for item in status["conditions"] if item["type"] == kind)


CPU_PROFILE = profile_message(4.2, 322)
GPU_PROFILE = profile_message(2.4, 18_000, device="cuda")
"""Measured on the GPU: 56 times a CPU replica's throughput at 5 times its price (five_x_pools), so that the
SLO's request rate decides which pool is cheaper."""


def after_profiling(
    kube: FakeKube,
    body: dict[str, Any],
    pools: dict[str, Any],
    config: OperatorConfig,
    gpu_message: str = GPU_PROFILE,
    gpu_succeeded: bool = True,
) -> reconcile.Outcome:
    """The reconcile that decides: the first starts a profile Job per pool, the test plays the Job controller
    finishing them (the cpu pool's with CPU_PROFILE), and the next reads what they measured."""
    reconcile.reconcile_serving(kube, body, pools, config)
    jobs = by_pool(kube)
    kube.finish(jobs["cpu"], CPU_PROFILE)
    kube.finish(jobs["gpu"], gpu_message, succeeded=gpu_succeeded)
    return reconcile.reconcile_serving(kube, body, pools, config)


def test_first_reconcile_starts_a_profile_per_candidate_pool_and_deploys_nothing(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    kube = FakeKube()
    outcome = reconcile.reconcile_serving(kube, service(), five_x_pools, config)
    jobs = by_pool(kube)
    assert set(jobs) == {"cpu", "gpu"}
    assert not [key for key in kube.objects if key[1] == "Deployment"]
    decided = condition(outcome.status, "PlacementDecided")
    assert (decided["status"], decided["reason"]) == ("False", "Profiling")
    assert condition(outcome.status, "ModelResolved")["status"] == "True"
    assert outcome.status["phase"] == "Pending"
    assert [event.reason for event in outcome.events] == ["Profiling", "Profiling"]
    gpu_pod, cpu_pod = (jobs[pool]["spec"]["template"]["spec"] for pool in ("gpu", "cpu"))
    gpu_server, cpu_server = gpu_pod["initContainers"][0], cpu_pod["initContainers"][0]
    assert gpu_server["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert gpu_server["image"] == "server-gpu:test" and cpu_server["image"] == "server:test"
    assert "nvidia.com/gpu" not in cpu_server["resources"]["requests"]
    assert {"name": "TANDEM_PROFILE_DEVICE", "value": "cuda"} in gpu_pod["containers"][0]["env"]
    assert gpu_pod["tolerations"]
    assert "tolerations" not in cpu_pod


@pytest.mark.parametrize(
    ("rps", "pool", "replicas", "cost"), [(50, "cpu", 1, 1.0), (5_000, "gpu", 1, 5.0), (1_000, "cpu", 4, 4.0)]
)
def test_measured_profiles_decide_and_deploy_on_the_cheapest_pool(
    five_x_pools: dict[str, Any], config: OperatorConfig, rps: float, pool: str, replicas: int, cost: float
) -> None:
    kube = FakeKube()
    outcome = after_profiling(kube, service(rps), five_x_pools, config)
    placement = outcome.status["placement"]
    assert (placement["pool"], placement["costPerHour"]) == (pool, cost)
    assert [c["pool"] for c in placement["candidates"]] == ["cpu", "gpu"]
    assert all(c["measured"] and c["meetsSlo"] for c in placement["candidates"])
    decided = condition(outcome.status, "PlacementDecided")
    assert (decided["status"], decided["reason"]) == ("True", "CheapestWithinSlo")
    assert decided["message"] == placement["reason"]
    assert [(e.type, e.reason) for e in outcome.events] == [
        ("Normal", "ModelResolved"),
        ("Normal", "PlacementDecided"),
    ]
    deployment = kube.get("apps/v1", "Deployment", "ml", "resnet")
    assert deployment is not None
    # replicas.max 40 > min: the autoscaler starts from the replicas the SLO needs.
    autoscaler = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "ml", "resnet")
    assert autoscaler is not None and autoscaler["spec"]["minReplicas"] == replicas
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"tandem.dev/pool": pool}


def test_a_gpu_pool_profiled_without_a_gpu_is_reported_not_invented(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    measured_on_cpu = profile_message(4.3, 310, device="cpu")
    outcome = after_profiling(FakeKube(), service(5_000), five_x_pools, config, gpu_message=measured_on_cpu)
    cpu, gpu = outcome.status["placement"]["candidates"]
    assert outcome.status["placement"]["pool"] == "cpu" and cpu["replicas"] == 20
    assert not gpu["measured"] and gpu["p99LatencyMs"] is None and gpu["throughputPerReplica"] is None
    assert gpu["note"].startswith("profile ran on CPU, not on the pool's accelerator")


def test_unattainable_slo_deploys_on_the_fastest_with_a_false_condition(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    kube = FakeKube()
    outcome = after_profiling(kube, service(50, p99=1), five_x_pools, config)
    decided = condition(outcome.status, "PlacementDecided")
    assert (decided["status"], decided["reason"]) == ("False", "SloUnattainable")
    assert outcome.status["placement"]["pool"] == "gpu"
    assert [(e.type, e.reason) for e in outcome.events if e.reason == "PlacementDecided"] == [
        ("Warning", "PlacementDecided")
    ]
    assert kube.get("apps/v1", "Deployment", "ml", "resnet") is not None


def test_profiles_are_reused_across_services_and_slo_changes(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    kube = FakeKube()
    first = after_profiling(kube, service(50), five_x_pools, config)
    assert first.status["placement"]["pool"] == "cpu"
    changed = service(5_000)
    changed["metadata"]["generation"] = 2
    changed["status"] = first.status
    second = reconcile.reconcile_serving(kube, changed, five_x_pools, config)
    assert second.status["placement"]["pool"] == "gpu"
    assert len(kube.jobs()) == 2
    other = service(50)
    other["metadata"].update(name="resnet-b", uid="uid-2")
    third = reconcile.reconcile_serving(kube, other, five_x_pools, config)
    assert third.status["placement"]["pool"] == "cpu" and len(kube.jobs()) == 2


def test_a_new_model_is_profiled_while_the_old_deployment_keeps_serving(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    kube = FakeKube()
    reconcile.reconcile_serving(kube, service(50), five_x_pools, config)
    for job in kube.jobs():
        kube.finish(job, profile_message(4.2, 322, device="cuda" if "gpu" in job["metadata"]["name"] else "cpu"))
    first = reconcile.reconcile_serving(kube, service(50), five_x_pools, config)
    newer = service(50, model={"uri": "s3://models/resnet18-v2.onnx", "sha256": "cd" * 32})
    newer["status"] = first.status
    outcome = reconcile.reconcile_serving(kube, newer, five_x_pools, config)
    assert len(kube.jobs()) == 4
    assert condition(outcome.status, "PlacementDecided")["reason"] == "Profiling"
    assert outcome.status["model"]["sha256"] == SHA  # still serving the old one
    deployment = kube.get("apps/v1", "Deployment", "ml", "resnet")
    assert deployment is not None and "resnet18.onnx" in json.dumps(deployment)


def test_a_failed_profile_excludes_its_pool_with_the_pods_words(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    failure = json.dumps({"error": "onnxruntime cannot open the model"})
    outcome = after_profiling(FakeKube(), service(50), five_x_pools, config, gpu_message=failure, gpu_succeeded=False)
    gpu = outcome.status["placement"]["candidates"][1]
    assert gpu["note"].endswith("failed (Done): onnxruntime cannot open the model")


def test_the_ledger_grows_with_replicas_requests_and_time(
    five_x_pools: dict[str, Any], config: OperatorConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = FakeKube()
    clock = [datetime(2024, 5, 1, 12, tzinfo=UTC)]
    monkeypatch.setattr(reconcile, "now", lambda: clock[0])
    body = service(50)
    body["spec"]["placement"] = "cpu"
    first = reconcile.reconcile_serving(kube, body, five_x_pools, config)
    assert first.status["usage"]["coreSeconds"] == 0
    kube.set_status("apps/v1", "Deployment", "resnet", {"replicas": 2, "readyReplicas": 2})
    body["status"] = reconcile.reconcile_serving(kube, body, five_x_pools, config).status
    clock[0] += timedelta(minutes=30)
    kube.set_status("apps/v1", "Deployment", "resnet", {"replicas": 3, "readyReplicas": 3})
    grown = reconcile.reconcile_serving(kube, body, five_x_pools, config)
    # 2 replicas x 16 cores x 1800 s at 0.0625 per core-hour and 8 W per core.
    assert grown.status["usage"] == {
        "gpuSeconds": 0.0, "coreSeconds": 57_600.0, "estimatedCost": 1.0, "energyWh": 128.0
    }
    assert grown.status["usageObservedAt"].startswith("2024-05-01T12:30:00")


def test_profile_job_is_deterministic_and_never_joins_the_service() -> None:
    pool = ComputePoolSpec.model_validate({"nodeSelector": {"tandem.dev/pool": "cpu"}})
    spec = InferenceServiceSpec.model_validate(
        {"model": {"uri": "pvc://models/m.onnx"}, "placement": "auto",
         "slo": {"p99LatencyMs": 5, "targetRequestsPerSecond": 10},
         "podMetadata": {"annotations": {"tandem.dev/fake-duration": "1s"}}}
    )
    model = ServedModel(uri="pvc://models/m.onnx", sha256=SHA)
    config = OperatorConfig(server_image="server:test")
    target = profiling_build.target("svc", "ml", "uid", spec, model, pod_placement("cpu", pool), pool, config)
    job = profiling_build.profile_job(target, config)
    assert job == profiling_build.profile_job(target, config)
    assert job["metadata"]["name"] == f"svc-profile-cpu-{SHA[:10]}-{target.settings[:6]}"
    labels = job["metadata"]["labels"]
    assert labels[profiling_build.SHA_LABEL] == SHA[:32] and labels[profiling_build.POOL_LABEL] == "cpu"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid"
    template = job["spec"]["template"]
    assert "tandem.dev/inferenceservice" not in template["metadata"]["labels"]
    assert template["metadata"]["annotations"] == {"tandem.dev/fake-duration": "1s"}
    assert template["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models"}
    server, profiler = template["spec"]["initContainers"][0], template["spec"]["containers"][0]
    assert server["restartPolicy"] == "Always" and server["command"] == ["tandem", "serve"]
    assert "livenessProbe" not in server and "lifecycle" not in server
    assert profiler["command"] == ["tandem", "profile"] and "cpu" not in profiler["resources"]["limits"]
    faster = spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"threads": 4})})
    other = profiling_build.target("svc", "ml", "uid", faster, model, pod_placement("cpu", pool), pool, config)
    assert other.settings != target.settings and other.job_name != target.job_name


def test_observe_prefers_a_completed_job_and_checks_the_sha() -> None:
    done = {"metadata": {"name": "a", "creationTimestamp": "2"}, "status": {"conditions": [
        {"type": "Complete", "status": "True"}]}}
    running = {"metadata": {"name": "b", "creationTimestamp": "1"}, "status": {}}
    assert observed.pick([running, done]) is done
    pod = {"status": {"phase": "Succeeded", "containerStatuses": [
        {"state": {"terminated": {"message": profile_message(1, 2, sha256="ef" * 32)}}}]}}
    seen = observed.observe(done, [pod], SHA)
    assert seen.state == observed.ProfileState.FAILED and "expected abababababab" in seen.message
    assert observed.observe(running, [], SHA).state == observed.ProfileState.RUNNING


def test_without_an_autoscaler_the_deployment_gets_the_replicas_the_slo_needs(
    five_x_pools: dict[str, Any], config: OperatorConfig
) -> None:
    kube = FakeKube()
    outcome = after_profiling(kube, service(1_000, replicas={"min": 1, "max": 4}), five_x_pools, config)
    assert outcome.status["placement"]["pool"] == "cpu"
    deployment = kube.get("apps/v1", "Deployment", "ml", "resnet")
    assert deployment is not None and deployment["spec"]["replicas"] == 4
    assert kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "ml", "resnet") is None


def test_a_spec_as_the_api_server_stores_it_hits_the_profile_cache_of_the_same_spec_unstored() -> None:
    """The API server fills in schema defaults (maxBatchDelayMs: 0, an integer in JSON); the cache key must not
    tell 0 from 0.0, or every profile would be measured twice."""
    written = {"model": {"uri": "s3://m/model.onnx"}, "placement": "auto"}
    stored = {**written, "runtime": {"maxBatchDelayMs": 0, "executionProvider": "auto"}}
    keys = {profiling_build.settings_key(InferenceServiceSpec.model_validate(body), "server:1", 0)
            for body in (written, stored)}
    assert len(keys) == 1
