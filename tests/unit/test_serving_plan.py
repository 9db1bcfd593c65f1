"""tandem.decide.serving_plan.plan: one pure decision from the spec, the pools and the observed profiles.

The auto rows feed the decision what `tandem profile` now measures (requests to the real server over HTTP, at
the replica's concurrency, with its batching) beside what the in-process profile measured before; each row
states the answer the old figures would have given and why it was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec
from tandem.api.profile import ProfileResult
from tandem.decide import observed
from tandem.decide.placement import PlacementError
from tandem.decide.serving_plan import AwaitingProfiles, ServingPlan, plan
from tandem.errors import Problem

SHA = "cd" * 32
MiB = 1 << 20


def pools(cpu_core_hour: float = 0.0625, accelerator_hour: float = 4.0) -> dict[str, ComputePoolSpec]:
    """A 1-core CPU replica and a 1-core one-GPU replica, priced per core and per accelerator."""
    bodies: dict[str, dict[str, Any]] = {
        "cpu": {"nodeSelector": {"pool": "cpu"}, "role": "serving", "price": {"coreHour": cpu_core_hour}},
        "gpu": {
            "nodeSelector": {"pool": "gpu"},
            "accelerator": "nvidia.com/gpu",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "price": {"coreHour": cpu_core_hour, "acceleratorHour": accelerator_hour},
        },
    }
    return {name: ComputePoolSpec.model_validate(body) for name, body in bodies.items()}


def spec(**fields: Any) -> InferenceServiceSpec:
    body: dict[str, Any] = {"model": {"uri": "s3://m/model.onnx", "sha256": SHA}, "resources": {"cpu": "1"}}
    return InferenceServiceSpec.model_validate({**body, **fields})


def auto(p99_ms: float, rps: float, cpu: str = "16") -> InferenceServiceSpec:
    """A 16-core replica: 1.0/h on the CPU pool, 5.0/h with its GPU."""
    return spec(placement="auto", slo={"p99LatencyMs": p99_ms, "targetRequestsPerSecond": rps},
                replicas={"min": 1, "max": 100}, resources={"cpu": cpu})


def measured(
    rps: float, p99_ms: float, loaded_p99_ms: float | None = None, device: str = "cpu", batch: int = 1,
    footprint: int | None = None,
) -> observed.Observation:
    result = ProfileResult(
        sha256=SHA, device=device, requested_device=device, threads=1, concurrency=batch, max_batch_size=batch,
        p50_latency_ms=p99_ms / 2, p90_latency_ms=p99_ms / 1.5, p99_latency_ms=p99_ms, latency_samples=500,
        throughput_per_replica=rps, loaded_p99_latency_ms=loaded_p99_ms or p99_ms, throughput_seconds=3,
        peak_resident_bytes=footprint,
    )
    return observed.Observation(observed.ProfileState.SUCCEEDED, "job", result=result)


def decided(outcome: ServingPlan | AwaitingProfiles) -> ServingPlan:
    assert isinstance(outcome, ServingPlan), outcome
    return outcome


def test_placement_cpu_is_the_cpu_pool_with_no_accelerator_at_the_specs_replicas() -> None:
    chosen = decided(plan(spec(placement="cpu", replicas={"min": 2, "max": 4}), pools()))
    assert (chosen.pool, chosen.accelerators, chosen.replicas.min, chosen.replicas.max) == ("cpu", 0, 2, 4)
    assert chosen.status.cost_per_hour == 2 * 0.0625 and chosen.decision is None


def test_placement_gpu_holds_one_accelerator_and_is_priced_with_it() -> None:
    chosen = decided(plan(spec(placement="gpu"), pools()))
    assert (chosen.pool, chosen.accelerators) == ("gpu", 1)
    assert chosen.status.cost_per_hour == 0.0625 + 4.0


def test_auto_waits_for_every_candidate_pool_and_names_the_jobs() -> None:
    running = observed.Observation(observed.ProfileState.RUNNING, "svc-profile-gpu")
    outcome = plan(auto(20, 50), pools(), {"cpu": measured(300, 4), "gpu": running})
    assert outcome == AwaitingProfiles(["gpu (Job svc-profile-gpu)"])
    assert plan(auto(20, 50), pools(), {}) == AwaitingProfiles(["cpu", "gpu"])


def test_auto_without_an_slo_or_any_usable_profile_is_a_problem() -> None:
    with pytest.raises(Problem, match=r"needs spec\.slo"):
        plan(spec(placement="auto"), pools())
    failed = observed.Observation(observed.ProfileState.FAILED, "job", message="model server exited")
    with pytest.raises(Problem, match="model server exited"):
        plan(auto(20, 50), pools(), {"cpu": failed, "gpu": failed})


def test_an_explicit_pool_is_never_profiled_even_with_placement_auto() -> None:
    chosen = decided(plan(spec(placement="auto", pool="cpu"), pools()))
    assert chosen.pool == "cpu" and chosen.decision is None


def test_auto_raises_the_replica_floor_to_what_the_load_needs() -> None:
    profiles = {"cpu": measured(1_000, 2), "gpu": measured(900, 3, device="cuda")}
    chosen = decided(plan(auto(20, 2_000, cpu="1"), pools(), profiles))
    # ceil(2000 / (1000 x 0.8)) = 3 CPU replicas at 0.0625/h against 3 GPU replicas at 4.0625/h.
    assert (chosen.pool, chosen.replicas.min, chosen.replicas.max) == ("cpu", 3, 100)
    assert chosen.decision is not None and chosen.status == chosen.decision.status()


def test_auto_raises_the_replicas_memory_to_twice_the_footprint_the_profile_measured() -> None:
    large = {"cpu": measured(1_000, 2, footprint=700 * MiB + 1), "gpu": measured(900, 3, device="cuda")}
    chosen = decided(plan(auto(20, 500, cpu="1"), pools(), large))
    # The server keeps half its limit for requests: 700 MiB and a byte of footprint need 1401 MiB.
    assert chosen.pool == "cpu" and chosen.memory == "1401Mi"
    assert "memory 1401Mi per replica, to fit the footprint the profile measured" in chosen.status.reason


def test_a_footprint_the_specs_memory_holds_leaves_it_as_it_is() -> None:
    small = {"cpu": measured(1_000, 2, footprint=300 * MiB), "gpu": measured(900, 3, device="cuda")}
    assert decided(plan(auto(20, 500, cpu="1"), pools(), small)).memory is None  # 600 MiB within the 1Gi default
    unmeasured = {"cpu": measured(1_000, 2), "gpu": measured(900, 3, device="cuda")}
    assert decided(plan(auto(20, 500, cpu="1"), pools(), unmeasured)).memory is None
    assert decided(plan(spec(placement="cpu"), pools())).memory is None  # nothing measured without auto


@dataclass(frozen=True)
class Row:
    name: str
    slo: tuple[float, float]
    cpu: observed.Observation
    gpu: observed.Observation
    pool: str
    replicas: int
    meets: bool


ROWS = [
    # Before: in-process session.run said 6,879 req/s, so ceil(2000 / 5503) = 1 replica, which serves 1,000.
    Row("an MLP served over HTTP needs the replicas its server delivers, not its session.run rate",
        (10, 2_000), measured(1_000, 1.5), measured(700, 2.5, device="cuda"), "cpu", 3, True),
    # Before: the GPU's batch-1 figure (300 req/s) made 5,000 req/s cost 21 GPU or 27 CPU replicas;
    # measured with the GPU replica's batching it serves 9,000 req/s alone.
    Row("a CNN at 5,000 req/s goes to one batching GPU replica, not dozens of CPU replicas",
        (50, 5_000), measured(230, 9), measured(9_000, 6, loaded_p99_ms=14, device="cuda", batch=32), "gpu", 1, True),
    # Before: the batch-1 p99 (2.4 ms) met a 10 ms SLO, though requests ride 32-row batches of 25 ms under load.
    Row("a GPU replica whose batches answer in 25 ms under load misses a 10 ms p99",
        (10, 5_000), measured(230, 9), measured(9_000, 2.4, loaded_p99_ms=25, device="cuda", batch=32), "cpu", 28,
        True),
    Row("a GPU profile that ran on the CPU is not priced as GPU figures",
        (50, 5_000), measured(230, 9), measured(240, 8, device="cpu"), "cpu", 28, True),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_auto_decision_table_with_profiles_measured_through_the_server(row: Row) -> None:
    p99, rps = row.slo
    chosen = decided(plan(auto(p99, rps), pools(), {"cpu": row.cpu, "gpu": row.gpu}))
    assert chosen.decision is not None
    assert (chosen.pool, chosen.replicas.min, chosen.decision.meets_slo) == (row.pool, row.replicas, row.meets)
    assert chosen.accelerators == (1 if row.pool == "gpu" else 0)


def test_a_pool_that_does_not_exist_is_a_placement_error() -> None:
    with pytest.raises(PlacementError, match="does not exist"):
        plan(spec(pool="missing"), pools())
