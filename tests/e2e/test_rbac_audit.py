"""The operator's rights are what it uses, read from the API server's audit log after every other e2e flow.

hack/cluster.sh logs the requests of the chart's ServiceAccount (and no one else's) as audit metadata, and
runs the API server with OwnerReferencesPermissionEnforcement, so a child that blocks its owner's deletion
needs the rights a strict cluster asks for. Marked `last`, this test runs after the other e2e tests of the
session, on the same cluster and the same release: it checks both ways that the (verb, resource) pairs the
operator used are those its Roles grant.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import pytest
from kubernetes import client as k8s

from e2e.conftest import RELEASE, RELEASE_NAMESPACE, Release
from support.cluster import ExternalCluster, LocalCluster

pytestmark = pytest.mark.last

USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
"""The chart's ServiceAccount as the API server names it: the one user hack/cluster.sh's audit policy logs."""

Right = tuple[str, str, str]
"""(apiGroup, resource[/subresource], verb), as a Role grants it and as the audit log records a request."""

NOT_EXERCISED: dict[Right, str] = {
    ("tandem.dev", "trainingjobs/finalizers", "update"): "authorized when a child that blocks its owner's deletion is "
    "written (OwnerReferencesPermissionEnforcement), which the audit log records as that write",
    ("tandem.dev", "inferenceservices/finalizers", "update"): "as trainingjobs/finalizers",
    ("tandem.dev", "computepools", "get"): "a fresh read when no watched body is at hand (a pool's watch delivers one)",
    ("", "namespaces", "list"): "kopf scans namespaces only in a namespaced install (watchNamespaces)",
    ("", "namespaces", "watch"): "as namespaces list",
    ("", "serviceaccounts", "get"): "only for a run or service that names spec.serviceAccountName",
    ("", "events", "patch"): "only when an event repeats (its count moves)",
    ("kueue.x-k8s.io", "workloads", "patch"): "only to hold a queued run (spec.queue with spec.suspend)",
    ("kueue.x-k8s.io", "workloads", "list"): "only for a run with spec.queue",
    ("batch", "jobs", "get"): "only when a Job's create answers 409 (adopt, replace or refuse it)",
    ("", "services", "get"): "reads of children come from their watches; a GET only while a watch has not listed",
    ("apps", "deployments", "get"): "as services get, and the replica handover to an HPA",
    ("autoscaling", "horizontalpodautoscalers", "get"): "as services get",
    ("policy", "poddisruptionbudgets", "get"): "as services get",
    ("autoscaling", "horizontalpodautoscalers", "delete"): "only when a service goes from autoscaled to fixed",
    ("policy", "poddisruptionbudgets", "delete"): "only when a service drops to one replica",
}
"""Rights the chart grants that these flows need not use, each with when the operator does use it."""


@dataclass(frozen=True)
class Request:
    right: Right
    namespace: str
    name: str
    code: int
    forbidden: bool
    """Denied by the authorizer (RBAC), not refused otherwise (a 403 for a namespace being deleted is not)."""


def _requests(cluster: LocalCluster) -> list[Request]:
    log = cluster.logs_dir / "audit.log"
    requests = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef")
        if event["user"]["username"] != USER or ref is None or event.get("stage") != "ResponseComplete":
            continue  # a non-resource URL (discovery, /version) is granted to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = (event.get("responseStatus") or {}).get("code", 0)
        forbidden = (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        verbs = [event["verb"]]
        if event["verb"] == "patch" and code == 201:
            verbs.append("create")  # server-side apply that creates is authorized as create too
        for verb in verbs:
            right = (ref.get("apiGroup", ""), resource, verb)
            requests.append(Request(right, ref.get("namespace", ""), ref.get("name", ""), code, forbidden))
    return requests


@dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    names: frozenset[str]
    namespace: str
    """"" for a ClusterRoleBinding's rule, which holds in every namespace."""

    def allows(self, request: Request) -> bool:
        group, resource, verb = request.right
        return (
            group in self.groups
            and resource in self.resources
            and verb in self.verbs
            and (not self.names or request.name in self.names)
            and (not self.namespace or request.namespace == self.namespace)
        )

    def rights(self) -> set[Right]:
        return {(g, r, v) for g in self.groups for r in self.resources for v in self.verbs}


def _rules(api: k8s.ApiClient) -> list[Rule]:
    """What RBAC grants the operator's ServiceAccount by its own bindings (not the groups every account is in)."""
    rbac = k8s.RbacAuthorizationV1Api(api)

    def binds(binding: k8s.V1ClusterRoleBinding | k8s.V1RoleBinding) -> bool:
        return any(
            s.kind == "ServiceAccount" and s.name == RELEASE and s.namespace == RELEASE_NAMESPACE
            for s in binding.subjects or []
        )

    def role_rules(kind: str, name: str, namespace: str) -> list[k8s.V1PolicyRule]:
        role = rbac.read_cluster_role(name) if kind == "ClusterRole" else rbac.read_namespaced_role(name, namespace)
        return role.rules or []

    bound = [("", b) for b in rbac.list_cluster_role_binding().items if binds(b)]
    bound += [(b.metadata.namespace, b) for b in rbac.list_role_binding_for_all_namespaces().items if binds(b)]
    return [
        Rule(
            frozenset(rule.api_groups or ()),
            frozenset(rule.resources or ()),
            frozenset(rule.verbs),
            frozenset(rule.resource_names or ()),
            namespace,
        )
        for namespace, binding in bound
        for rule in role_rules(binding.role_ref.kind, binding.role_ref.name, namespace)
        if rule.resources
    ]


def _ran_with_flows(request: pytest.FixtureRequest) -> bool:
    """Whether the other e2e flows ran in this session (not only this test)."""
    here = request.node.path.parent
    return any(item.path.parent == here and item is not request.node for item in request.session.items)


def test_the_operator_uses_exactly_the_rights_its_chart_grants(
    cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient, release: Release, request: pytest.FixtureRequest
) -> None:
    if not isinstance(cluster, LocalCluster):
        pytest.skip("reads the audit log of the local cluster's API server (hack/cluster.sh)")
    requests = _requests(cluster)
    rules = _rules(kube)
    used = Counter(r.right for r in requests)
    print("\n" + "\n".join(f"{n:6} {g or 'core':20} {res:36} {v}" for (g, res, v), n in sorted(used.items())))
    assert requests, "the audit log has no request of the operator's ServiceAccount"

    refused = sorted({(r.right, r.namespace) for r in requests if r.forbidden})
    assert not refused, f"RBAC refused the operator: {refused}"
    ungranted = sorted({r.right for r in requests if not any(rule.allows(r) for rule in rules)})
    assert not ungranted, f"used but granted by no Role of the chart: {ungranted}"

    granted = set().union(*(rule.rights() for rule in rules))
    assert set(NOT_EXERCISED) <= granted, "NOT_EXERCISED names a right the chart no longer grants"
    if not _ran_with_flows(request):
        return  # alone, no flow ran: which grants go unused says nothing
    unused = sorted(granted - set(used) - set(NOT_EXERCISED))
    assert not unused, f"granted but never used by the e2e flows (take it out, or say why in NOT_EXERCISED): {unused}"
