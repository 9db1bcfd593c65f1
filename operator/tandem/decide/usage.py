"""Accelerator and core seconds from pod lifetimes, priced by the pool's ComputePool."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tandem.api.common import Usage
from tandem.api.computepool import ComputePoolSpec
from tandem.quantity import parse_quantity


def _timestamp(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def pod_seconds(pod: dict[str, Any], now: datetime) -> float:
    """Seconds the pod has run: from its start to its last container's finish, or to now."""
    status = pod.get("status") or {}
    started = _timestamp(status.get("startTime"))
    if started is None:
        return 0.0
    finishes = [
        _timestamp(((container.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for container in status.get("containerStatuses") or []
    ]
    ended = max((finish for finish in finishes if finish is not None), default=None)
    if ended is None and status.get("phase") in ("Succeeded", "Failed"):
        ended = started
    return max(0.0, ((ended or now) - started).total_seconds())


def pod_requests(pod: dict[str, Any], accelerator: str) -> tuple[float, float]:
    """(accelerators, cores) that the pod's containers request."""
    accelerators = cores = 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        requests = (container.get("resources") or {}).get("requests") or {}
        if accelerator and accelerator in requests:
            accelerators += float(parse_quantity(requests[accelerator]))
        if "cpu" in requests:
            cores += float(parse_quantity(requests["cpu"]))
    return accelerators, cores


def priced(gpu_seconds: float, core_seconds: float, pool: ComputePoolSpec | None) -> Usage:
    if pool is None:
        return Usage(gpu_seconds=gpu_seconds, core_seconds=core_seconds)
    cost = gpu_seconds / 3600 * pool.price.accelerator_hour + core_seconds / 3600 * pool.price.core_hour
    energy = gpu_seconds / 3600 * pool.power.watts_per_accelerator + core_seconds / 3600 * pool.power.watts_per_core
    return Usage(
        gpu_seconds=round(gpu_seconds, 3),
        core_seconds=round(core_seconds, 3),
        estimated_cost=round(cost, 6),
        energy_wh=round(energy, 6),
    )


def pods_usage(pods: Iterable[dict[str, Any]], pool: ComputePoolSpec | None, now: datetime) -> Usage:
    """What the pods used so far, priced by the pool."""
    accelerator = pool.accelerator if pool is not None else ""
    gpu_seconds = core_seconds = 0.0
    for pod in pods:
        seconds = pod_seconds(pod, now)
        accelerators, cores = pod_requests(pod, accelerator)
        gpu_seconds += seconds * accelerators
        core_seconds += seconds * cores
    return priced(gpu_seconds, core_seconds, pool)


def add(total: Usage, delta: Usage) -> Usage:
    return Usage(
        gpu_seconds=round(total.gpu_seconds + delta.gpu_seconds, 3),
        core_seconds=round(total.core_seconds + delta.core_seconds, 3),
        estimated_cost=round(total.estimated_cost + delta.estimated_cost, 6),
        energy_wh=round(total.energy_wh + delta.energy_wh, 6),
    )


def subtract(total: Usage, part: Usage) -> Usage:
    return Usage(
        gpu_seconds=max(0.0, round(total.gpu_seconds - part.gpu_seconds, 3)),
        core_seconds=max(0.0, round(total.core_seconds - part.core_seconds, 3)),
        estimated_cost=max(0.0, round(total.estimated_cost - part.estimated_cost, 6)),
        energy_wh=max(0.0, round(total.energy_wh - part.energy_wh, 6)),
    )
