"""Gang admission without a queue: a run's workers start only when all of them fit the pool at once."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tandem.decide.gang import gang_fit, pod_requests, schedulable, tolerates

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
WORKER = {"cpu": Decimal(2), "memory": Decimal(4 * 2**30), "nvidia.com/gpu": Decimal(1), "pods": Decimal(1)}


def node(name: str, cpu: str = "2", gpus: int = 4, ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"taints": [GPU_TAINT], **spec},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"cpu": cpu, "memory": "16Gi", "nvidia.com/gpu": str(gpus), "pods": "110"},
        },
    }


def pod(cpu: str, node_name: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"metadata": {"name": "p"}, "spec": spec}


def test_a_gang_that_fits_whole_is_admitted() -> None:
    fit = gang_fit(WORKER, 2, [node("a"), node("b")], [GPU_TOLERATION], [], [])
    assert fit.fits and fit.placed == 2


def test_a_pool_with_room_for_part_of_a_gang_holds_it_and_says_what_it_needs_and_has() -> None:
    fit = gang_fit(WORKER, 2, [node("real-gpu-0")], [GPU_TOLERATION], [], [])
    assert not fit.fits
    assert fit.placed == 1
    assert "all 2 workers of cpu 2, memory 4Gi, nvidia.com/gpu 1 each" in fit.message
    assert "only 1 fit now" in fit.message
    assert "real-gpu-0 cpu 2, memory 16Gi, nvidia.com/gpu 4" in fit.message


def test_pods_bound_to_the_nodes_keep_their_requests() -> None:
    fit = gang_fit(WORKER, 2, [node("a", cpu="4")], [GPU_TOLERATION], [pod("500m", "a")], [])
    assert not fit.fits and fit.placed == 1
    assert "a cpu 3500m" in fit.message


def test_a_gang_started_a_moment_ago_and_not_yet_bound_is_placed_first() -> None:
    fit = gang_fit(WORKER, 1, [node("a")], [GPU_TOLERATION], [], [pod("2")])
    assert not fit.fits


def test_only_ready_uncordoned_nodes_whose_taints_are_tolerated_count() -> None:
    nodes = [node("down", ready=False), node("cordoned", unschedulable=True), node("tainted")]
    assert not gang_fit(WORKER, 1, nodes, [], [], []).fits
    fit = gang_fit(WORKER, 1, nodes[:2], [GPU_TOLERATION], [], [])
    assert not fit.fits and "none of its 2 nodes is Ready and schedulable" in fit.message
    assert "it has no nodes" in gang_fit(WORKER, 1, [], [], [], []).message


def test_tolerations_match_as_kubernetes_matches_them() -> None:
    assert tolerates([{"operator": "Exists"}], GPU_TAINT)
    assert tolerates([{"key": "nvidia.com/gpu", "operator": "Exists"}], GPU_TAINT)
    assert not tolerates([{"key": "nvidia.com/gpu", "value": "absent"}], GPU_TAINT)
    assert not tolerates([{**GPU_TOLERATION, "effect": "NoExecute"}], GPU_TAINT)
    assert schedulable(node("a", taints=[{"key": "k", "effect": "PreferNoSchedule"}]), [])


def test_a_pod_reserves_its_requests_limits_standing_in_and_the_largest_init_container() -> None:
    spec = {
        "containers": [
            {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
            {"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "3"}}}],
        "overhead": {"memory": "100Mi"},
    }
    requests = pod_requests(spec)
    assert requests["cpu"] == Decimal(3)
    assert requests["memory"] == Decimal(2**30 + 100 * 2**20)
    assert requests["pods"] == Decimal(1)
