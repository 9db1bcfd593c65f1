"""Client-side endpoint choice for Services, standing in for kube-proxy on the dev cluster.

Nothing routes ClusterIPs here, so clients of a Service (the end-to-end test, the demo) pick a ready
endpoint for every request, as kube-proxy does per connection. There is no retry: a request that fails,
fails.

Endpoints are derived from the Service's pods with the EndpointSlice controller's rule (a pod address, the
Ready condition True, no deletionTimestamp; the port is the targetPort, by number or container port name)
instead of read from EndpointSlices: the API server refuses loopback addresses in EndpointSlices, and the
executor's pod addresses are loopback ones, so the controller writes slices without endpoints. The pods
are watched, so an endpoint leaves the choice as soon as its pod is being deleted or turns unready.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

from tandem.devexec.kubeapi import KubeApi

log = logging.getLogger(__name__)


def pod_endpoint(pod: dict[str, Any], target_port: int | str) -> str | None:
    """`ip:port` when the pod would be a ready endpoint of the Service, else None."""
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or not status.get("podIP"):
        return None
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return None
    port: int | None = target_port if isinstance(target_port, int) else None
    if port is None:
        for container in (pod.get("spec") or {}).get("containers") or []:
            for item in container.get("ports") or []:
                if item.get("name") == target_port:
                    port = int(item["containerPort"])
    return f"{status['podIP']}:{port}" if port is not None else None


class ServiceEndpoints:
    """The ready endpoints of one Service, kept current by a watch on its pods."""

    def __init__(self, api: KubeApi, namespace: str, service: str, port_name: str = "http") -> None:
        self.api = api
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self._pods: dict[str, dict[str, Any]] = {}
        self._selector = ""
        self._target: int | str = port_name
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"endpoints-{service}")
        self._rng = random.Random()

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def _read_service(self) -> None:
        service = self.api.call("GET", f"/api/v1/namespaces/{self.namespace}/services/{self.service}")
        spec = service["spec"]
        self._selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
        for port in spec.get("ports") or []:
            if port.get("name", "") == self.port_name:
                self._target = port.get("targetPort", port["port"])

    def start(self) -> ServiceEndpoints:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def addresses(self) -> list[str]:
        with self._lock:
            found = (pod_endpoint(pod, self._target) for pod in self._pods.values())
            return sorted(address for address in found if address)

    def pick(self) -> str | None:
        """A random ready endpoint, or None when there is none."""
        choices = self.addresses()
        return self._rng.choice(choices) if choices else None

    def wait(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while not (found := self.addresses()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ready endpoint for Service {self.namespace}/{self.service} in {timeout:.0f}s")
            time.sleep(0.1)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_service()
                listed = self.api.call("GET", self.path, query=[("labelSelector", self._selector)])
                with self._lock:
                    self._pods = {p["metadata"]["name"]: p for p in listed.get("items") or []}
                self._watch(listed["metadata"]["resourceVersion"])
            except Exception as exc:  # relist after any failure; the choice keeps its last known state
                log.debug("endpoint watch restarts: %s", exc)
                self._stop.wait(0.5)

    def _watch(self, version: str) -> None:
        request = self.api.api.param_serialize(
            "GET",
            self.path,
            query_params=[
                ("labelSelector", self._selector),
                ("watch", "true"),
                ("resourceVersion", version),
                ("timeoutSeconds", "30"),
            ],
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.api.api.call_api(*request, _request_timeout=45)
        buffer = b""
        for chunk in response.response.stream(amt=None, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    self._apply(json.loads(line))
            if self._stop.is_set():
                break
        response.response.release_conn()

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise RuntimeError(f"watch error: {obj.get('message')}")
        name = obj.get("metadata", {}).get("name")
        if not name or kind == "BOOKMARK":
            return
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(name, None)
            else:
                self._pods[name] = obj
