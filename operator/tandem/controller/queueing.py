"""Kueue's Workload of a queued training run: read for the status, deactivated while spec.suspend is set.

Kueue owns a queued Job's `spec.suspend`: it unsuspends the Job when it admits the Workload, suspends it when
it evicts it (preemption), and starts again an admitted Job that someone else suspended. A queued run is
therefore held the way Kueue provides for: its Workload's `spec.active: false`, which evicts it, releases
its quota and suspends the Job; `spec.active: true` puts it back in its queue. A run without a queue is held
by its Job's `spec.suspend`, as before.

Kueue's API is optional (its CRDs may not be installed): an absent API reads as "no Workload". The calls go
through tandem.controller.kube like every other (its path table, deadline and leadership fence).
"""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

from tandem.controller.kube import Kube

API_VERSION = "kueue.x-k8s.io/v1beta2"
KIND = "Workload"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Kueue labels the Workload it creates for a Job with the Job's uid."""


def workload_of(kube: Kube, job: dict[str, Any]) -> dict[str, Any] | None:
    """The Workload Kueue made for `job`, or None (not made yet, or Kueue's API absent)."""
    meta = job.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return None
    try:
        items = kube.list_objects(API_VERSION, KIND, meta["namespace"], {JOB_UID_LABEL: uid})
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    # Kueue keeps one Workload per Job; the newest wins while it replaces an outdated one.
    return max(items, key=lambda item: item["metadata"].get("creationTimestamp") or "", default=None)


def hold(kube: Kube, workload: dict[str, Any], suspend: bool) -> dict[str, Any]:
    """Deactivate the Workload while the run is suspended, reactivate it after; unchanged, no write."""
    active = not suspend
    if bool((workload.get("spec") or {}).get("active", True)) == active:
        return workload
    meta = workload["metadata"]
    return kube.merge_patch(API_VERSION, KIND, meta["namespace"], meta["name"], {"spec": {"active": active}})
