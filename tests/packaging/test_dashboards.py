"""The chart's Grafana dashboards: valid PromQL in every panel (judged by Prometheus' own parser, `promtool check
rules`), shipped as ConfigMaps that Grafana's dashboard sidecar picks up. tests/e2e/test_autoscaling.py runs every
query against the local cluster's Prometheus and expects series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pkgtools import find, render

from support.dashboards import DASHBOARDS, panel_queries
from support.tools import run, tool


def test_every_panel_query_is_promql_that_prometheus_parses(tmp_path: Path) -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool not found: run hack/build-metrics.sh")
    queries = panel_queries()
    rules = [{"record": f"tandem:dashboard_query_{n}", "expr": expr} for n, (_, _, expr) in enumerate(queries)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, width=1000))
    run([promtool, "check", "rules", path])


def test_each_dashboard_uses_the_data_source_and_namespace_variables_and_a_unique_uid() -> None:
    dashboards = [json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))]
    assert len({d["uid"] for d in dashboards}) == len(dashboards) == 3
    for dashboard in dashboards:
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        assert variables == {"datasource", "namespace"}
        for panel in dashboard["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"] and panel["description"]


def test_dashboards_render_as_configmaps_labelled_for_the_grafana_sidecar(helm: Path) -> None:
    values = {"dashboards": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Tandem"}}}
    maps = find(render(helm, values), "ConfigMap")
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Tandem"}
        ((key, text),) = config_map["data"].items()
        shipped[key] = json.loads(text)
    assert shipped == {path.name: json.loads(path.read_text()) for path in DASHBOARDS.glob("*.json")}
    assert not find(render(helm), "ConfigMap")  # off unless asked for
