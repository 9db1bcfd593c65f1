"""Container probes (httpGet, tcpSocket, exec) with kubelet's thresholds and timing.

A Prober holds one probe's counters; the executor asks it whether a check is due, runs the check in a
worker thread (so one slow endpoint never stalls the loop) and feeds the result back.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def resolve_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"probe port {port!r} is not a port of container {container.get('name')!r}")


def check(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, env: Mapping[str, str]) -> bool:
    """Run one probe once; True on success. Never raises for a failing target."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or pod_ip
            port = resolve_port(get["port"], container)
            conn_cls = http.client.HTTPSConnection if get.get("scheme") == "HTTPS" else http.client.HTTPConnection
            conn = conn_cls(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                conn.request("GET", get.get("path") or "/", headers=headers)
                status = conn.getresponse().status
            finally:
                conn.close()
            return 200 <= status < 400
        if "tcpSocket" in probe:
            tcp = probe["tcpSocket"]
            with socket.create_connection((tcp.get("host") or pod_ip, resolve_port(tcp["port"], container)), timeout):
                return True
        if "exec" in probe:
            result = subprocess.run(
                probe["exec"]["command"], env=dict(env), timeout=timeout, capture_output=True, check=False
            )
            return result.returncode == 0
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException):
        return False
    return False


@dataclass
class Prober:
    """One probe of one container: when it is due, and what its thresholds make of the results."""

    probe: Mapping[str, Any]
    started: float
    """When the container started (initialDelaySeconds counts from here)."""
    success: bool = False
    successes: int = 0
    failures: int = 0
    in_flight: bool = False
    next_due: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.next_due = self.started + float(self.probe.get("initialDelaySeconds") or 0)

    @property
    def period(self) -> float:
        return float(self.probe.get("periodSeconds") or 10)

    def due(self, now: float | None = None) -> bool:
        return not self.in_flight and (now if now is not None else time.monotonic()) >= self.next_due

    def record(self, ok: bool, now: float | None = None) -> None:
        """Apply one result: success after successThreshold in a row, failure after failureThreshold."""
        self.in_flight = False
        self.next_due = (now if now is not None else time.monotonic()) + self.period
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.probe.get("successThreshold") or 1):
                self.success = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.probe.get("failureThreshold") or 3):
                self.success = False

    @property
    def failed(self) -> bool:
        """failureThreshold consecutive failures (what restarts a container for liveness and startup)."""
        return self.failures >= int(self.probe.get("failureThreshold") or 3)
