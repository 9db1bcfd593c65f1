"""The chart's alerts, judged by Prometheus' own rule engine (`promtool test rules`) on series shaped as the
operator and the servers export them: each fires for what it names, names the resource, and stays quiet for
the healthy neighbour beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pkgtools import find, render

from support.tools import run, tool

RUNBOOK = "https://github.com/tandem-dev/tandem/blob/main/docs/alerts.md"
OPERATOR_JOB = "tandem-metrics"
"""The scrape job of the operator's metrics Service for release `tandem` (the ServiceMonitor's job label)."""


@pytest.fixture(scope="module")
def promtool() -> Path:
    path = tool("promtool")
    if path is None:
        pytest.skip("promtool not found: run hack/build-metrics.sh")
    return path


@pytest.fixture(scope="module")
def rules(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups as the chart renders them with its defaults, as a Prometheus rule file."""
    (rule,) = find(render(helm, {"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "tandem-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def alerts_test(
    rules: Path, series: dict[str, str], alert: str, expected: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """A promtool test file: `series` (one sample a minute) and, per evaluation time, the alerts expected then."""
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": values} for name, values in series.items()],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert, "exp_alerts": alerts} for at, alerts in expected.items()
                ],
            }
        ],
    }


def firing(labels: dict[str, str], summary: str, description: str, anchor: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description, "runbook_url": f"{RUNBOOK}#{anchor}"},
    }


