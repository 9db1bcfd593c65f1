"""All Kubernetes API I/O of the operator, as plain dicts.

Children are written with server-side apply under one field manager: applying the same desired object twice
changes nothing, so a handler that runs again after a crash or a missed event converges instead of
duplicating. Responses are decoded as JSON rather than the client's generated models, so the pure builders
and status functions see exactly what the API server returned.

Every call has a deadline (`TIMEOUT`): a hung API server (connections accepted, no answers) costs a worker
that much, never forever. urllib3 retries nothing on its own (a read retried blindly doubles the wait and hides
the failure); retrying is the caller's choice, with `tandem.controller.backoff`. Writes pass through an optional
`fence`: a replica that may no longer lead (tandem.controller.leader) sends no write at all. What a write returns is
recorded in an optional `tandem.controller.own_writes.OwnWrites`, so the watches can tell the operator's own writes when
they come back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from tandem.api.resources import GROUP, VERSION, Resource
from tandem.controller.own_writes import Identity, OwnWrites

FIELD_MANAGER = "tandem-operator"
TIMEOUT = (3.0, 5.0)
"""(connect, read) seconds for one API call. Short enough that renew deadline + TIMEOUT stays below the lease
duration (tandem.controller.leader), long enough for a page of PAGE objects on a loaded API server."""
CONNECTIONS = 32
"""Connections kept open to the API server: more than the work queue's workers plus the child watches."""
PAGE = 500
"""Objects per list page: memory and API server load stay bounded however many objects exist."""

_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("kueue.x-k8s.io/v1beta2", "Workload"): ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),
}


def load_config() -> None:
    """In-cluster credentials, else the kubeconfig that $KUBECONFIG names now.

    The client library reads $KUBECONFIG once, when it is imported; a process that sets it later (a test
    session that starts its own cluster) would otherwise be sent to ~/.kube/config.
    """
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    """The URL path of a kind's objects in one namespace, or in all of them."""
    prefix, plural = _PATHS[(api_version, kind)]
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def send(
    api: client.ApiClient,
    method: str,
    path: str,
    timeout: tuple[float, float],
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Any:
    """One request; the client's response, unread when it succeeded (a watch streams it), else ApiException
    carrying the API server's status body."""
    request = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException(status=response.status, reason=response.reason, http_resp=response)
    return response


class NotLeading(RuntimeError):
    """A write refused before it was sent: this replica's lease may have passed to another."""


def api_client(configuration: client.Configuration | None = None) -> client.ApiClient:
    """An ApiClient (for the loaded configuration by default) whose connection pool never retries by itself."""
    configuration = configuration or client.Configuration.get_default_copy()
    # One kept-alive connection per worker and watch: the default (5 per CPU) would open and drop a TLS
    # connection per request beyond it.
    configuration.connection_pool_maxsize = CONNECTIONS
    configuration.retries = urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0)
    api = client.ApiClient(configuration)
    # The API server names a write's field manager after the user agent when the request names none, and
    # shows the agent in audit logs: "tandem-operator", not the generated client's "OpenAPI-Generator".
    api.user_agent = FIELD_MANAGER
    return api


