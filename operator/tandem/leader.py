"""Leader election on a coordination.k8s.io Lease, so several operator replicas run but one acts.

The standard Kubernetes pattern (client-go's leaderelection): acquire the Lease when it is free or expired,
renew it well within its duration, and stop acting the moment a renewal fails, before another replica can
take over.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    def __init__(
        self,
        name: str,
        namespace: str,
        identity: str,
        lease_seconds: int = 15,
        api: client.CoordinationV1Api | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.api = api or client.CoordinationV1Api()

    def _spec(self, transitions: int, acquired: datetime | None) -> client.V1LeaseSpec:
        now = _now()
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired or now,
            renew_time=now,
            lease_transitions=transitions,
        )

    def try_acquire(self) -> bool:
        """Take or renew the Lease; False when another live holder has it or a write conflicts."""
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace), spec=self._spec(0, None)
            )
            try:
                self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as create_error:
                if create_error.status == 409:
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or renewed + timedelta(seconds=spec.lease_duration_seconds or 0) < _now()
        ours = spec.holder_identity == self.identity
        if not ours and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if ours else 1)
        lease.spec = self._spec(transitions, spec.acquire_time if ours else None)
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first; resourceVersion guards the race
                return False
            raise
        return True

    def wait_for_leadership(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        retry = max(1.0, self.lease_seconds / 5)
        while not stop.is_set():
            if self.try_acquire():
                log.info("leading as %s (lease %s/%s)", self.identity, self.namespace, self.name)
                return True
            stop.wait(retry)
        return False

    def keep_renewing(self, stop: threading.Event, lost: threading.Event) -> None:
        """Renew until `stop`; when a renewal fails, set `lost` and `stop`, so the operator stops acting at once."""
        interval = self.lease_seconds / 3
        while not stop.wait(interval):
            try:
                renewed = self.try_acquire()
            except ApiException as exc:
                log.warning("lease renewal failed: %s", exc.reason)
                renewed = False
            if not renewed:
                log.error("lost the lease %s/%s; stopping", self.namespace, self.name)
                lost.set()
                stop.set()
                return
