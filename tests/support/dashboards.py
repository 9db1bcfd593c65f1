"""The chart's Grafana dashboards as the tests read them: every panel's PromQL, with Grafana's variables
given the values a dashboard opened on all namespaces gives them."""

from __future__ import annotations

import json
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "charts" / "tandem" / "dashboards"
VARIABLES = {"$__rate_interval": "2m", "$namespace": ".*", "${datasource}": "prometheus"}
"""Grafana's substitutions: the rate window (at least four scrapes of the local cluster's Prometheus), the
namespace variable set to All (its allValue), the data source."""


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL) for every target of every panel."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((dashboard["title"], panel["title"], expr))
    return found
