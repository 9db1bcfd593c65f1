"""Client-side endpoint choice for Services, standing in for kube-proxy on the dev cluster.

Nothing routes ClusterIPs here, so clients of a Service (the end-to-end test, the demo) pick a ready
endpoint from its EndpointSlices for every request, as kube-proxy does per connection. The slices are
watched, so an endpoint leaves the choice as soon as the EndpointSlice controller marks it not ready (a pod
being deleted, or failing its readiness probe). There is no retry: a request that fails, fails.
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


def ready_addresses(slices: list[dict[str, Any]], port_name: str) -> list[str]:
    """`ip:port` of every ready endpoint in the slices, for the named port."""
    out = []
    for item in slices:
        ports = [p["port"] for p in item.get("ports") or [] if p.get("name", "") == port_name]
        if not ports:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                out += [f"{ip}:{ports[0]}" for ip in endpoint.get("addresses") or []]
    return sorted(out)


class ServiceEndpoints:
    """The ready endpoints of one Service, kept current by a watch on its EndpointSlices."""

    def __init__(self, api: KubeApi, namespace: str, service: str, port_name: str = "http") -> None:
        self.api = api
        self.namespace = namespace
        self.service = service
        self.port_name = port_name
        self._slices: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"endpoints-{service}")
        self._rng = random.Random()

    @property
    def path(self) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

    @property
    def selector(self) -> str:
        return f"kubernetes.io/service-name={self.service}"

    def start(self) -> ServiceEndpoints:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def addresses(self) -> list[str]:
        with self._lock:
            return ready_addresses(list(self._slices.values()), self.port_name)

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
                listed = self.api.call("GET", self.path, query=[("labelSelector", self.selector)])
                with self._lock:
                    self._slices = {s["metadata"]["name"]: s for s in listed.get("items") or []}
                self._watch(listed["metadata"]["resourceVersion"])
            except Exception as exc:  # relist after any failure; the choice keeps its last known state
                log.debug("endpoint watch restarts: %s", exc)
                self._stop.wait(0.5)

    def _watch(self, version: str) -> None:
        request = self.api.api.param_serialize(
            "GET",
            self.path,
            query_params=[
                ("labelSelector", self.selector),
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
                self._slices.pop(name, None)
            else:
                self._slices[name] = obj
