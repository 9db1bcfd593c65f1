"""The executor's Kubernetes API calls, as plain dicts over one ApiClient.

Like tandem.kube, responses are decoded JSON rather than the client's generated models, so the pure
functions that build pod status see exactly what the API server stores.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class KubeApi:
    """One method per API call; every call carries a request timeout so the loop never hangs on it."""

    def __init__(self, api: client.ApiClient, timeout: float = 15.0) -> None:
        self.api = api
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        request = self.api.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=self.timeout)
        payload = response.read()
        if not 200 <= response.status <= 299:
            raise ApiException(status=response.status, reason=response.reason, http_resp=response)
        data: dict[str, Any] = json.loads(payload or b"{}")
        return data

    # --- nodes and leases ------------------------------------------------------------------------

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"/api/v1/nodes/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_node(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/api/v1/nodes", body)

    def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", f"/api/v1/nodes/{name}", patch, content_type=MERGE_PATCH)

    def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", f"/api/v1/nodes/{name}/status", patch, content_type=MERGE_PATCH)

    def delete_node(self, name: str) -> None:
        try:
            self.call("DELETE", f"/api/v1/nodes/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def renew_lease(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        """Create or update the node's Lease (the heartbeat the node lifecycle controller reads)."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        try:
            self.call("PATCH", f"{path}/{name}", {"spec": body["spec"]}, content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.call("POST", path, body)

    # --- pods --------------------------------------------------------------------------------------

    def pods_on_node(self, node: str) -> list[dict[str, Any]]:
        data = self.call("GET", "/api/v1/pods", query=[("fieldSelector", f"spec.nodeName={node}")])
        items: list[dict[str, Any]] = data.get("items") or []
        return items

    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.call(
            "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status}, content_type=MERGE_PATCH
        )

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """Remove a pod whose processes are gone (what a kubelet does last): grace 0, guarded by uid."""
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            self.call("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def key_of(self, kind: str, namespace: str, name: str, key: str) -> str | None:
        """One key of a ConfigMap or Secret (decoded), or None when the object or key is missing."""
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        try:
            obj = self.call("GET", f"/api/v1/namespaces/{namespace}/{plural}/{quote(name)}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return data_of(obj).get(key)

    def data_of(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        try:
            return data_of(self.call("GET", f"/api/v1/namespaces/{namespace}/{plural}/{quote(name)}"))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.call("POST", f"/api/v1/namespaces/{namespace}/events", body)
        except ApiException as exc:  # events are best effort, as a kubelet's are
            log.debug("event not recorded: %s", exc.reason)

    def watch_pods_on_node(self, node: str, wake: threading.Event, stop: threading.Event) -> None:
        """Set `wake` whenever a pod on `node` changes, until `stop`; reconnects after each timeout.

        The loop lists pods itself; the watch only makes it react at once instead of at the next tick
        (a deleted pod gets SIGTERM as soon as the API server records the deletion).
        """
        while not stop.is_set():
            try:
                request = self.api.param_serialize(
                    "GET",
                    "/api/v1/pods",
                    query_params=[
                        ("fieldSelector", f"spec.nodeName={node}"),
                        ("watch", "true"),
                        ("timeoutSeconds", "30"),
                        ("allowWatchBookmarks", "false"),
                    ],
                    header_params={"Accept": "application/json"},
                    auth_settings=["BearerToken"],
                )
                response = self.api.call_api(*request, _request_timeout=45)
                for _line in response.response.stream(amt=None, decode_content=True):
                    wake.set()
                    if stop.is_set():
                        break
                response.response.release_conn()
            except Exception as exc:  # a broken watch only costs latency: the loop still polls
                log.debug("pod watch on %s restarts: %s", node, exc)
                stop.wait(1.0)


def data_of(obj: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's data, or a Secret's data decoded from base64 (stringData never comes back)."""
    import base64

    if obj.get("kind") == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})