class Store(Protocol):
    """Objects of one kind as a watch last received them (tandem.controller.children.ChildWatch)."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...


class Kube:
    """A thin client over one ApiClient; every method is one API call (a list: one per page), except `read`,
    which answers from the operator's watches when they cover the object."""

    def __init__(
        self,
        api: client.ApiClient | None = None,
        timeout: tuple[float, float] = TIMEOUT,
        fence: Callable[[], bool] | None = None,
        stores: Callable[[str, str], Store | None] | None = None,
        writes: OwnWrites | None = None,
    ) -> None:
        """`stores(kind, namespace)` gives the watch store that holds children of that kind there, if any;
        `writes` records what each write returned."""
        self.api = api or api_client()
        self.timeout = timeout
        self.fence = fence
        self.stores = stores
        self.writes = writes

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        target: Identity | None = None,
    ) -> dict[str, Any]:
        """One request; `target`, for a write, names the object it changes, so that its watch event can wait
        for the response (tandem.controller.own_writes)."""
        if method != "GET" and self.fence is not None and not self.fence():
            raise NotLeading(f"{method} {path} not sent: leadership is not assured")
        if target is None or self.writes is None:
            return self._send(method, path, body, query, content_type)
        with self.writes.sending(target):
            return self._send(method, path, body, query, content_type)

    def _send(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]] | None, content_type: str
    ) -> dict[str, Any]:
        response = send(self.api, method, path, self.timeout, query=query, body=body, content_type=content_type)
        data: dict[str, Any] = json.loads(response.read() or b"{}")
        if method in ("POST", "PATCH", "PUT") and self.writes is not None:
            self.writes.wrote(data)
        return data

    def apply(self, obj: dict[str, Any], manager: str = FIELD_MANAGER, force: bool = True) -> dict[str, Any]:
        """Server-side apply of a desired child; returns the object as stored, status included.

        The operator's own manager forces: its children are its to define. Another `manager` may apply without
        `force`, and then gets 409 where a field it applies is owned by someone else with another value.
        """
        meta = obj["metadata"]
        path = f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
        return self._call(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", manager), ("force", "true" if force else "false")],
            content_type="application/apply-patch+yaml",
            target=(obj["kind"], meta["namespace"], meta["name"]),
        )

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create a child (POST); 409 when one of that name exists. Returns the object as stored."""
        meta = obj["metadata"]
        return self._call(
            "POST",
            collection_path(obj["apiVersion"], obj["kind"], meta["namespace"]),
            body=obj,
            query=[("fieldManager", FIELD_MANAGER)],
            target=(obj["kind"], meta["namespace"], meta["name"]),
        )

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of single fields, for changes that must not take over the whole object."""
        return self._call(
            "PATCH",
            f"{collection_path(api_version, kind, namespace)}/{name}",
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
            target=(kind, namespace, name),
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A child as the operator's watch last received it (no API call), else as the API server has it now.

        For the reconcile's view of its children, as controllers read from an informer cache: what it lacks
        of the object (the pod template, managedFields) the reconcile does not read, and a store that lags
        behind costs at most an idempotent write or a reconcile more, never a lost change.
        """
        store = self.stores(kind, namespace) if self.stores is not None else None
        if store is not None:
            return store.get(namespace, name)
        return self.get(api_version, kind, namespace, name)

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        path = collection_path(api_version, kind, namespace)
        return list(self._pages(path, [("labelSelector", label_selector(selector))]))

    def _pages(self, path: str, query: list[tuple[str, str]] | None = None) -> Iterator[dict[str, Any]]:
        """Items of a list, PAGE at a time (limit/continue), so no single response holds every object."""
        token = ""
        while True:
            page = [*(query or []), ("limit", str(PAGE))] + ([("continue", token)] if token else [])
            result = self._call("GET", path, query=page)
            yield from result.get("items") or []
            token = (result.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete with background propagation, so children go through the garbage collector; absent is fine."""
        try:
            self._call(
                "DELETE",
                f"{collection_path(api_version, kind, namespace)}/{name}",
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> dict[str, Any]:
        """A core/v1 Event about `involved` (a resource body), as kopf.event would post it; returns it as stored.

        Posted by tandem.controller.events' thread, outside kopf's handler tasks, where kopf's event queue is not
        reachable. Cluster-scoped objects' events go to `default`, the one namespace the API server accepts for
        a core/v1 Event about an object without one (the chart grants events there in a namespaced install).
        """
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'tandem')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        return self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=event)

    def count_event(self, namespace: str, name: str, count: int) -> None:
        """An Event seen again: its count and lastTimestamp move, as client-go's EventCorrelator records it."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.merge_patch("v1", "Event", namespace, name, {"count": count, "lastTimestamp": stamp})

    def live_pods(self) -> list[dict[str, Any]]:
        """Every pod of the cluster that has not finished (the API server filters), for capacity arithmetic."""
        return list(self._pages("/api/v1/pods", [("fieldSelector", "status.phase!=Succeeded,status.phase!=Failed")]))

    def nodes(self, selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Nodes, only those with the given labels when a selector is given (the API server filters)."""
        query = [("labelSelector", label_selector(selector))] if selector else []
        return list(self._pages("/api/v1/nodes", query))

    def _custom_path(self, resource: Resource, namespace: str | None, name: str) -> str:
        scope = f"/namespaces/{namespace}" if resource.namespaced and namespace else ""
        return f"/apis/{GROUP}/{VERSION}{scope}/{resource.plural}/{name}"

    def get_custom(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", self._custom_path(resource, namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_custom(self, resource: Resource, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a Tandem kind, in one namespace or (None) in all."""
        scope = f"/namespaces/{namespace}" if resource.namespaced and namespace else ""
        items = list(self._pages(f"/apis/{GROUP}/{VERSION}{scope}/{resource.plural}"))
        for item in items:  # list items carry no kind; events and owner references need it
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", resource.kind)
        return items

    def patch_status(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Replace the status subresource's fields with a merge patch (lists such as conditions are whole).

        With `resource_version` (that of the body the status was computed from) the patch is conditional: the
        API server answers 409 when the object changed since, so a writer with an older view (a resync pass, a
        replica that lost its lease) can never overwrite a newer status.
        """
        patch: dict[str, Any] = {"status": status}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            "PATCH",
            self._custom_path(resource, namespace, name) + "/status",
            body=patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json",
            target=(resource.kind, namespace or "", name),
        )


def label_selector(labels: dict[str, str]) -> str:
    """An equality-based labelSelector for the API server: k1=v1,k2=v2."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
