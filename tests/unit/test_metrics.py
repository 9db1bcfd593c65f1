"""tandem_resources counts each live resource once, forgets deleted ones and drops empty phase series."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tandem import metrics


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
