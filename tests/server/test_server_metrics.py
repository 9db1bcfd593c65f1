"""The server's own metrics, as Prometheus and an autoscaler read them."""

from __future__ import annotations

from prometheus_client import generate_latest

from tandem.server.metrics import ServerMetrics


def test_a_loaded_model_reports_its_request_series_at_zero_before_any_request() -> None:
    """prometheus-adapter serves no value for a pod without the series, and an HPA missing a pod's value does
    not scale in: a replica that no request reached yet must report a rate of 0, not nothing."""
    metrics = ServerMetrics()
    metrics.serving("digits")
    exposed = generate_latest(metrics.registry).decode()
    assert 'tandem_inference_requests_total{code="200",model="digits"} 0.0' in exposed
    assert 'tandem_inference_in_flight{model="digits"} 0.0' in exposed


def test_a_request_counts_on_the_series_the_load_created() -> None:
    metrics = ServerMetrics()
    metrics.serving("digits")
    metrics.started("digits")
    metrics.finished("digits", 200, 0.01)
    exposed = generate_latest(metrics.registry).decode()
    assert 'tandem_inference_requests_total{code="200",model="digits"} 1.0' in exposed
    assert 'tandem_inference_in_flight{model="digits"} 0.0' in exposed
