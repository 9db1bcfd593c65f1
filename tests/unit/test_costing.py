"""The auto placement decision, as a table: measured figures and prices in, pool and evidence out.

The ResNet-18 and MLP figures are the ones measured on an H100 box with 16 cores that motivated the feature
(issue 8): ResNet-18 at batch 1 takes 4.2 ms on 16 CPU threads and 2.4 ms on the GPU, a CPU replica sustains
322 requests/s and a GPU replica 18,000/s, at about five times the CPU replica's hourly price; a small MLP
answers in 0.05 ms on CPU and is slower on the GPU. Prices: a CPU replica (16 cores) 1.0/h, a GPU replica
(16 cores and one GPU) 5.0/h.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tandem.api.common import Usage
from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import PlacementStatus, Slo
from tandem.decide.costing import (
    PLANNING_UTILISATION,
    Candidate,
    NoCandidate,
    Profile,
    accrue,
    decide,
    replica_rates,
    replicas_needed,
)

CPU_PRICE, GPU_PRICE = 1.0, 5.0
CPU_WATTS, GPU_WATTS = 16 * 8.0, 16 * 8.0 + 700.0

RESNET_CPU = Profile(p99_latency_ms=4.2, throughput_per_replica=322, device="cpu")
RESNET_GPU = Profile(p99_latency_ms=2.4, throughput_per_replica=18_000, device="cuda")
MLP_CPU = Profile(p99_latency_ms=0.05, throughput_per_replica=15_000, device="cpu")
MLP_GPU = Profile(p99_latency_ms=0.12, throughput_per_replica=9_000, device="cuda")


def cpu(profile: Profile | None, note: str | None = None) -> Candidate:
    return Candidate("cpu", CPU_PRICE, CPU_WATTS, accelerator=False, profile=profile, note=note)


def gpu(profile: Profile | None, note: str | None = None) -> Candidate:
    return Candidate("gpu", GPU_PRICE, GPU_WATTS, accelerator=True, profile=profile, note=note)


@dataclass(frozen=True)
class Case:
    name: str
    slo: Slo
    candidates: list[Candidate]
    pool: str
    replicas: int
    cost: float
    meets: bool
    max_replicas: int | None = None


def slo(p99_ms: float, rps: float) -> Slo:
    return Slo(p99_latency_ms=p99_ms, target_requests_per_second=rps)


CASES = [
    Case("resnet18 at 50 req/s under 20 ms: one CPU replica", slo(20, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)],
         "cpu", 1, 1.0, True),
    # CPU: ceil(5000 / (322 x 0.8)) = 20 replicas = 20.0/h; GPU: 1 replica = 5.0/h.
    Case("resnet18 at 5,000 req/s: one GPU replica beats 20 CPU replicas", slo(20, 5_000),
         [cpu(RESNET_CPU), gpu(RESNET_GPU)], "gpu", 1, 5.0, True),
    # CPU: ceil(1000 / 257.6) = 4 replicas = 4.0/h, still under the GPU's 5.0/h.
    Case("resnet18 at 1,000 req/s: four CPU replicas are cheaper", slo(20, 1_000),
         [cpu(RESNET_CPU), gpu(RESNET_GPU)], "cpu", 4, 4.0, True),
    Case("resnet18 at 1,000 req/s with replicas.max 2: CPU cannot scale, GPU can", slo(20, 1_000),
         [cpu(RESNET_CPU), gpu(RESNET_GPU)], "gpu", 1, 5.0, True, max_replicas=2),
    *[
        Case(f"mlp at {rate:,} req/s stays on CPU", slo(5, rate), [cpu(MLP_CPU), gpu(MLP_GPU)],
             "cpu", replicas_needed(rate, 15_000, PLANNING_UTILISATION),
             float(replicas_needed(rate, 15_000, PLANNING_UTILISATION)), True)
        for rate in (1, 1_000, 50_000, 1_000_000)
    ],
    Case("unattainable p99: the fastest pool, SLO not met", slo(1, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)],
         "gpu", 1, 5.0, False),
    Case("missing GPU figures: decided on CPU alone", slo(20, 50), [cpu(RESNET_CPU), gpu(None, "profile failed")],
         "cpu", 1, 1.0, True),
    Case("missing GPU figures at 5,000 req/s: CPU with 20 replicas", slo(20, 5_000),
         [cpu(RESNET_CPU), gpu(None, "not profiled")], "cpu", 20, 20.0, True),
    Case("a GPU pool whose profile ran on CPU is not used", slo(20, 5_000),
         [cpu(RESNET_CPU), gpu(Profile(4.0, 330, device="cpu"))], "cpu", 20, 20.0, True),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(case.slo, case.candidates, max_replicas=case.max_replicas)
    assert (decision.pool, decision.replicas, decision.cost_per_hour, decision.meets_slo) == (
        case.pool,
        case.replicas,
        case.cost,
        case.meets,
    )
    assert [estimate.pool for estimate in decision.estimates] == [c.pool for c in case.candidates]
    chosen = next(estimate for estimate in decision.estimates if estimate.pool == case.pool)
    assert chosen.measured and chosen.meets_slo == case.meets and chosen.cost_per_hour == case.cost


def test_the_reason_states_both_pools_numbers() -> None:
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)])
    assert decision.reason.startswith("cheapest pool meeting p99 < 20 ms at 50 req/s: cpu: 1 x 1/h = 1/h")
    assert "p99 4.2 ms, 322 req/s per replica" in decision.reason
    assert "against gpu: 1 x 5/h = 5/h, p99 2.4 ms, 18000 req/s per replica" in decision.reason


def test_each_pool_is_priced_per_million_requests_and_per_request_in_joules_at_the_target_load() -> None:
    """50 req/s on one CPU replica (1.0/h, 128 W): 180,000 requests an hour cost 1.0, so a million cost 1/0.18;
    128 W spread over 50 requests a second is 2.56 J each. The GPU replica: five times the price, 828 W."""
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)])
    cpu_estimate, gpu_estimate = decision.estimates
    assert cpu_estimate.cost_per_million_inferences == round(1.0 / 0.18, 6)
    assert cpu_estimate.joules_per_inference == 2.56
    assert gpu_estimate.cost_per_million_inferences == round(5.0 / 0.18, 6)
    assert gpu_estimate.joules_per_inference == 16.56
    status = decision.status()
    assert (status.cost_per_million_inferences, status.joules_per_inference) == (round(1.0 / 0.18, 6), 2.56)
    assert "5.55556 per million requests, 2.56 J per request" in decision.reason


def test_unattainable_slo_names_what_misses() -> None:
    decision = decide(slo(1, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)])
    assert decision.reason.startswith("no pool meets p99 < 1 ms at 50 req/s; serving on the fastest: gpu")
    notes = {estimate.pool: estimate.note for estimate in decision.estimates}
    assert notes == {"cpu": "p99 4.2 ms exceeds the SLO's 1 ms", "gpu": "p99 2.4 ms exceeds the SLO's 1 ms"}


def test_missing_figures_are_excluded_with_a_note() -> None:
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(None, "profile Job failed (DeadlineExceeded)")])
    excluded = decision.estimates[1]
    assert excluded.model_dump(exclude_none=True) == {
        "pool": "gpu",
        "measured": False,
        "meets_slo": False,
        "note": "profile Job failed (DeadlineExceeded)",
    }
    assert "not considered: gpu (profile Job failed (DeadlineExceeded))" in decision.reason


def test_a_gpu_profile_that_ran_on_cpu_says_so_instead_of_posing_as_gpu_figures() -> None:
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(Profile(4.0, 330, device="cpu"))])
    estimate = decision.estimates[1]
    assert not estimate.measured and estimate.p99_latency_ms is None and estimate.throughput_per_replica is None
    assert estimate.note is not None and estimate.note.startswith("profile ran on CPU, not on the pool's accelerator")


def test_no_usable_figures_is_an_error_that_keeps_the_notes() -> None:
    with pytest.raises(NoCandidate) as raised:
        decide(slo(20, 50), [cpu(None, "still failing"), gpu(None, "no GPU")])
    assert [estimate.note for estimate in raised.value.estimates] == ["still failing", "no GPU"]


def test_equal_cost_goes_to_the_lower_power_draw_then_to_the_cpu_pool() -> None:
    same = Profile(1.0, 1_000)
    cheap_power = Candidate("gpu", 1.0, 50.0, accelerator=True, profile=Profile(1.0, 1_000, device="cuda"))
    assert decide(slo(20, 50), [cpu(same), cheap_power]).pool == "gpu"
    equal_power = Candidate("gpu", 1.0, CPU_WATTS, accelerator=True, profile=Profile(0.5, 1_000, device="cuda"))
    assert decide(slo(20, 50), [equal_power, cpu(same)]).pool == "cpu"


def test_replicas_min_is_a_floor_and_priced() -> None:
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)], min_replicas=3)
    assert (decision.pool, decision.replicas, decision.cost_per_hour) == ("cpu", 3, 3.0)


def test_the_decision_is_a_placement_status() -> None:
    decision = decide(slo(20, 50), [cpu(RESNET_CPU), gpu(RESNET_GPU)])
    status = PlacementStatus.model_validate(decision.status().to_wire())
    assert status.pool == "cpu" and status.cost_per_hour == 1.0 and len(status.candidates) == 2
    assert status.candidates[1].replicas == 1 and status.candidates[1].cost_per_hour == 5.0


def test_replicas_needed_rounds_up_but_not_on_float_noise() -> None:
    assert replicas_needed(50, 322, 0.8) == 1
    assert replicas_needed(322 * 0.8 * 2, 322, 0.8) == 2
    assert replicas_needed(322 * 0.8 * 2 + 1, 322, 0.8) == 3


def test_replica_rates_from_pool_prices_and_power() -> None:
    gpu_pool = ComputePoolSpec.model_validate(
        {
            "nodeSelector": {"pool": "gpu"},
            "accelerator": "nvidia.com/gpu",
            "price": {"acceleratorHour": 4.0, "coreHour": 0.0625, "nodeHour": 10},
            "power": {"wattsPerAccelerator": 700, "wattsPerCore": 8},
        }
    )
    assert replica_rates(16, 1, gpu_pool) == (GPU_PRICE, GPU_WATTS)
    assert replica_rates(16, 0, gpu_pool) == (CPU_PRICE, CPU_WATTS)


def test_the_ledger_adds_replicas_times_requests_times_time() -> None:
    pool = ComputePoolSpec.model_validate(
        {"nodeSelector": {"pool": "cpu"}, "price": {"coreHour": 0.04}, "power": {"wattsPerCore": 8}}
    )
    since = datetime(2024, 5, 1, 12, tzinfo=UTC)
    start = Usage(core_seconds=100, estimated_cost=0.001, energy_wh=0.2)
    grown = accrue(start, since, since + timedelta(minutes=30), replicas=2, cores=2, accelerators=0, pool=pool)
    # 2 replicas x 2 cores x 1800 s = 7200 core-seconds = 2 core-hours: 0.08 at 0.04/h, 16 Wh at 8 W.
    assert grown == Usage(core_seconds=7300, estimated_cost=0.081, energy_wh=16.2)
    assert accrue(start, None, since, 2, 2, 0, pool) == start
    assert accrue(start, since, since - timedelta(seconds=5), 2, 2, 0, pool) == start
    assert accrue(start, since, since + timedelta(hours=1), 0, 2, 0, pool) == start
