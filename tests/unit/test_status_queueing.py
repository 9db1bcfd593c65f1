"""Why a suspended training Job waits: the reason and message shown in the TrainingJob's Running condition."""

from __future__ import annotations

from typing import Any

from tandem.status.queueing import evicted, queued_reason


def workload(*conditions: tuple[str, str, str, str], active: bool = True) -> dict[str, Any]:
    return {
        "spec": {"active": active},
        "status": {
            "conditions": [
                {"type": kind, "status": status, "reason": reason, "message": message}
                for kind, status, reason, message in conditions
            ]
        },
    }


def test_spec_suspend_is_the_reason_with_or_without_a_queue() -> None:
    assert queued_reason(True, None, None) == ("Suspended", "spec.suspend is set")
    reason, message = queued_reason(True, "gpu", workload(active=False))
    assert reason == "Suspended"
    assert "Workload is deactivated" in message and "LocalQueue gpu" in message


def test_a_queued_job_before_kueue_made_its_workload_waits_for_kueue() -> None:
    assert queued_reason(False, "gpu", None)[0] == "WaitingForKueue"


def test_a_run_waiting_for_kueue_with_a_priority_class_names_the_class_to_check() -> None:
    assert queued_reason(False, "gpu", None, "urgnet") == (
        "WaitingForKueue",
        "queued for LocalQueue gpu; Kueue has not taken the Job in yet "
        "(it takes none in whose WorkloadPriorityClass urgnet does not exist)",
    )


def test_an_unknown_queue_is_inadmissible_with_kueues_message() -> None:
    unknown = workload(("QuotaReserved", "False", "Inadmissible", "LocalQueue nope doesn't exist"))
    assert queued_reason(False, "nope", unknown) == (
        "Inadmissible",
        "Kueue cannot admit the run: LocalQueue nope doesn't exist",
    )


def test_a_run_beyond_the_quota_is_pending_with_kueues_message() -> None:
    full = workload(("QuotaReserved", "False", "Pending", "insufficient unused quota for nvidia.com/gpu"))
    assert queued_reason(False, "gpu", full) == (
        "Pending",
        "waiting in LocalQueue gpu: insufficient unused quota for nvidia.com/gpu",
    )


def test_a_preempted_run_says_so_until_it_has_quota_again() -> None:
    preempted = workload(
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload due to prioritization"),
        ("QuotaReserved", "False", "Pending", "Preempted to accommodate a workload due to prioritization"),
    )
    assert queued_reason(False, "gpu", preempted)[0] == "Preempted"
    stopping = workload(("Evicted", "True", "Preempted", "..."), ("QuotaReserved", "True", "QuotaReserved", ""),
                        ("Admitted", "True", "Admitted", ""))
    assert queued_reason(False, "gpu", stopping)[0] == "Preempted"  # its workers are stopping, quota still held
    readmitted = workload(("Evicted", "False", "QuotaReserved", ""), ("QuotaReserved", "True", "QuotaReserved", ""),
                          ("Admitted", "True", "Admitted", ""))  # Kueue resets Evicted when it reserves quota again
    assert queued_reason(False, "gpu", readmitted)[0] == "Admitted"


def test_an_evicted_run_is_evicted_until_kueue_reserves_quota_for_it_again() -> None:
    preempted = workload(("Evicted", "True", "Preempted", "..."), ("QuotaReserved", "False", "Pending", "..."))
    stopping = workload(("Evicted", "True", "Preempted", "..."), ("QuotaReserved", "True", "QuotaReserved", ""))
    readmitted = workload(("Evicted", "False", "QuotaReserved", ""), ("QuotaReserved", "True", "QuotaReserved", ""))
    never_admitted = workload(("QuotaReserved", "False", "Pending", "insufficient unused quota"))
    assert evicted(preempted)
    assert evicted(stopping)
    assert not evicted(readmitted)
    assert not evicted(never_admitted)
    assert not evicted(None)
