"""Helpers for the packaging tests: find helm and kubectl, render the chart, read RBAC rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from support.tools import run

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tandem"
MANIFESTS = REPO / "manifests"

Rule = tuple[str, str, str]
"""(apiGroup, resource, verb) as RBAC grants it; a resourceNames restriction is appended to the resource."""


def set_args(values: dict[str, Any]) -> list[str]:
    """--set-json arguments for helm, one per top-level key."""
    import json

    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(helm: Path, values: dict[str, Any] | None = None, namespace: str = "tandem-system") -> list[dict[str, Any]]:
    """`helm template` of the chart with values, as parsed objects."""
    proc = run([helm, "template", "tandem", CHART, "--namespace", namespace, *set_args(values or {})])
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def rbac_rules(objects: list[dict[str, Any]]) -> dict[str, set[Rule]]:
    """Granted (apiGroup, resource, verb) per scope: "cluster" or the namespace of a Role."""
    grants: dict[str, set[Rule]] = {}
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = "cluster" if obj["kind"] == "ClusterRole" else obj["metadata"].get("namespace", "?")
        for rule in obj.get("rules") or []:
            names = rule.get("resourceNames")
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    label = f"{resource}[{','.join(names)}]" if names else resource
                    for verb in rule.get("verbs") or []:
                        grants.setdefault(scope, set()).add((group, label, verb))
    return grants


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