CASES: dict[str, tuple[dict[str, str], dict[str, list[dict[str, Any]]]]] = {
    "TandemTrainingJobFailed": (
        {
            'tandem_resource_phase{kind="TrainingJob",namespace="ml",name="broken",phase="Failed"}': "_ _ 1x10",
            'tandem_resource_phase{kind="TrainingJob",namespace="ml",name="fine",phase="Succeeded"}': "1x12",
        },
        {
            "2m": [],  # failed a moment ago: pending for 1m
            "4m": [
                firing(
                    {"severity": "warning", "namespace": "ml", "name": "broken"},
                    "TrainingJob ml/broken failed.",
                    "Its status.conditions and events say why; kubectl describe trainingjob -n ml broken.",
                    "tandemtrainingjobfailed",
                )
            ],
        },
    ),
    "TandemTrainingJobQueuedTooLong": (
        {
            'tandem_resource_phase{kind="TrainingJob",namespace="ml",name="waiting",phase="Queued"}': "1x45",
            'tandem_resource_phase{kind="TrainingJob",namespace="ml",name="admitted",phase="Queued"}': "1x10",
            'tandem_resource_phase{kind="TrainingJob",namespace="ml",name="admitted",phase="Running"}': "_x10 1x35",
        },
        {
            "20m": [],
            "40m": [
                firing(
                    {"severity": "warning", "namespace": "ml", "name": "waiting"},
                    "TrainingJob ml/waiting has waited in its queue for 30m.",
                    "Kueue has not admitted it: its LocalQueue's ClusterQueue lacks quota, or higher-priority runs "
                    "hold it.",
                    "tandemtrainingjobqueuedtoolong",
                )
            ],
        },
    ),
    "TandemInferenceServiceOverLatencySlo": (
        {
            # "slow": every request between 50 and 250 ms, so its p99 is 248 ms against a 100 ms bound.
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="slow",le="0.05"}': "0x30",
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="slow",le="0.25"}': "0+60x30",
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="slow",le="+Inf"}': "0+60x30",
            # "fast": every request within 50 ms, under the same bound.
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="fast",le="0.05"}': "0+60x30",
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="fast",le="0.25"}': "0+60x30",
            'tandem_inference_request_duration_seconds_bucket{namespace="ml",model="fast",le="+Inf"}': "0+60x30",
            'tandem_inferenceservice_slo_p99_seconds{namespace="ml",inferenceservice="slow",job="tandem-metrics"}':
                "0.1x30",
            'tandem_inferenceservice_slo_p99_seconds{namespace="ml",inferenceservice="fast",job="tandem-metrics"}':
                "0.1x30",
        },
        {
            "4m": [],  # over the bound since the first rate (1m), pending for the 5m window
            "15m": [
                firing(
                    {"severity": "warning", "namespace": "ml", "model": "slow"},
                    "InferenceService ml/slow answers slower than its SLO's p99 (248ms).",
                    "Measured over 5m by its servers; its spec.slo.p99LatencyMs is the bound.",
                    "tandeminferenceserviceoverlatencyslo",
                )
            ],
        },
    ),
    "TandemInferenceServiceErrors": (
        {
            'tandem_inference_requests_total{namespace="ml",model="failing",code="200"}': "0+90x20",
            'tandem_inference_requests_total{namespace="ml",model="failing",code="500"}': "0+10x20",
            # Refused input is the client's mistake, not the server's: a service answering 400 often is healthy.
            'tandem_inference_requests_total{namespace="ml",model="refusing",code="200"}': "0+50x20",
            'tandem_inference_requests_total{namespace="ml",model="refusing",code="400"}': "0+50x20",
        },
        {
            "15m": [
                firing(
                    {"severity": "warning", "namespace": "ml", "model": "failing"},
                    "InferenceService ml/failing answers 10% of its requests with a server error.",
                    "Server errors (5xx) are the server's or the model's failures, not refused input (4xx).",
                    "tandeminferenceserviceerrors",
                )
            ],
        },
    ),
    "TandemCanaryRolledBack": (
        {
            # Counted from 0 when the operator first sees a service, so the first rollback is an increase.
            'tandem_canary_rollbacks_total{namespace="ml",inferenceservice="digits",job="tandem-metrics"}':
                "0 0 0 1x40",
            'tandem_canary_rollbacks_total{namespace="ml",inferenceservice="steady",job="tandem-metrics"}': "0x43",
        },
        {
            "2m": [],
            "5m": [
                firing(
                    {"severity": "info", "namespace": "ml", "inferenceservice": "digits"},
                    "A new model of InferenceService ml/digits was rolled back.",
                    "Its Canary condition says which model and why; the previous model keeps serving.",
                    "tandemcanaryrolledback",
                )
            ],
            "40m": [],  # nothing rolled back in the last 15 minutes
        },
    ),
    "TandemOperatorReconcileErrors": (
        {
            'tandem_reconcile_total{kind="TrainingJob",result="error"}': "0+5x40",
            'tandem_reconcile_total{kind="TrainingJob",result="success"}': "0+5x40",
        },
        {
            "10m": [],  # failing for less than 15 minutes
            "25m": [
                firing(
                    {"severity": "warning"},
                    "50% of the Tandem operator's reconciles fail.",
                    "The operator's log names each failing resource; its events say what the API server refused.",
                    "tandemoperatorreconcileerrors",
                )
            ],
        },
    ),
    "TandemOperatorDown": (
        {f'up{{job="{OPERATOR_JOB}",instance="10.0.0.7:8000"}}': "1x10 0x20"},
        {
            "8m": [],
            "14m": [],  # down for 4 minutes: pending
            "20m": [
                firing(
                    {"severity": "critical"},
                    "No Tandem operator answers its metrics scrape: nothing reconciles TrainingJobs, "
                    "InferenceServices or ComputePools.",
                    f"Scrape job {OPERATOR_JOB}.",
                    "tandemoperatordown",
                )
            ],
        },
    ),
}


@pytest.mark.parametrize("alert", CASES)
def test_each_alert_fires_for_the_resource_it_names_and_not_for_its_healthy_neighbour(
    promtool: Path, rules: Path, tmp_path: Path, alert: str
) -> None:
    series, expected = CASES[alert]
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(alerts_test(rules, series, alert, expected), width=1000))
    run([promtool, "test", "rules", test_file])


def test_every_alert_of_the_chart_is_tested_and_has_a_runbook(rules: Path) -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(rules.read_text())["groups"] for rule in group["rules"]
              if "alert" in rule}  # fmt: skip
    assert alerts == set(CASES)
    runbooks = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    for alert in alerts:
        assert f"### {alert}\n" in runbooks
