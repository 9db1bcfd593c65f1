from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tandem.api.common import ConditionStatus
from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus
from tandem.api.conditions import find, has_ready_condition, is_true, set_condition
from tandem.status.pools import matches, pool_status


def test_new_condition_is_appended_with_now(now: datetime) -> None:
    conditions = set_condition([], "Ready", True, "RolloutComplete", "1 replica ready", 4, now)
    [condition] = conditions
    assert (condition.type, condition.status, condition.reason) == ("Ready", ConditionStatus.TRUE, "RolloutComplete")
    assert condition.last_transition_time == now
    assert condition.observed_generation == 4


def test_unchanged_status_keeps_its_transition_time(now: datetime) -> None:
    later = now + timedelta(minutes=5)
    first = set_condition([], "Ready", False, "RollingOut", "0 of 1", 1, now)
    second = set_condition(first, "Ready", False, "RollingOut", "still 0 of 1", 2, later)
    [condition] = second
    assert condition.last_transition_time == now
    assert condition.message == "still 0 of 1"
    assert condition.observed_generation == 2


def test_changed_status_updates_its_transition_time(now: datetime) -> None:
    later = now + timedelta(minutes=5)
    first = set_condition([], "Ready", False, "RollingOut", "0 of 1", 1, now)
    [condition] = set_condition(first, "Ready", True, "RolloutComplete", "1 ready", 1, later)
    assert condition.last_transition_time == later


def test_setting_one_condition_keeps_the_others_in_order(now: datetime) -> None:
    conditions = set_condition([], "ModelResolved", True, "ModelFound", "", 1, now)
    conditions = set_condition(conditions, "Ready", False, "RollingOut", "", 1, now)
    conditions = set_condition(conditions, "ModelResolved", False, "WaitingForModel", "", 1, now)
    assert [condition.type for condition in conditions] == ["ModelResolved", "Ready"]
    assert not is_true(conditions, "ModelResolved")
    assert find(conditions, "Ready") is not None
    assert find(conditions, "Missing") is None


def test_explicit_unknown_status_is_kept(now: datetime) -> None:
    [condition] = set_condition([], "Ready", ConditionStatus.UNKNOWN, "Probing", "", None, now)
    assert condition.status == ConditionStatus.UNKNOWN
    assert not is_true([condition], "Ready")


def _node(pool: str, ready: bool = True, amounts: dict[str, str] | None = None) -> dict[str, Any]:
    amounts = {"cpu": "4", "memory": "16Gi", **(amounts or {})}
    return {
        "metadata": {"labels": {"tandem.dev/pool": pool}},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "capacity": dict(amounts),
            "allocatable": dict(amounts),
        },
    }


def test_pool_counts_matching_and_ready_nodes(pools: dict[str, ComputePoolSpec], now: datetime) -> None:
    nodes = [_node("gpu"), _node("gpu", ready=False), _node("cpu")]
    status = pool_status(ComputePoolStatus(), 3, pools["gpu"], nodes, now)
    assert (status.nodes, status.ready_nodes) == (2, 1)
    assert status.observed_generation == 3
    assert is_true(status.conditions, "Ready")


def test_pool_sums_allocatable_of_ready_nodes(pools: dict[str, ComputePoolSpec], now: datetime) -> None:
    nodes = [
        _node("gpu", amounts={"nvidia.com/gpu": "8", "cpu": "3500m"}),
        _node("gpu", amounts={"nvidia.com/gpu": "8", "cpu": "3500m"}),
        _node("gpu", ready=False, amounts={"nvidia.com/gpu": "8"}),
    ]
    status = pool_status(ComputePoolStatus(), 1, pools["gpu"], nodes, now)
    assert status.allocatable.model_dump() == {"cpu": "7", "memory": "32Gi", "accelerators": 16}
    assert status.capacity.accelerators == 24


def test_cpu_pool_counts_no_accelerators(pools: dict[str, ComputePoolSpec], now: datetime) -> None:
    status = pool_status(ComputePoolStatus(), 1, pools["cpu"], [_node("cpu", amounts={"nvidia.com/gpu": "1"})], now)
    assert status.allocatable.accelerators == 0
    assert status.allocatable.cpu == "4"


def test_pool_without_ready_nodes_is_not_ready(pools: dict[str, ComputePoolSpec], now: datetime) -> None:
    status = pool_status(ComputePoolStatus(), 1, pools["cpu"], [_node("cpu", ready=False)], now)
    ready = find(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == (ConditionStatus.FALSE, "NoReadyNodes")
    assert status.allocatable.cpu == "0"


def test_node_matches_only_with_every_selector_label(pools: dict[str, ComputePoolSpec]) -> None:
    pool = pools["gpu"].model_copy(update={"node_selector": {"tandem.dev/pool": "gpu", "zone": "a"}})
    assert not matches(pool, _node("gpu"))
    node = _node("gpu")
    node["metadata"]["labels"]["zone"] = "a"
    assert matches(pool, node)


def test_node_without_status_is_not_ready() -> None:
    assert not has_ready_condition({"metadata": {"name": "n"}})
