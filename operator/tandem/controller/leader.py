"""Leader election on a coordination.k8s.io Lease, so several operator replicas run but one acts.

The Kubernetes client's own leader election (`kubernetes.leaderelection`, client-go's rules) does the
protocol: a follower judges the holder's lease by the time it *itself* observed the last change of the record
(never by the holder's clock), and a leader retries its renewal until a renew deadline, so one failed renewal
is not a lost lease. This module adds what that library leaves to its user:

* a deadline on every Lease call (`LEASE_TIMEOUT`), and transport errors (refused, reset, timed out) reported
  as a failed attempt instead of killing the election thread;
* a fence: `leading()` is true only within `renew_deadline` of the start of the last attempt that renewed
  the Lease, measured on this process's monotonic clock. It closes on time even when a renewal hangs, and
  tandem.controller.kube sends no write while it is closed. A follower may take the Lease only `lease_duration` after it
  saw the last renewal, so with renew_deadline + the longest write (tandem.controller.kube.TIMEOUT) < lease_duration the
  old leader's last write has landed or failed before a new leader can act.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from tandem.controller.kube import TIMEOUT, api_client

log = logging.getLogger(__name__)

LEASE_TIMEOUT = (2.0, 3.0)
"""(connect, read) seconds for one Lease call."""


class _Deadlined:
    """An API object whose every method is called with a request timeout."""

    def __init__(self, api: Any, timeout: tuple[float, float]) -> None:
        self._api = api
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._api, name), _request_timeout=self._timeout)


class _Stopped(Exception):
    """Raised inside the library's loops to end the campaign when this process stops campaigning."""


class _Lock(LeaseLock):
    """The library's Lease lock with deadlines, transport errors as failed attempts, and renewals timed."""

    def __init__(self, name: str, namespace: str, identity: str, api: client.ApiClient | None) -> None:
        super().__init__(name, namespace, identity)
        self.api_instance = _Deadlined(client.CoordinationV1Api(api or api_client()), LEASE_TIMEOUT)
        self.attempt_started = 0.0
        self.stopped = threading.Event()
        self.confirmed: float | None = None
        """Monotonic start of the last attempt whose write (create or update) the API server accepted."""

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        if self.stopped.is_set():
            raise _Stopped()
        self.attempt_started = time.monotonic()
        try:
            found: tuple[bool, Any] = super().get(name, namespace)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("reading lease %s/%s failed: %s", namespace, name, exc)
            return False, exc
        return found

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return self._confirm(super().create, name, namespace, election_record)

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return self._confirm(super().update, name, namespace, updated_record)

    def _confirm(self, write: Callable[..., bool], *args: Any) -> bool:
        try:
            written = write(*args)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("writing lease %s/%s failed: %s", self.namespace, self.name, exc)
            return False
        if written and self.holder() == self.identity:
            self.confirmed = self.attempt_started
        return written

    def holder(self) -> str | None:
        spec = getattr(self.lease_reference, "spec", None)
        return getattr(spec, "holder_identity", None)


class Leadership:
    """Campaign for a Lease in a background thread; `leading()` says whether this replica may act now."""

    def __init__(
        self,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: int = 20,
        renew_deadline: float = 10,
        retry_period: float = 2,
        api: client.ApiClient | None = None,
    ) -> None:
        longest_write = sum(TIMEOUT)
        if renew_deadline + longest_write >= lease_duration:
            raise ValueError(
                f"renew deadline {renew_deadline}s + longest write {longest_write}s must stay below the lease "
                f"duration {lease_duration}s, or a new leader could act before the old one's last write ends"
            )
        self.identity = identity
        self.renew_deadline = renew_deadline
        self.lock = _Lock(name, namespace, identity, api)
        self.acquired = threading.Event()
        self.lost = threading.Event()
        self._thread: threading.Thread | None = None
        self._config = electionconfig.Config(
            self.lock, int(lease_duration), renew_deadline, retry_period, self.acquired.set, self._stopped
        )

    def leading(self) -> bool:
        """True within renew_deadline of the last confirmed renewal, on this process's monotonic clock."""
        confirmed = self.lock.confirmed
        return (
            not self.lost.is_set()
            and confirmed is not None
            and time.monotonic() - confirmed < self.renew_deadline
        )

    def _stopped(self) -> None:
        log.error("lease %s/%s not renewed within %.0fs; stopped acting", self.lock.namespace,
                  self.lock.name, self.renew_deadline)
        self.lost.set()

    def _campaign(self) -> None:
        try:
            leaderelection.LeaderElection(self._config).run()
        except _Stopped:
            pass
        except Exception:
            log.exception("leader election failed")
        finally:
            self.lost.set()  # run() returns only when leadership ended (or never began): never act after

    def start(self) -> None:
        self._thread = threading.Thread(target=self._campaign, name="tandem-leader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop campaigning (and leading): the election thread ends at its next attempt."""
        self.lock.stopped.set()
        self.lost.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_for_leadership(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True), or `stop` is set or the campaign ended (False)."""
        while not stop.is_set() and not self.lost.is_set():
            if self.acquired.wait(0.2) and self.leading():
                log.info("leading as %s (lease %s/%s)", self.identity, self.lock.namespace, self.lock.name)
                return True
        return False

    def watch(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Set `stop` the moment the fence closes, so kopf stops too (the fence already blocks writes)."""
        while not stop.wait(interval):
            if not self.leading():
                if not self.lost.is_set():
                    log.error("lease %s/%s: no renewal confirmed within %.0fs; stopped acting",
                              self.lock.namespace, self.lock.name, self.renew_deadline)
                self.lost.set()
                stop.set()
                return
