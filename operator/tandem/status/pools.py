"""ComputePool status from the nodes that match its selector."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus, ResourceTotals
from tandem.api.conditions import has_ready_condition, set_condition
from tandem.quantity import format_cpu, format_memory, parse_quantity


def node_summary(name: str, labels: Mapping[str, str], status: Mapping[str, Any]) -> dict[str, Any]:
    """What pool status needs of a node, in the node's own shape: labels, Ready, capacity and allocatable.

    The operator keeps this for every node from one watch instead of listing nodes per pool per pass; images,
    addresses and the other conditions (most of a node's size) are dropped.
    """
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return {
        "metadata": {"name": name, "labels": dict(labels)},
        "status": {
            "conditions": [{"type": "Ready", "status": c.get("status")} for c in ready],
            "capacity": dict(status.get("capacity") or {}),
            "allocatable": dict(status.get("allocatable") or {}),
        },
    }


def selected(selector: Mapping[str, str], node: Mapping[str, Any]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def matches(pool: ComputePoolSpec, node: dict[str, Any]) -> bool:
    return selected(pool.node_selector, node)


def _totals(nodes: list[dict[str, Any]], field: str, accelerator: str) -> ResourceTotals:
    cpu = memory = Decimal(0)
    accelerators = 0
    for node in nodes:
        amounts = (node.get("status") or {}).get(field) or {}
        cpu += parse_quantity(amounts.get("cpu", "0"))
        memory += parse_quantity(amounts.get("memory", "0"))
        if accelerator:
            accelerators += int(parse_quantity(amounts.get(accelerator, "0")))
    return ResourceTotals(cpu=format_cpu(cpu), memory=format_memory(memory), accelerators=accelerators)


def pool_status(
    previous: ComputePoolStatus, generation: int, pool: ComputePoolSpec, nodes: list[dict[str, Any]], now: datetime
) -> ComputePoolStatus:
    members = [node for node in nodes if matches(pool, node)]
    ready = [node for node in members if has_ready_condition(node)]
    conditions = set_condition(
        previous.conditions,
        "Ready",
        bool(ready),
        "NodesReady" if ready else "NoReadyNodes",
        f"{len(ready)} of {len(members)} nodes ready",
        generation,
        now,
    )
    return ComputePoolStatus(
        nodes=len(members),
        ready_nodes=len(ready),
        capacity=_totals(members, "capacity", pool.accelerator),
        allocatable=_totals(ready, "allocatable", pool.accelerator),
        conditions=conditions,
        observed_generation=generation,
    )
