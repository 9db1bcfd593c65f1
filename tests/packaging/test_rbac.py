"""RBAC: the chart and the kustomize base grant exactly what the operator uses, and nothing sensitive."""

from __future__ import annotations

from pathlib import Path

import pytest
from pkgtools import MANIFESTS, Rule, find, load_yaml_docs, rbac_rules, render

WORKLOAD = ("get", "list", "watch", "create", "patch", "delete")


def _grants(group: str, resources: tuple[str, ...], verbs: tuple[str, ...]) -> set[Rule]:
    return {(group, resource, verb) for resource in resources for verb in verbs}


CLUSTER_SCOPED: set[Rule] = (
    _grants("tandem.dev", ("computepools",), ("get", "list", "watch"))
    | _grants("tandem.dev", ("computepools/status",), ("patch",))
    | _grants("", ("nodes",), ("list", "watch"))
    | _grants("", ("pods",), ("list",))
    | _grants("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"))
    | _grants("", ("namespaces",), ("list", "watch"))
)
"""ComputePools, read, and their status, written (by merge patch: never `update`, and no `patch` of the pool
itself, since kopf's event handlers keep no state on the object); nodes and the pods on them for pool
capacity (a gang waits until all its workers fit, tandem.decide.gang); CRDs and namespaces, which kopf lists and
watches (namespaces only in a namespaced install). Each verb is one the operator was seen using in the API
server's audit log, or one tests/e2e/test_rbac_audit.py names with when it is used."""

EVENTS: set[Rule] = _grants("", ("events",), ("create", "patch"))
"""core/v1 Events about the operator's objects, in their namespaces; those about a cluster-scoped ComputePool
in `default`, the only namespace the API server accepts for them."""

NAMESPACED: set[Rule] = (
    _grants("tandem.dev", ("trainingjobs", "inferenceservices"), ("get", "list", "watch"))
    | _grants("tandem.dev", ("trainingjobs/status", "inferenceservices/status"), ("patch",))
    | _grants("tandem.dev", ("trainingjobs/finalizers", "inferenceservices/finalizers"), ("update",))
    | _grants("batch", ("jobs",), WORKLOAD)
    | _grants("", ("services",), WORKLOAD)
    | _grants("apps", ("deployments",), WORKLOAD)
    | _grants("autoscaling", ("horizontalpodautoscalers",), WORKLOAD)
    | _grants("policy", ("poddisruptionbudgets",), WORKLOAD)
    | _grants("kueue.x-k8s.io", ("workloads",), ("list", "patch"))
    | _grants("", ("serviceaccounts",), ("get",))
    | EVENTS
)
"""The watched resources, read, and their status, written; `update` of their finalizers, which the API server's
OwnerReferencesPermissionEnforcement asks of whoever sets blockOwnerDeletion on a child (the operator adds
no finalizer); children the operator applies (server-side apply is PATCH), reads and deletes (pods are
listed cluster-wide, CLUSTER_SCOPED);
Kueue's Workloads of queued runs, read for the status and deactivated while suspended (tandem.controller.queueing);
the ServiceAccount a run names, looked up before its Job is made (never its token: serviceaccounts/token)."""

LEASE: set[Rule] = {
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases[tandem]", "get"),
    ("coordination.k8s.io", "leases[tandem]", "update"),
}


def _table(grants: dict[str, set[Rule]]) -> str:
    rows = sorted((scope, group or "core", resource, verb) for scope, rules in grants.items()
                  for group, resource, verb in rules)
    merged: dict[tuple[str, str, str], list[str]] = {}
    for scope, group, resource, verb in rows:
        merged.setdefault((scope, group, resource), []).append(verb)
    return "\n".join(f"{s:15} {g:22} {r:28} {','.join(v)}" for (s, g, r), v in merged.items())


def test_cluster_wide_install_grants_exactly_what_the_operator_uses(helm: Path) -> None:
    grants = rbac_rules(render(helm))
    print("\n" + _table(grants))
    assert grants == {"cluster": CLUSTER_SCOPED | NAMESPACED}


def test_namespaced_install_grants_workload_rights_only_in_watched_namespaces(helm: Path) -> None:
    grants = rbac_rules(render(helm, {"watchNamespaces": ["team-a", "team-b"]}))
    print("\n" + _table(grants))
    assert grants == {"cluster": CLUSTER_SCOPED, "team-a": NAMESPACED, "team-b": NAMESPACED,
                      "default": EVENTS}


def test_leader_election_adds_only_its_own_lease(helm: Path) -> None:
    grants = rbac_rules(render(helm, {"replicaCount": 2}))
    assert grants == {"cluster": CLUSTER_SCOPED | NAMESPACED, "tandem-system": LEASE}


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["a"]}, {"replicaCount": 2}], ids=["wide", "ns", "ha"])
def test_no_secrets_configmaps_escalation_or_wildcards_are_granted(helm: Path, values: dict[str, object]) -> None:
    objects = render(helm, values)
    for role in find(objects, "ClusterRole") + find(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {role['metadata']['name']}: {rule}"
            assert not {"secrets", "configmaps", "pods/exec", "serviceaccounts/token"} & set(rule["resources"])
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_bindings_name_only_the_chart_service_account(helm: Path) -> None:
    objects = render(helm, {"watchNamespaces": ["a"], "replicaCount": 2})
    for binding in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tandem", "namespace": "tandem-system"}]


def test_kustomize_base_grants_the_same_rules_as_the_chart(helm: Path) -> None:
    base = load_yaml_docs(MANIFESTS / "operator" / "rbac.yaml")
    assert rbac_rules(base) == rbac_rules(render(helm))
    overlay = load_yaml_docs(MANIFESTS / "overlays" / "example" / "leader-election.yaml")
    assert rbac_rules(overlay) == {"tandem-system": LEASE}


def test_every_kind_the_operator_client_knows_is_granted(helm: Path) -> None:
    """A kind added to tandem.controller.kube without a matching rule here fails this test, not a real cluster."""
    from tandem.controller.kube import _PATHS

    granted = rbac_rules(render(helm))["cluster"]
    for prefix, plural in _PATHS.values():
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        verbs = {
            "pods": ("list",),
            "events": ("create", "patch"),
            "serviceaccounts": ("get",),
            "workloads": ("list", "patch"),
        }.get(plural, WORKLOAD)
        missing = [verb for verb in verbs if (group, plural, verb) not in granted]
        assert not missing, f"{group or 'core'}/{plural}: {missing} not granted"
