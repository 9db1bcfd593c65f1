"""The operator's Prometheus metrics, named and labelled as Prometheus conventions ask.

Counts by kind and phase serve dashboards; the per-resource series (phase, SLO, canary rollbacks) serve the
chart's alerts, which must name the resource they are about (docs/alerts.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

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
RESOURCE_PHASE = Gauge(
    "tandem_resource_phase",
    "1 for the phase each resource is in now, one series per resource (as kube_pod_status_phase).",
    ["kind", "namespace", "name", "phase"],
)
SLO_P99_SECONDS = Gauge(
    "tandem_inferenceservice_slo_p99_seconds",
    "The p99 latency bound of each InferenceService's spec.slo; the servers' own latency is compared with it.",
    ["namespace", "inferenceservice"],
)
CANARY_ROLLBACKS = Counter(
    "tandem_canary_rollbacks",
    "Canary models rolled back, by InferenceService; starts at 0 when the operator first sees the service, so "
    "that the first rollback is an increase.",
    ["namespace", "inferenceservice"],
)

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
    """Track one resource's phase: tandem_resources counts each resource once, tandem_resource_phase names it."""
    with _phases_lock:
        _move(kind, (kind, namespace, name), phase)


def _move(kind: str, key: tuple[str, str, str], phase: str | None) -> None:
    old = _phases.pop(key, None)
    if old is not None and old != phase:
        RESOURCE_PHASE.remove(*key, old)
    if phase is not None:
        RESOURCE_PHASE.labels(*key, phase).set(1)
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
    """Add the growth of a status.usage block to the usage counters.

    Each counter of a workload with a ledger exists from its first record, at 0 where nothing grew (a CPU pool's
    accelerator seconds): a rate over it is then 0, not absent, and its first growth is an increase."""
    if not after:
        return
    for counter, key in (
        (GPU_SECONDS, "gpuSeconds"),
        (CORE_SECONDS, "coreSeconds"),
        (COST, "estimatedCost"),
        (ENERGY, "energyWh"),
    ):
        child = counter.labels(namespace, pool, kind)
        delta = float(after.get(key, 0) or 0) - float(before.get(key, 0) or 0)
        if delta > 0:
            child.inc(delta)


def record_service(namespace: str, name: str, spec: Mapping[str, Any], rolled_back: int) -> None:
    """An InferenceService's SLO bound (none: no series) and the canary rollbacks of one reconcile."""
    p99_ms = (spec.get("slo") or {}).get("p99LatencyMs")
    if p99_ms is None:
        _remove(SLO_P99_SECONDS, namespace, name)
    else:
        SLO_P99_SECONDS.labels(namespace, name).set(float(p99_ms) / 1000)
    CANARY_ROLLBACKS.labels(namespace, name).inc(rolled_back)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    with suppress(KeyError):  # never recorded
        metric.remove(*labels)


def forget(kind: str, namespace: str, name: str) -> None:
    """A deleted resource no longer counts in tandem_resources, and its own series go."""
    record_phase(kind, namespace, name, None)
    if kind == "InferenceService":
        _remove(SLO_P99_SECONDS, namespace, name)
        _remove(CANARY_ROLLBACKS, namespace, name)
