"""Which objects the periodic resync must look at: pure predicates over the bodies of a list.

The resync exists for what no watch event announces: node counts of pools, usage of running work, pods that
cannot be scheduled, resources waiting for a pool or a model. Everything else is event-driven, so an idle
cluster of finished and Ready resources costs the resync one paginated list per kind and nothing per object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SETTLED_TRAINING = ("Succeeded", "Failed", "Queued")
"""Phases in which a TrainingJob waits for an event (its Job's, or a spec change), not for time."""


def _current(body: Mapping[str, Any]) -> bool:
    """Whether the status was written for the present spec."""
    status = body.get("status") or {}
    generation = (body.get("metadata") or {}).get("generation")
    return status.get("observedGeneration") is not None and status.get("observedGeneration") == generation


def _false_condition(body: Mapping[str, Any], kind: str) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "False" for c in conditions)


def training_due(body: Mapping[str, Any]) -> bool:
    """A TrainingJob needs the resync unless its status is current and it is finished or suspended.

    A run queued in Kueue (spec.queue) is not settled: Kueue's verdict on it (pending for quota, inadmissible,
    preempted) and the Workload a suspended run must deactivate (tandem.controller.queueing) appear on its Workload,
    which no watch of the operator follows; only admission touches the Job."""
    if not _current(body) or _false_condition(body, "PoolResolved"):
        return True
    if (body.get("spec") or {}).get("queue") and (body.get("status") or {}).get("phase") == "Queued":
        return True
    return (body.get("status") or {}).get("phase") not in SETTLED_TRAINING


def serving_due(body: Mapping[str, Any]) -> bool:
    """An InferenceService needs the resync unless it is Ready for its present spec and has no canary on trial
    (the reconcile also asks for its own next look then).

    Its usage ledger does not make it due: the ledger is brought up to date with the next change the service
    writes anyway (tandem.controller.reconcile.settle_usage), so a Ready service at rest costs no read and no write."""
    status = body.get("status") or {}
    return not _current(body) or status.get("phase") != "Ready" or bool(status.get("canary"))
