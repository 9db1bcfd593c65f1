"""Watches of the operator's children (Jobs, and a service's Deployment, Service, budget and autoscaler) filtered
by the API server, not by the operator.

kopf filters watch events by label on the client: the operator would receive every Job and Deployment in
the cluster and drop most of them. Here the API server applies the label selector (`tandem.dev/trainingjob`
present, `tandem.dev/inferenceservice` present), so only the operator's own children travel. Each event adds
the owner's key to the work queue, unless the change is the operator's own latest write coming back
(tandem.controller.own_writes): the reconcile that wrote it has seen it all.

Each watch also keeps what it received, as an informer's store: the reconcile reads a child from it instead of
asking the API server again (an event's object is no longer thrown away and fetched once more). The store
keeps what the reconcile reads (metadata without managedFields, spec without the pod template, status) as
compact JSON, decoded when read (tandem.controller.views.ObjectStore, the store the Tandem objects' bodies are
kept in too): about 1.5 KiB a Job, where the decoded dicts took 9 KiB. An object is
stored before its owner is queued: the reconcile an event causes sees at least that event's version. Writes
made from a store's view stay safe when it lags: status is written conditionally on the owner's
resourceVersion, children by idempotent apply or create.

Informer rules, as client-go's reflector: a paginated list gives the resourceVersion to watch from; the watch
resumes from the last version seen (bookmarks included) when the server ends it; a 410 Gone (the version is
too old) lists again and queues every owner found, since events may have been missed. Every request has a
deadline: a watch that delivers nothing, not even a bookmark, for WATCH_READ_TIMEOUT is reconnected.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tandem.controller import backoff
from tandem.controller.exclusive import Key
from tandem.controller.kube import PAGE, TIMEOUT, collection_path, send
from tandem.controller.own_writes import OwnWrites
from tandem.controller.views import ObjectStore, without_managed_fields

log = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""Server-side end of one watch request; the watch then resumes from the last resourceVersion."""
WATCH_READ_TIMEOUT = 75.0
"""Seconds without any byte on a watch (the API server sends a bookmark about every minute) before it is
considered dead and reconnected."""


API_VERSIONS = {
    "Job": "batch/v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}
"""Child kind -> its apiVersion (tandem.controller.kube knows the path of each)."""
QUERY = {
    "label_selector": "labelSelector",
    "limit": "limit",
    "_continue": "continue",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}
"""Keyword arguments of a list function (as the client library's watch passes them) -> query parameters."""


def lister(api: client.ApiClient, kind: str, namespace: str | None) -> Callable[..., Any]:
    """A list function for one child kind (a watch with `watch=True`) that returns the unread urllib3 response,
    as the generated API classes' methods do with `_preload_content=False`.

    Plain requests keep those classes out of the operator: their pydantic-validated methods cost about 100 MiB
    of memory to import (CoreV1Api alone 90 MiB), more than ten thousand objects' stores.
    """
    path = collection_path(API_VERSIONS[kind], kind, namespace)

    def list_children(
        _request_timeout: tuple[float, float] = TIMEOUT, _preload_content: bool = False, **params: Any
    ) -> Any:
        query = [(QUERY[name], _query_value(value)) for name, value in params.items() if value is not None]
        return send(api, "GET", path, _request_timeout, query=query).response

    return list_children


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class ChildWatch:
    """Watch one child kind (in one namespace, or all) and queue the owner of every child that changes."""

    def __init__(
        self,
        api: client.ApiClient,
        kind: str,
        owner_label: str,
        owner_kind: str,
        enqueue: Callable[[Key], None],
        namespace: str | None = None,
        trace: Callable[[dict[str, Any]], None] | None = None,
        own_writes: OwnWrites | None = None,
    ) -> None:
        """`trace`, when given, sees every object the watch receives (for tests of what travels); a change that
        `own_writes` knows as the operator's own latest write is stored without queueing the owner again."""
        self.kind = kind
        self.owner_label = owner_label
        self.owner_kind = owner_kind
        self.enqueue = enqueue
        self.namespace = namespace
        self.trace = trace
        self.own_writes = own_writes
        self.stopped = threading.Event()
        self.listed = threading.Event()
        """Set once a list has given the version to watch from: every later change reaches the watch."""
        self._watch: watch.Watch | None = None
        self._list = lister(api, kind, namespace)
        self.store: ObjectStore[tuple[str, str]] = ObjectStore()
        """What the reconcile reads of each child (`stored`) by (namespace, name), as compact JSON."""

    def covers(self, kind: str, namespace: str) -> bool:
        """Whether this watch's store answers for a child of this kind in this namespace."""
        return kind == self.kind and self.namespace in (None, namespace) and self.listed.is_set()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The child as the watch last received it; None when it does not exist (as far as the watch knows)."""
        return self.store.get((namespace, name))

    def _keep(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self.store.discard(key)
        else:
            self.store.put(key, stored(self.kind, obj))

    def _echo(self, event_type: str, obj: dict[str, Any], version: str) -> bool:
        """Whether the change is the operator's own latest write coming back: its reconcile saw all of it."""
        if self.own_writes is None or event_type == "DELETED":
            return False
        meta = obj.get("metadata") or {}
        return self.own_writes.echo((self.kind, str(meta.get("namespace") or ""), str(meta.get("name"))), version)

    def _owner(self, obj: dict[str, Any]) -> Key | None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(self.owner_label)
        return (self.owner_kind, str(meta.get("namespace") or ""), owner) if owner else None

    def list_version(self, queue_owners: bool) -> str:
        """List the children (paginated) into a new store; the resourceVersion to watch from. Queues their owners
        if asked, once the store holds what they will read."""
        token = ""
        store: ObjectStore[tuple[str, str]] = ObjectStore()
        owners: set[Key] = set()
        while True:
            response = self._list(label_selector=self.owner_label, limit=PAGE, _continue=token or None)
            page = json.loads(response.data or b"{}")
            for item in page.get("items") or []:
                meta = item.get("metadata") or {}
                store.put((str(meta.get("namespace") or ""), str(meta.get("name") or "")), stored(self.kind, item))
                if queue_owners and (owner := self._owner(item)) is not None:
                    owners.add(owner)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        self.store = store  # swapped whole: a reader sees the old listing or the new one
        if queue_owners:
            log.info("%ss listed again after their watch fell behind: %d owners queued", self.kind, len(owners))
            for owner in owners:
                self.enqueue(owner)
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    def run(self) -> None:
        version: str | None = None
        relisted = False
        attempt = 0
        while not self.stopped.is_set():
            try:
                if version is None:
                    version = self.list_version(queue_owners=relisted)
                    self.listed.set()
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    self._list, label_selector=self.owner_label, resource_version=version,
                    allow_watch_bookmarks=True, timeout_seconds=WATCH_SECONDS, deserialize=False,
                    _request_timeout=(TIMEOUT[0], WATCH_READ_TIMEOUT),
                ):
                    attempt = 0
                    obj = event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event.get("type") != "BOOKMARK":
                        self._keep(str(event.get("type")), obj)
                        if self.trace is not None:
                            self.trace(obj)
                        owner = self._owner(obj)
                        if owner is not None and not self._echo(str(event.get("type")), obj, version):
                            self.enqueue(owner)
                    if self.stopped.is_set():
                        return
            except KeyError:
                # An ERROR event (in practice 410 Gone); the client library fails to read it when not
                # deserializing: list again.
                version, relisted = None, True
            except ApiException as exc:
                if exc.status == 410:
                    version, relisted = None, True  # too old: list again, and queue what may have been missed
                    continue
                log.warning(
                    "watching %ss failed (%s %s: %s); retrying", self.kind, exc.status, exc.reason, refusal(exc)
                )
                self.stopped.wait(backoff.delay(attempt))
                attempt += 1
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.stopped.is_set():
                    return
                log.warning("watching %ss interrupted (%s); resuming", self.kind, exc)
                self.stopped.wait(backoff.delay(attempt))
                attempt += 1
            except Exception:  # the watch must outlive any surprise; its owners' resync still covers them
                log.exception("watching %ss failed unexpectedly; listing again", self.kind)
                version = None
                self.stopped.wait(backoff.delay(attempt))
                attempt += 1

    def start(self) -> None:
        threading.Thread(target=self.run, name=f"tandem-watch-{self.kind.lower()}", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        if self._watch is not None:
            self._watch.stop()


def refusal(exc: ApiException) -> str:
    """The API server's own words for a refused request (for a 403: which user cannot do what, so that an RBAC
    gap is plain in the log), else its status body as sent."""
    try:
        return str(json.loads(exc.body or b"{}").get("message") or "")
    except (ValueError, AttributeError):
        return str(exc.body or "")[:300]


def stored(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What a store keeps of a child: what the reconcile reads of it, not the pod template nor managedFields."""
    spec = {key: value for key, value in (obj.get("spec") or {}).items() if key != "template"}
    meta = without_managed_fields(obj)["metadata"]
    return {"kind": kind, "metadata": meta, "spec": spec, "status": obj.get("status") or {}}
