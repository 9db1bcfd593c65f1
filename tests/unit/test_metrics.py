"""tandem_resources counts each live resource once, forgets deleted ones and drops empty phase series; the
per-resource series that alerts name (phase, SLO bound, canary rollbacks) follow each resource and go with it."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import REGISTRY

from tandem.controller import metrics


def _count(kind: str, phase: str) -> float | None:
    return REGISTRY.get_sample_value("tandem_resources", {"kind": kind, "phase": phase})


def test_a_phase_change_moves_the_resource_between_series() -> None:
    metrics.record_phase("MetricsKindA", "ml", "a", "Pending")
    metrics.record_phase("MetricsKindA", "ml", "b", "Pending")
    metrics.record_phase("MetricsKindA", "ml", "a", "Running")
    assert _count("MetricsKindA", "Pending") == 1
    assert _count("MetricsKindA", "Running") == 1


def test_a_deleted_resource_is_no_longer_counted() -> None:
    metrics.record_phase("MetricsKindB", "ml", "a", "Running")
    metrics.record_phase("MetricsKindB", "ml", "b", "Running")
    metrics.forget("MetricsKindB", "ml", "a")
    assert _count("MetricsKindB", "Running") == 1


def test_a_phase_nobody_is_in_any_more_has_no_series() -> None:
    metrics.record_phase("MetricsKindC", "ml", "a", "Pending")
    metrics.record_phase("MetricsKindC", "ml", "a", "Succeeded")
    assert _count("MetricsKindC", "Pending") is None
    metrics.forget("MetricsKindC", "ml", "a")
    assert _count("MetricsKindC", "Succeeded") is None


def test_forgetting_an_unknown_resource_changes_nothing() -> None:
    metrics.record_phase("MetricsKindD", "ml", "a", "Ready")
    metrics.forget("MetricsKindD", "ml", "never-seen")
    assert _count("MetricsKindD", "Ready") == 1




def _phase_of(kind: str, name: str, phase: str) -> float | None:
    labels = {"kind": kind, "namespace": "ml", "name": name, "phase": phase}
    return REGISTRY.get_sample_value("tandem_resource_phase", labels)


def test_each_resource_has_one_phase_series_which_moves_with_it_and_goes_when_it_is_deleted() -> None:
    metrics.record_phase("MetricsKindF", "ml", "a", "Queued")
    metrics.record_phase("MetricsKindF", "ml", "a", "Queued")
    assert _phase_of("MetricsKindF", "a", "Queued") == 1
    metrics.record_phase("MetricsKindF", "ml", "a", "Failed")
    assert _phase_of("MetricsKindF", "a", "Queued") is None
    assert _phase_of("MetricsKindF", "a", "Failed") == 1
    metrics.forget("MetricsKindF", "ml", "a")
    assert _phase_of("MetricsKindF", "a", "Failed") is None


def _service_sample(metric: str, name: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"namespace": "ml", "inferenceservice": name})


def test_a_service_reports_its_slo_bound_in_seconds_until_the_slo_is_removed() -> None:
    metrics.record_service("ml", "slo", {"slo": {"p99LatencyMs": 250, "targetRequestsPerSecond": 10}}, 0)
    assert _service_sample("tandem_inferenceservice_slo_p99_seconds", "slo") == 0.25
    metrics.record_service("ml", "slo", {}, 0)
    assert _service_sample("tandem_inferenceservice_slo_p99_seconds", "slo") is None


def test_canary_rollbacks_start_at_zero_count_each_rollback_and_go_with_the_service() -> None:
    metrics.record_service("ml", "canary", {}, 0)
    assert _service_sample("tandem_canary_rollbacks_total", "canary") == 0
    metrics.record_service("ml", "canary", {}, 1)
    assert _service_sample("tandem_canary_rollbacks_total", "canary") == 1
    metrics.forget("InferenceService", "ml", "canary")
    assert _service_sample("tandem_canary_rollbacks_total", "canary") is None



def test_a_workloads_usage_counters_exist_from_its_first_ledger_even_where_nothing_grew() -> None:
    ledger = {"gpuSeconds": 0, "coreSeconds": 12.5, "estimatedCost": 0.01, "energyWh": 0.2}
    metrics.record_usage("MetricsKindG", "ml", "cpu", {}, ledger)
    labels = {"namespace": "ml", "pool": "cpu", "kind": "MetricsKindG"}
    assert REGISTRY.get_sample_value("tandem_gpu_seconds_total", labels) == 0
    assert REGISTRY.get_sample_value("tandem_core_seconds_total", labels) == 12.5
    metrics.record_usage("MetricsKindH", "", "", {}, {})  # no ledger (a ComputePool): no series
    assert REGISTRY.get_sample_value("tandem_gpu_seconds_total", {**labels, "kind": "MetricsKindH", "pool": ""}) is None


class _HeldRemoval:
    """tandem_resources whose first series removal holds until another phase was recorded, or a second passed.

    Unguarded, a second worker's record lands inside that window: it counts the resource in a series that the
    removal then deletes. Guarded, the second worker waits for the removal and the second passes unused."""

    def __init__(self, gauge: object) -> None:
        self._gauge = gauge
        self.inside = threading.Event()
        self.other_recorded = threading.Event()

    def labels(self, *values: str) -> object:
        return self._gauge.labels(*values)  # type: ignore[attr-defined]

    def remove(self, *values: str) -> None:
        if not self.inside.is_set():
            self.inside.set()
            self.other_recorded.wait(timeout=1.0)
        self._gauge.remove(*values)  # type: ignore[attr-defined]


def test_a_phase_recorded_while_another_worker_drops_its_series_is_still_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = _HeldRemoval(metrics.RESOURCES)
    monkeypatch.setattr(metrics, "RESOURCES", held)
    metrics.record_phase("MetricsKindE", "ml", "a", "Pending")
    leaving = threading.Thread(target=metrics.forget, args=("MetricsKindE", "ml", "a"))
    leaving.start()
    assert held.inside.wait(timeout=30)

    def arrive() -> None:
        metrics.record_phase("MetricsKindE", "ml", "b", "Pending")
        held.other_recorded.set()

    arriving = threading.Thread(target=arrive)
    arriving.start()
    leaving.join()
    arriving.join()
    assert _count("MetricsKindE", "Pending") == 1
