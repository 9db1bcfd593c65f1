"""All Kubernetes API I/O of the operator, as plain dicts.

Children are written with server-side apply under one field manager: applying the same desired object twice
changes nothing, so a handler that runs again after a crash or a missed event converges instead of
duplicating. Responses are decoded as JSON rather than the client's generated models, so the pure builders
and status functions see exactly what the API server returned.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from tandem.api.resources import GROUP, VERSION, Resource

FIELD_MANAGER = "tandem-operator"

_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
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


class Kube:
    """A thin client over one ApiClient; every method is one API call."""

    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        request = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request)
        payload = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason, http_resp=response)
        data: dict[str, Any] = json.loads(payload or b"{}")
        return data

    @staticmethod
    def _collection(api_version: str, kind: str, namespace: str | None) -> str:
        prefix, plural = _PATHS[(api_version, kind)]
        return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of a desired child; returns the object as stored, status included."""
        meta = obj["metadata"]
        path = f"{self._collection(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
        return self._call(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A JSON merge patch of single fields, for changes that must not take over the whole object."""
        return self._call(
            "PATCH",
            f"{self._collection(api_version, kind, namespace)}/{name}",
            body=patch,
            content_type="application/merge-patch+json",
        )

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"{self._collection(api_version, kind, namespace)}/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_objects(
        self, api_version: str, kind: str, namespace: str, selector: dict[str, str]
    ) -> list[dict[str, Any]]:
        label_selector = ",".join(f"{key}={value}" for key, value in sorted(selector.items()))
        result = self._call(
            "GET", self._collection(api_version, kind, namespace), query=[("labelSelector", label_selector)]
        )
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete with background propagation, so children go through the garbage collector; absent is fine."""
        try:
            self._call(
                "DELETE",
                f"{self._collection(api_version, kind, namespace)}/{name}",
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(self, involved: dict[str, Any], type: str, reason: str, message: str) -> None:
        """A core/v1 Event about `involved` (a resource body), as kopf.event would post it.

        For code that runs outside kopf's handler tasks (the resync thread), where kopf's event queue is not
        reachable. Cluster-scoped objects' events go to the default namespace, as kopf does.
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
        self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=event)

    def nodes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self._call("GET", "/api/v1/nodes").get("items") or []
        return items

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
        result = self._call("GET", f"/apis/{GROUP}/{VERSION}{scope}/{resource.plural}")
        items: list[dict[str, Any]] = result.get("items") or []
        for item in items:  # list items carry no kind; events and owner references need it
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", resource.kind)
        return items

    def patch_status(
        self, resource: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace the status subresource's fields with a merge patch (lists such as conditions are whole)."""
        return self._call(
            "PATCH",
            self._custom_path(resource, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )
