"""Why a suspended training Job waits, in words a user can act on, from the run's spec and Kueue's Workload.

Kueue writes its verdict on the Workload, not on the Job: `QuotaReserved=False` with reason `Pending` (no
quota free now: "couldn't assign flavors ... insufficient unused quota") or `Inadmissible` (it never will be
as things stand: "LocalQueue x doesn't exist", "... is stopped"), and `Evicted=True` after a preemption.
The TrainingJob's `Running` condition carries that reason and message while its phase is Queued.
"""

from __future__ import annotations

from typing import Any


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def _is(condition: dict[str, Any] | None, status: str) -> bool:
    return condition is not None and condition.get("status") == status


def queued_reason(
    suspend: bool, queue: str | None, workload: dict[str, Any] | None, priority_class: str | None = None
) -> tuple[str, str]:
    """Reason and message for a run whose Job is suspended.

    Kueue makes no Workload for a Job whose WorkloadPriorityClass does not exist (it says so only in its own
    log), so a run with a priority class that waits for Kueue names the class as a thing to check.
    """
    if suspend:
        held = f"; its Kueue Workload is deactivated, holding no quota in LocalQueue {queue}" if queue else ""
        return "Suspended", f"spec.suspend is set{held}"
    if queue is None:
        return "Suspended", "the Job is suspended"
    if workload is None:
        waiting = f"queued for LocalQueue {queue}; Kueue has not taken the Job in yet"
        if priority_class:
            waiting += f" (it takes none in whose WorkloadPriorityClass {priority_class} does not exist)"
        return "WaitingForKueue", waiting
    reserved = _condition(workload, "QuotaReserved")
    evicted = _condition(workload, "Evicted")
    if _is(reserved, "False") and (reserved or {}).get("reason") == "Inadmissible":
        return "Inadmissible", f"Kueue cannot admit the run: {(reserved or {}).get('message', '')}"
    if _is(evicted, "True"):  # Kueue resets it when it reserves quota again; until then, also while workers stop
        reason = "Preempted" if (evicted or {}).get("reason") == "Preempted" else "Evicted"
        return reason, f"Kueue evicted the run, which waits in LocalQueue {queue}: {(evicted or {}).get('message', '')}"
    if _is(_condition(workload, "Admitted"), "True"):
        return "Admitted", f"admitted by Kueue from LocalQueue {queue}; the Job is starting"
    detail = (reserved or {}).get("message") if _is(reserved, "False") else None
    return "Pending", f"waiting in LocalQueue {queue}" + (f": {detail}" if detail else "")


def evicted(workload: dict[str, Any] | None) -> bool:
    """Whether Kueue evicted the run (preempted it, or deactivated for spec.suspend) and has not reserved quota
    for it again (Kueue then resets Evicted): its Job is suspended, but its stopped workers may still be there
    to report their checkpoint."""
    return _is(_condition(workload, "Evicted"), "True")
