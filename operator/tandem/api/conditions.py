"""metav1.Condition bookkeeping: a transition time that changes only when the status does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tandem.api.common import Condition, ConditionStatus


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post: Normal for decisions, Warning for problems."""

    type: str
    reason: str
    message: str


def find(conditions: list[Condition], kind: str) -> Condition | None:
    return next((condition for condition in conditions if condition.type == kind), None)


def has_ready_condition(obj: Mapping[str, Any]) -> bool:
    """Whether a Node or a Pod (as the API server returns it) has its Ready condition True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_true(conditions: list[Condition], kind: str) -> bool:
    condition = find(conditions, kind)
    return condition is not None and condition.status == ConditionStatus.TRUE


def set_condition(
    conditions: list[Condition],
    kind: str,
    status: bool | ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """The conditions with `kind` set; other conditions and their order are kept."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = find(conditions, kind)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    updated = Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if condition.type == kind else condition for condition in conditions]
