"""The operator's Prometheus metrics, named and labelled as Prometheus conventions ask."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "tandem_reconcile_total", "Reconciliations by resource kind and result.", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "tandem_reconcile_duration_seconds",
    "Time to reconcile one resource.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESOURCES = Gauge("tandem_resources", "Resources by kind and phase.", ["kind", "phase"])
GPU_SECONDS = Counter(
    "tandem_gpu_seconds_total", "Accelerator-seconds used by workloads.", ["namespace", "pool", "kind"]
)
CORE_SECONDS = Counter(
    "tandem_core_seconds_total", "CPU core-seconds used by workloads.", ["namespace", "pool", "kind"]
)
COST = Counter(
    "tandem_estimated_cost_total", "Estimated cost of workloads, in the pools' currency.", ["namespace", "pool", "kind"]
)
ENERGY = Counter("tandem_energy_watt_hours_total", "Estimated energy of workloads.", ["namespace", "pool", "kind"])

_phases: dict[tuple[str, str, str], str] = {}
_counts: dict[tuple[str, str], int] = {}
_phases_lock = threading.Lock()
"""The reconcile workers record phases concurrently; the count and its series move together under it.

These three are the memory of the tandem_resources gauge and, like it (prometheus_client registers metrics in one
registry per process), process-wide: the only state of tandem.controller kept outside the operator's Controller."""


@contextmanager
def reconciling(kind: str) -> Iterator[None]:
    """Count and time one reconciliation; an exception counts as an error and propagates."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "success").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Track one resource's phase so that tandem_resources counts each resource once."""
    with _phases_lock:
        _move(kind, (kind, namespace, name), phase)


def _move(kind: str, key: tuple[str, str, str], phase: str | None) -> None:
    old = _phases.pop(key, None)
    if old is not None:
        _counts[(kind, old)] -= 1
        if _counts[(kind, old)] == 0:  # no resource in that phase: drop the series rather than report 0 forever
            del _counts[(kind, old)]
            RESOURCES.remove(kind, old)
        else:
            RESOURCES.labels(kind, old).dec()
    if phase is not None:
        _phases[key] = phase
        _counts[(kind, phase)] = _counts.get((kind, phase), 0) + 1
        RESOURCES.labels(kind, phase).inc()


def record_usage(kind: str, namespace: str, pool: str, before: dict[str, float], after: dict[str, float]) -> None:
    """Add the growth of a status.usage block to the usage counters."""
    for counter, key in (
        (GPU_SECONDS, "gpuSeconds"),
        (CORE_SECONDS, "coreSeconds"),
        (COST, "estimatedCost"),
        (ENERGY, "energyWh"),
    ):
        delta = float(after.get(key, 0) or 0) - float(before.get(key, 0) or 0)
        if delta > 0:
            counter.labels(namespace, pool, kind).inc(delta)


def forget(kind: str, namespace: str, name: str) -> None:
    """A deleted resource no longer counts in tandem_resources."""
    record_phase(kind, namespace, name, None)
