"""Level-triggered reconciliation: read the resource and what it owns, apply the desired children, write status.

Everything here is I/O glue between `Kube` and the pure modules (decide, render, status); the operator's
Controller (tandem.controller.controller) calls it from its work queue, whose keys the kopf registrations in
tandem.controller.handlers and the child watches add. Each function can run any number of times for the same
state and converges to the same objects.

Writes happen only on a real difference: status is patched only when it changed, and conditionally on the
resourceVersion of the body it was computed from (a 409 tells the caller its view was stale); an
InferenceService's children are applied only when what they should be differs from what they were last
applied as (a hash on the Deployment), and its usage ledger is written only when something else changes, so an
idle Ready service costs no write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus
from tandem.api.conditions import Event, find, has_ready_condition, set_condition
from tandem.api.inferenceservice import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    ServedModel,
)
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB, Resource
from tandem.api.trainingjob import TrainingJobSpec, TrainingJobStatus, TrainingPhase
from tandem.config import OperatorConfig
from tandem.controller import canary_metrics, queueing
from tandem.controller.children import refusal
from tandem.controller.kube import FIELD_MANAGER, Kube
from tandem.decide import canary, costing, gang, placement, serving_plan
from tandem.decide import observed as profiles
from tandem.errors import Problem
from tandem.quantity import parse_quantity
from tandem.render import profiling as profiling_build
from tandem.render import serving as serving_build
from tandem.render import training as training_build
from tandem.status.pools import pool_status
from tandem.status.queueing import evicted
from tandem.status.serving import problem_status, resolve_model, serving_status
from tandem.status.serving import rollout as rollout_figures
from tandem.status.training import ObservedRun, made_by, stopping, training_status

SPEC_HASH_ANNOTATION = "tandem.dev/spec-hash"
CHILDREN_HASH_ANNOTATION = "tandem.dev/children-hash"
GANG_RECHECK = 15.0
"""Seconds between looks at a pool's free room for a gang that waits for it: room that other workloads free
queues nothing for the run that waits."""
StatusT = TypeVar("StatusT", bound=BaseModel)


@dataclass
class Outcome:
    """What a reconcile changed: the status written and the events to post."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    recheck_after: float | None = None
    """Seconds after which the object wants another look (a canary on trial), besides any event."""
    refused: Identity | None = None
    """The (uid, generation) of the body whose child the API server refused: the caller holds it (`Hold`)."""


Identity = tuple[str, int]
"""(uid, generation) of an object's body: the object and the spec a refusal is about."""
REFUSAL_RETRY = 30.0
"""Seconds before a refused child is tried again the first time; each further refusal doubles it."""
REFUSAL_RETRY_CAP = 1800.0


@dataclass(frozen=True)
class Hold:
    """An object whose child the API server refused: not reconciled again for the same spec before `until`.

    A refusal for what a request says (an invalid child, a forbidden one, a quota exceeded) comes back every time
    the same request is sent, so it is sent again only after a doubling backoff (a quota can free up, an admission
    policy can change), or at once when the spec changes. The status says why (a ChildRefused condition, its
    Warning posted once, when the condition is news); what the hold saves is a write and an event every resync.
    """

    identity: Identity
    attempts: int
    until: float
    """Monotonic seconds."""


def hold_after(previous: Hold | None, identity: Identity, at: float) -> Hold:
    """The hold after a refusal at `at` (monotonic seconds): longer each time the same spec is refused again."""
    attempts = previous.attempts + 1 if previous is not None and previous.identity == identity else 1
    return Hold(identity, attempts, at + min(REFUSAL_RETRY_CAP, REFUSAL_RETRY * 2 ** (attempts - 1)))


def held(hold: Hold | None, identity: Identity, at: float) -> bool:
    """Whether a reconcile of the body with this identity waits: the same object and spec, before the hold ends."""
    return hold is not None and hold.identity == identity and at < hold.until


def refused(exc: ApiException) -> bool:
    """A write the API server refused for what it says (400, 403, 422...), not for the object's state (404, 409)
    or its own load (429, 5xx): the same request would be refused again."""
    return 400 <= int(exc.status or 0) < 500 and exc.status not in (404, 409, 429)


def refusal_problem(exc: ApiException) -> Problem:
    """ChildRefused, in the API server's own words."""
    return Problem(
        "ChildRefused",
        f"the API server refused a child object ({exc.status} {exc.reason}): {refusal(exc)[:500]}; tried again "
        "after a backoff, or at once when the spec changes",
    )


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def wire(model: BaseModel) -> dict[str, Any]:
    """Status as a merge patch: None fields are sent as null so that the API server removes them."""
    return model.model_dump(mode="json", by_alias=True)


def version(body: Mapping[str, Any]) -> str | None:
    """The resourceVersion of a body: the precondition of any status computed from it."""
    found = (body.get("metadata") or {}).get("resourceVersion")
    return str(found) if found else None


class Gone(Exception):
    """The object a reconcile works for no longer exists with its body's uid: deleted (perhaps while a watch
    relisted, which announces no deletion), or replaced by another of the same name. Nothing is written for it."""


def confirm_alive(kube: Kube, resource: Resource, body: Mapping[str, Any]) -> None:
    """Raise Gone unless the API server has the object, with the body's uid, now.

    Asked before anything is created for an object, and only then (a GET): a body kept from a watch may outlive
    its object, and children created for a uid that no longer exists are deleted by the garbage collector, whose
    deletions queue the owner again, which would create them again, for ever.
    """
    namespace, name, uid, _ = _meta(body)
    found = kube.get_custom(resource, namespace or None, name)
    if found is None or (found.get("metadata") or {}).get("uid") != uid:
        raise Gone(f"{resource.kind} {namespace}/{name} (uid {uid}) no longer exists")


def patch_status(
    kube: Kube,
    resource: Resource,
    namespace: str | None,
    name: str,
    status: dict[str, Any],
    resource_version: str | None,
) -> dict[str, Any]:
    """Kube.patch_status, where a 404 (the object is gone) is Gone."""
    try:
        return kube.patch_status(resource, namespace, name, status, resource_version)
    except ApiException as exc:
        if exc.status == 404:
            raise Gone(f"{resource.kind} {namespace}/{name} no longer exists") from exc
        raise


def write_status(
    kube: Kube,
    resource: Resource,
    namespace: str | None,
    name: str,
    previous: BaseModel,
    status: BaseModel,
    resource_version: str | None,
) -> tuple[dict[str, Any], bool]:
    """Patch the status subresource only when it changed: unchanged status costs no API write.

    The patch carries `resource_version`, so it fails with 409 rather than overwrite a status written after
    the body was read. Returns the status as written and whether a write happened.
    """
    written = wire(status)
    changed = written != wire(previous)
    if changed:
        patch_status(kube, resource, namespace, name, written, resource_version)
    return written, changed


def invalid_spec(error: ValidationError) -> Problem:
    """A body the CRD schema let through but the models refuse (an older CRD, a hand-edited status)."""
    details = "; ".join(
        f"spec.{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()[:5]
    )
    return Problem("InvalidSpec", details)


def parse_pools(pools: Mapping[str, Any]) -> dict[str, ComputePoolSpec]:
    """ComputePool specs by name, skipping pools whose spec does not parse (they get their own condition)."""
    parsed: dict[str, ComputePoolSpec] = {}
    for name, spec in pools.items():
        try:
            parsed[name] = ComputePoolSpec.model_validate(spec)
        except ValidationError:
            continue
    return parsed


def run_spec_hash(spec: TrainingJobSpec) -> str:
    """Hash of what defines a run. Suspend and the priority class are left out: pausing a run or changing its
    priority does not restart it. Fields at their defaults are left out too, so a field added to the API later
    leaves the hash of every existing spec (and so its run) as it was."""
    payload = spec.model_dump(mode="json", by_alias=True, exclude={"suspend", "priority_class"}, exclude_defaults=True)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _parse_status(model: type[StatusT], body: Mapping[str, Any]) -> StatusT:
    try:
        return model.model_validate(body.get("status") or {})
    except ValidationError:
        return model()


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str, int]:
    meta = body["metadata"]
    return meta.get("namespace", ""), meta["name"], meta["uid"], int(meta.get("generation") or 1)


def _own_job(kube: Kube, namespace: str, job_name: str | None, uid: str) -> dict[str, Any] | None:
    """The Job status names, if this object (by uid) made it.

    Status names a run before its Job exists, and a run's name is deterministic: a TrainingJob deleted and made
    again finds the earlier object's Job under that name until the garbage collector has removed it. That Job
    is never read as this object's run (its phase, its workers' reports) nor adopted: create_or_adopt deletes it.
    """
    job = kube.read("batch/v1", "Job", namespace, job_name) if job_name else None
    return job if job is not None and controlled_by(job, uid) else None


def _made_for(job: dict[str, Any] | None, spec_hash: str) -> bool:
    """Whether a Job was made for the spec with this hash."""
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(SPEC_HASH_ANNOTATION) == spec_hash


def create_or_adopt(kube: Kube, desired: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create a run's Job, or adopt the one of that name that this same object made: (the Job as stored,
    whether created).

    One call in the common case. A Job of this deterministic name exists when the operator stopped between
    creating it and recording it in status; it is adopted, never duplicated (a Job's template cannot be
    changed, so it is not applied over either). One that another object of the same name made (this one was
    deleted and created again before the garbage collector removed the old one's children) is never adopted:
    it is deleted, and the create is tried again once it is gone (a 409 until then, retried with backoff). One
    that no TrainingJob made is someone else's: refused (422, a ChildRefused condition), never touched.
    """
    try:
        return kube.create(desired), True
    except ApiException as exc:
        if exc.status != 409:
            raise
    meta = desired["metadata"]
    existing = kube.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    if existing is None:
        raise ApiException(status=409, reason=f"Job {meta['name']} exists and is gone: being deleted")
    owner = next(reference for reference in meta["ownerReferences"] if reference.get("controller"))
    if controlled_by(existing, owner["uid"]):
        return existing, False
    if not controlled_by_kind(existing, owner["apiVersion"], owner["kind"]):
        # Someone else's Job that happens to carry this run's name: never ours to delete or to adopt.
        raise ApiException(
            status=422, reason=f"Job {meta['name']} exists and was not made by any {owner['kind']}: rename or delete it"
        )
    kube.delete(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
    raise ApiException(
        status=409, reason=f"Job {meta['name']} belongs to an earlier object of this name: deleted, to be replaced"
    )


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    """Whether the object's controller is the owner with this uid."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("controller") and reference.get("uid") == uid for reference in references)


def controlled_by_kind(obj: dict[str, Any], api_version: str, kind: str) -> bool:
    """Whether the object's controller is an object of this kind (any uid)."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(
        reference.get("controller") and reference.get("apiVersion") == api_version and reference.get("kind") == kind
        for reference in references
    )


def may_have_pods(job: dict[str, Any]) -> bool:
    """False only for a suspended Job whose status counts no pod in any state."""
    status = job.get("status") or {}
    counted = ("active", "ready", "succeeded", "failed", "terminating")
    return not (job.get("spec") or {}).get("suspend") or any(status.get(field) for field in counted)


def _run_generation(job: dict[str, Any]) -> int:
    return int(((job.get("metadata") or {}).get("labels") or {}).get("tandem.dev/generation", 0))


def reconcile_training(
    kube: Kube,
    body: Mapping[str, Any],
    pools: Mapping[str, Any],
    config: OperatorConfig,
    admissions: AbstractContextManager[Any] | None = None,
) -> Outcome:
    """Reconcile a TrainingJob. `admissions` is held while a gang is checked against its pool and started:
    the operator's one lock, so two gangs are not both started into room for one; a lone caller has no other
    admission to exclude and may leave it out."""
    namespace, name, uid, generation = _meta(body)
    previous = _parse_status(TrainingJobStatus, body)
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _training_problem(kube, body, previous, generation, invalid_spec(error))
    parsed_pools = parse_pools(pools)
    try:
        pool_name = placement.training_pool(spec, parsed_pools)
    except Problem as problem:
        return _unplaced_training(kube, body, previous, spec, generation, problem)
    pool = parsed_pools[pool_name]
    spec_hash = run_spec_hash(spec)
    recorded = _own_job(kube, namespace, previous.job_name, uid)
    job = recorded if _made_for(recorded, spec_hash) else None
    run_generation = _run_generation(job) if job is not None else generation
    run = training_build.TrainingRun(name=name, namespace=namespace, uid=uid, generation=run_generation, spec=spec)
    finished_before = previous.job_name == run.job_name and previous.phase in (
        TrainingPhase.SUCCEEDED,
        TrainingPhase.FAILED,
    )
    if job is None and recorded is not None and previous.job_name == run.job_name:
        job = recorded  # this run's Job, made under another spec hash (an older operator): adopt it
    if job is None and not finished_before and (
        missing := missing_service_account(kube, namespace, spec.service_account_name)
    ):
        # Before the previous run is replaced: nothing changes until the run can really start.
        return _training_problem(kube, body, previous, generation, missing, condition="Running")
    events: list[Event] = []
    if previous.job_name and previous.job_name != run.job_name:
        kube.delete("batch/v1", "Job", namespace, previous.job_name)
        kube.delete("v1", "Service", namespace, previous.job_name)
        replaced = f"spec changed: run {previous.job_name} replaced by {run.job_name}"
        events.append(Event("Normal", "RunReplaced", replaced))
    created = False
    resource_version = version(body)
    named_now = False
    if job is None and not finished_before and previous.job_name != run.job_name:
        # The run is named in status before its Job exists, and the write is conditional: a refused write (a
        # 409 after another spec edit), a crash or a lost lease before the create leaves no Job that status
        # does not name, so the next run always finds, and deletes, this one.
        named, _ = training_status(previous, run, pool_name, pool, ObservedRun(None), now())
        named.observed_generation = generation
        stored = patch_status(kube, TRAINING_JOB, namespace, name, wire(named), resource_version)
        resource_version = (stored.get("metadata") or {}).get("resourceVersion")
        previous = named
        named_now = True  # a write conditional on the body's resourceVersion: the object is alive
    if job is None and not finished_before:
        if not named_now:
            confirm_alive(kube, TRAINING_JOB, body)
        desired = training_build.training_job(run, placement.pod_placement(pool_name, pool), pool, config)
        desired["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash}
        service = training_build.worker_service(run)
        try:
            if service is not None:
                kube.apply(service)
            job, created = create_or_adopt(kube, desired)
        except ApiException as exc:
            if not refused(exc):
                raise
            outcome = _training_problem(
                kube, body, previous, generation, refusal_problem(exc), "Running", resource_version
            )
            return Outcome(outcome.status, events + outcome.events, refused=(uid, generation))
        if created:
            message = f"Job {run.job_name} with {spec.workers} workers on ComputePool {pool_name}"
            events.append(Event("Normal", "Created", message))
    # Kueue owns a queued Job's suspend (tandem.controller.queueing): a queued run is held through its Workload instead.
    workload = queueing.workload_of(kube, job) if job is not None and not created and spec.queue else None
    if job is not None and not created and spec.queue:
        job = _prioritise(kube, job, spec.priority_class)
    if workload is not None:
        workload = queueing.hold(kube, workload, spec.suspend)
    gang_wait: str | None = None
    if job is not None and spec.queue is None:
        job, gang_wait = _hold_or_start(kube, job, spec, pool_name, pool, admissions or nullcontext())
    # A Job created a moment ago has no pods yet, nor has a suspended Job whose status counts none; their events
    # bring the next reconcile. (Ten thousand queued runs cost no pod list each.) A run Kueue evicted is the
    # exception: its stopped workers count nowhere in the Job's status (their exit is ignored), yet one may
    # still be there to report the checkpoint the run resumes from.
    has_pods = job is not None and not created and (may_have_pods(job) or evicted(workload))
    pods = _workers(kube, job, run.job_name) if has_pods else []
    if job is not None and (job.get("spec") or {}).get("suspend") and stopping(pods):
        pods = _stop_reports(kube, job, run.job_name, pods)
    observed = ObservedRun(job, pods, workload, gang_wait)
    status, status_events = training_status(previous, run, pool_name, pool, observed, now())
    status.observed_generation = generation
    written, _ = write_status(kube, TRAINING_JOB, namespace, name, previous, status, resource_version)
    if job is not None and status.phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        _after_recorded(kube, job, spec)
    return Outcome(written, events + status_events, recheck_after=GANG_RECHECK if gang_wait else None)


def _after_recorded(kube: Kube, job: dict[str, Any], spec: TrainingJobSpec) -> None:
    """What happens to a run's Job once its result is in status, and only then.

    A Job that has not finished is stopped: its retries could only wait for peers that left, or train again.
    A finished one gets spec.ttlSecondsAfterFinished now, not at creation, so the TTL controller can never
    delete a run (and its workers' reports) that the operator has not yet recorded, say while it was down.
    """
    meta = job["metadata"]
    if not _finished(job):
        kube.delete("batch/v1", "Job", meta["namespace"], meta["name"])
        kube.delete("v1", "Service", meta["namespace"], meta["name"])
        return
    ttl = spec.ttl_seconds_after_finished
    if ttl is not None and (job.get("spec") or {}).get("ttlSecondsAfterFinished") != ttl:
        kube.merge_patch("batch/v1", "Job", meta["namespace"], meta["name"], {"spec": {"ttlSecondsAfterFinished": ttl}})


def _unplaced_training(
    kube: Kube,
    body: Mapping[str, Any],
    previous: TrainingJobStatus,
    spec: TrainingJobSpec,
    generation: int,
    problem: Problem,
) -> Outcome:
    """A run whose pool cannot be resolved (deleted, renamed): its Job, if one runs or finished, is still
    observed and its result recorded, with PoolResolved False saying why no new run can start."""
    namespace, name, uid, _ = _meta(body)
    job = _own_job(kube, namespace, previous.job_name, uid)
    if job is None or previous.phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        return _training_problem(kube, body, previous, generation, problem)
    run_generation = _run_generation(job)
    run = training_build.TrainingRun(name=name, namespace=namespace, uid=uid, generation=run_generation, spec=spec)
    observed = ObservedRun(job, _workers(kube, job, run.job_name) if may_have_pods(job) else [])
    status, events = training_status(previous, run, previous.pool or "", None, observed, now())
    status.conditions = set_condition(
        status.conditions, "PoolResolved", False, problem.reason, problem.message, generation, now()
    )
    status.observed_generation = generation
    written, changed = write_status(kube, TRAINING_JOB, namespace, name, previous, status, version(body))
    if status.phase in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED):
        _after_recorded(kube, job, spec)
    warning = [Event("Warning", problem.reason, problem.message)] if changed else []
    return Outcome(written, events + warning)


def _workers(kube: Kube, job: dict[str, Any] | None, job_name: str) -> list[dict[str, Any]]:
    """The Job's pods: those its uid controls, not whatever carries its job-name label."""
    namespace = ((job or {}).get("metadata") or {}).get("namespace", "")
    pods = kube.list_objects("v1", "Pod", namespace, {"job-name": job_name})
    return [pod for pod in pods if made_by(pod, job)]


def _finished(job: dict[str, Any]) -> bool:
    return any(
        condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True"
        for condition in (job.get("status") or {}).get("conditions") or []
    )


def _hold_or_start(
    kube: Kube,
    job: dict[str, Any],
    spec: TrainingJobSpec,
    pool_name: str,
    pool: ComputePoolSpec,
    admissions: AbstractContextManager[Any],
) -> tuple[dict[str, Any], str | None]:
    """The Job suspended or started as spec.suspend says, a gang only once all of it fits the pool: the Job as
    stored, and why it still waits (None when it does not). A Job the operator does not queue for Kueue."""
    meta = job["metadata"]
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if _finished(job):
        return job, None
    if spec.suspend or not training_build.held_as_gang(spec):
        if suspended == spec.suspend:
            return job, None
        patch = {"spec": {"suspend": spec.suspend}}
        return kube.merge_patch("batch/v1", "Job", meta["namespace"], meta["name"], patch), None
    if not suspended:
        return job, None  # started as a whole already: its retried workers are the Job's to replace
    with admissions:
        fit = _gang_fit(kube, spec, pool_name, pool)
        if not fit.fits:
            return job, fit.message
        started = kube.merge_patch("batch/v1", "Job", meta["namespace"], meta["name"], {"spec": {"suspend": False}})
    return started, None


def _gang_fit(kube: Kube, spec: TrainingJobSpec, pool_name: str, pool: ComputePoolSpec) -> gang.GangFit:
    """Whether every worker of the run fits the pool's nodes now (tandem.decide.gang), from the nodes and live pods."""
    requests = placement.resource_requirements(spec.resources.cpu, spec.resources.memory, spec.resources.gpus, pool)
    worker = gang.pod_requests({"containers": [{"resources": requests}]})
    nodes = kube.nodes(pool.node_selector or None)
    names = {node["metadata"]["name"] for node in nodes}
    live = kube.live_pods()
    bound = [pod for pod in live if (pod.get("spec") or {}).get("nodeName") in names]
    starting = [
        pod for pod in live
        if not (pod.get("spec") or {}).get("nodeName")
        and ((pod.get("metadata") or {}).get("labels") or {}).get(gang.GANG_POOL_LABEL) == pool_name
    ]  # fmt: skip
    tolerations = placement.pod_placement(pool_name, pool).tolerations
    return gang.gang_fit(worker, spec.workers, nodes, tolerations, bound, starting)


STOP_REPORT_WAIT = 3.0
"""Longest a reconcile waits for a preempted worker's exit, to read its checkpoint report before the pod goes."""
STOP_REPORT_POLL = 0.1


def _stop_reports(
    kube: Kube, job: dict[str, Any], job_name: str, pods: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The pods again once the workers of a suspended Job (preempted, or spec.suspend) have exited (or after
    STOP_REPORT_WAIT).

    A stopped worker's checkpoint report is in its pod's status only between its exit and the pod's removal
    (the kubelet's volume teardown, about a second), and nothing queues a reconcile in that window; so the
    reconcile that sees the workers stopping waits for their exit, a trainer's SIGTERM handler being quick.
    Only while a run is being stopped, rarely, and bounded: one worker's time for a few seconds at most.
    """
    deadline = time.monotonic() + STOP_REPORT_WAIT
    while stopping(pods) and time.monotonic() < deadline:
        time.sleep(STOP_REPORT_POLL)
        pods = _workers(kube, job, job_name)
    return pods


def _prioritise(kube: Kube, job: dict[str, Any], priority_class: str | None) -> dict[str, Any]:
    """The Job labelled with the run's WorkloadPriorityClass; Kueue moves its Workload's priority to match.

    Only a change from one class to another reaches here (the CRD refuses adding or removing one, as Kueue's
    webhook refuses both for a running Job); unchanged, no write.
    """
    labels = (job.get("metadata") or {}).get("labels") or {}
    if not priority_class or labels.get(training_build.KUEUE_PRIORITY_LABEL) == priority_class:
        return job
    meta = job["metadata"]
    patch = {"metadata": {"labels": {training_build.KUEUE_PRIORITY_LABEL: priority_class}}}
    return kube.merge_patch("batch/v1", "Job", meta["namespace"], meta["name"], patch)


def missing_service_account(kube: Kube, namespace: str, account: str | None) -> Problem | None:
    """ServiceAccountNotFound when spec.serviceAccountName names a ServiceAccount that does not exist (yet).

    Without this a training Job (or a serving Deployment) would be made and its pods never created (the API
    server refuses a pod whose ServiceAccount is missing), which shows only in its events. It is held with a
    condition that names the account instead; the resync looks again, so creating the account later lets it start. An
    operator whose role predates the `get serviceaccounts` rule skips the check rather than stop every run.
    """
    if not account:
        return None
    try:
        if kube.get("v1", "ServiceAccount", namespace, account) is not None:
            return None
    except ApiException as exc:
        if exc.status == 403:
            return None
        raise
    return Problem(
        "ServiceAccountNotFound",
        f"ServiceAccount {account} (spec.serviceAccountName) does not exist in namespace {namespace}: create it, "
        "or name another; its pods start once it exists",
    )


def _training_problem(
    kube: Kube,
    body: Mapping[str, Any],
    previous: TrainingJobStatus,
    generation: int,
    problem: Problem,
    condition: str = "PoolResolved",
    resource_version: str | None = None,
) -> Outcome:
    """The previous status with `condition` False for `problem`, and a Warning when that is news; written on
    `resource_version` when a write of this reconcile has moved it past the body's."""
    namespace, name, _, _ = _meta(body)
    status = previous.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions, condition, False, problem.reason, problem.message, generation, now()
    )
    status.phase = status.phase or TrainingPhase.PENDING
    status.observed_generation = generation
    precondition = resource_version or version(body)
    written, changed = write_status(kube, TRAINING_JOB, namespace, name, previous, status, precondition)
    return Outcome(written, [Event("Warning", problem.reason, problem.message)] if changed else [])


def _training_job_status(kube: Kube, namespace: str, name: str) -> TrainingJobStatus | None:
    body = kube.get_custom(TRAINING_JOB, namespace, name)
    return None if body is None else _parse_status(TrainingJobStatus, body)


def _profile_on(
    kube: Kube, body: Mapping[str, Any], target: profiling_build.ProfileTarget, config: OperatorConfig
) -> tuple[profiles.Observation, list[Event]]:
    """The cached profile for the target (any equivalent Job in the namespace), or a new profile Job."""
    job = profiles.pick(kube.list_objects("batch/v1", "Job", target.replica.namespace, target.cache_labels))
    if job is None:
        confirm_alive(kube, INFERENCE_SERVICE, body)
        kube.apply(profiling_build.profile_job(target, config))
        message = (
            f"Job {target.job_name} profiles model {target.replica.model.version or target.replica.model.uri} "
            f"on ComputePool {target.pool_name}"
        )
        return profiles.Observation(profiles.ProfileState.RUNNING, target.job_name), [
            Event("Normal", "Profiling", message)
        ]
    name = str(job["metadata"]["name"])
    finished = profiles.job_finished(job)
    pods = kube.list_objects("v1", "Pod", target.replica.namespace, {"job-name": name}) if finished else []
    return profiles.observe(job, pods, target.replica.model.sha256), []


def gather_profiles(
    kube: Kube,
    body: Mapping[str, Any],
    spec: InferenceServiceSpec,
    model: ServedModel,
    pools: Mapping[str, ComputePoolSpec],
    config: OperatorConfig,
) -> tuple[dict[str, profiles.Observation], list[Event]]:
    """The profile of the model on each pool auto placement measures: cached per model, pool and settings,
    started as a Job where there is none yet."""
    namespace, name, uid, _ = _meta(body)
    found: dict[str, profiles.Observation] = {}
    events: list[Event] = []
    for pool_name in serving_plan.profile_pools(pools):
        pool = pools[pool_name]
        target = profiling_build.target(
            name, namespace, uid, spec, model, placement.pod_placement(pool_name, pool), pool, config
        )
        found[pool_name], started = _profile_on(kube, body, target, config)
        events += started
    return found, events


def _serving_usage(
    previous: InferenceServiceStatus,
    spec: InferenceServiceSpec,
    pools: Mapping[str, ComputePoolSpec],
    at: datetime,
) -> InferenceServiceStatus:
    """The usage ledger brought up to `at`: the ready replicas seen last time, for the time since, on their pool.

    Ready replicas, not created ones: a replica that is still Pending (no node, no image) costs nothing.
    """
    status = previous.model_copy(deep=True)
    pool = pools.get(previous.placement.pool) if previous.placement is not None else None
    if pool is not None:
        status.usage = costing.accrue(
            previous.usage,
            previous.usage_observed_at,
            at,
            previous.ready_replicas,
            float(parse_quantity(spec.resources.cpu)),
            placement.serving_accelerators(spec, pool),
            pool,
        )
    status.usage_observed_at = at
    return status


def _auto_conditions(
    previous: InferenceServiceStatus,
    status: InferenceServiceStatus,
    decision: costing.Decision,
    generation: int,
    at: datetime,
    events: list[Event],
) -> list[Event]:
    """PlacementDecided as auto placement states it (SloUnattainable when False), with its event."""
    reason = "CheapestWithinSlo" if decision.meets_slo else "SloUnattainable"
    status.conditions = set_condition(
        status.conditions, "PlacementDecided", decision.meets_slo, reason, decision.reason, generation, at
    )
    kept = [event for event in events if event.reason != "PlacementDecided"]
    before = find(previous.conditions, "PlacementDecided")
    same_placement = previous.placement is not None and wire(previous.placement) == wire(decision.status())
    if not same_placement or before is None or before.reason != reason:
        kept.append(Event("Normal" if decision.meets_slo else "Warning", "PlacementDecided", decision.reason))
    return kept


def _profiling(
    kube: Kube,
    body: Mapping[str, Any],
    previous: InferenceServiceStatus,
    generation: int,
    model: ServedModel,
    awaiting: serving_plan.AwaitingProfiles,
    events: list[Event],
) -> Outcome:
    """Status while profiles run: PlacementDecided False (Profiling); a Deployment already serving keeps on."""
    namespace, name, _, _ = _meta(body)
    at = now()
    message = "profiling model " + (model.version or model.uri) + " on " + ", ".join(awaiting.waiting)
    status = problem_status(previous, generation, "PlacementDecided", Problem("Profiling", message), at)
    status.conditions = set_condition(
        status.conditions, "ModelResolved", True, "ModelFound", f"{model.uri} version {model.version}",
        generation, at,
    )
    written, _ = write_status(kube, INFERENCE_SERVICE, namespace, name, previous, status, version(body))
    return Outcome(written, events)


def reconcile_serving(
    kube: Kube,
    body: Mapping[str, Any],
    pools: Mapping[str, Any],
    config: OperatorConfig,
    scraper: canary_metrics.Scraper | None = None,
) -> Outcome:
    """Reconcile an InferenceService; a child the API server refuses is a Ready False condition (ChildRefused),
    with the Outcome naming the body refused, rather than an error retried at every resync. A canary's
    metrics are read on `scraper`, the operator's bounded pool; without one they are not read, and a trial
    waits for them as for a pod that cannot be read."""
    try:
        return _reconcile_serving(kube, body, pools, config, scraper)
    except ApiException as exc:
        if not refused(exc):
            raise
        _, _, uid, generation = _meta(body)
        previous = _parse_status(InferenceServiceStatus, body)
        outcome = _serving_problem(kube, body, previous, generation, "Ready", refusal_problem(exc))
        return dataclasses.replace(outcome, refused=(uid, generation))


def _reconcile_serving(
    kube: Kube,
    body: Mapping[str, Any],
    pools: Mapping[str, Any],
    config: OperatorConfig,
    scraper: canary_metrics.Scraper | None,
) -> Outcome:
    namespace, name, uid, generation = _meta(body)
    previous = _parse_status(InferenceServiceStatus, body)
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _serving_problem(kube, body, previous, generation, "ModelResolved", invalid_spec(error))
    source = spec.model.from_training_job
    training_job = _training_job_status(kube, namespace, source.name) if source else None
    try:
        candidate = resolve_model(spec.model, training_job)
        observed = _observe_canary(kube, namespace, name, previous, scraper) if previous.canary is not None else None
        rollout = canary.plan(
            spec.rollout,
            previous.model,
            candidate,
            training_job.model.metrics if training_job is not None and training_job.model is not None else None,
            previous.canary,
            previous.rejected,
            max(previous.replicas, spec.replicas.min),
            observed,
            now(),
        )
    except Problem as problem:
        return _serving_problem(kube, body, previous, generation, "ModelResolved", problem)
    model = rollout.serve
    parsed_pools = parse_pools(pools)
    observations: dict[str, profiles.Observation] = {}
    profiling_events: list[Event] = []
    try:
        if serving_plan.is_auto(spec):
            observations, profiling_events = gather_profiles(kube, body, spec, model, parsed_pools, config)
        planned = serving_plan.plan(spec, parsed_pools, observations)
    except Problem as problem:
        return _serving_problem(kube, body, previous, generation, "PlacementDecided", problem)
    if isinstance(planned, serving_plan.AwaitingProfiles):
        return _profiling(kube, body, previous, generation, model, planned, profiling_events)
    spec_current = previous.observed_generation == generation
    ready = find(previous.conditions, "Ready")
    if not spec_current or (ready is not None and ready.reason == "ServiceAccountNotFound"):
        # Checked when the spec is new or changed (and while held), not on every resync of a serving service.
        missing = missing_service_account(kube, namespace, spec.service_account_name)
        if missing is not None:
            return _serving_problem(kube, body, previous, generation, "Ready", missing)
    pool = parsed_pools[planned.pool]
    serving = serving_build.Serving(
        name=name,
        namespace=namespace,
        uid=uid,
        spec=spec,
        model=model,
        placement=placement.pod_placement(planned.pool, pool),
        pool=pool,
        accelerators=planned.accelerators,
        replicas=planned.replicas,
        memory=planned.memory,
    )
    deployment = _apply_serving_children(kube, body, serving, config, spec_current=spec_current)
    if serving_build.autoscaler(serving) is None and previous.observed_generation not in (None, generation):
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", namespace, name)
    _apply_canary(kube, body, serving, config, rollout)
    url = serving_build.service_url(name, namespace, config.cluster_domain)
    at = now()
    ledger = _serving_usage(previous, spec, parsed_pools, at)
    status, events = serving_status(ledger, generation, model, planned.status, url, deployment, at)
    status = _rollout_status(status, rollout, generation, at)
    events = rollout.events + events
    if planned.decision is not None:
        events = profiling_events + _auto_conditions(previous, status, planned.decision, generation, at, events)
    status = settle_usage(previous, status)
    written, _ = write_status(kube, INFERENCE_SERVICE, namespace, name, previous, status, version(body))
    return Outcome(written, events, rollout.recheck_after)


def _observe_canary(
    kube: Kube, namespace: str, name: str, previous: InferenceServiceStatus, scraper: canary_metrics.Scraper | None
) -> canary.CanaryObservation:
    """The canary's Deployment and its ready servers' metrics, as they are now."""
    stored = kube.read("apps/v1", "Deployment", namespace, serving_build.canary_name(name))
    _, ready, _ = rollout_figures(stored)
    ips = [
        str((pod.get("status") or {}).get("podIP"))
        for pod in kube.list_objects("v1", "Pod", namespace, serving_build.canary_selector(name))
        if has_ready_condition(pod) and (pod.get("status") or {}).get("podIP")
    ]
    metrics = scraper.scrape(ips) if ips and scraper is not None else None
    if isinstance(metrics, canary_metrics.ScrapeFailure):
        # Not read is what None means to canary.plan: the trial waits, and fails if its window ends unread.
        canary_metrics.log.info(
            "canary of %s/%s: metrics of pod %s not read: %s", namespace, name, metrics.pod_ip, metrics.reason
        )
        metrics = None
    return canary.CanaryObservation(ready, previous.ready_replicas, metrics)


def _apply_canary(
    kube: Kube,
    body: Mapping[str, Any],
    serving: serving_build.Serving,
    config: OperatorConfig,
    rollout: canary.RolloutPlan,
) -> None:
    """The canary Deployment while a model is on trial (the stable one's pods, the trial model); gone after.

    Applied only when it differs from what was last applied (a digest annotation, as for the stable one), so
    the looks every few seconds at a canary on trial cost reads, not writes."""
    if rollout.canary is not None:
        trial = dataclasses.replace(serving, model=rollout.canary.model)
        desired = serving_build.canary_deployment(trial, config, rollout.canary.replicas)
        digest = children_hash([desired])
        meta = desired["metadata"]
        stored = kube.read("apps/v1", "Deployment", meta["namespace"], meta["name"])
        if _applied_digest(stored) != digest:
            if stored is None:
                confirm_alive(kube, INFERENCE_SERVICE, body)
            meta.setdefault("annotations", {})[CHILDREN_HASH_ANNOTATION] = digest
            kube.apply(desired)
        return
    name = serving_build.canary_name(serving.name)
    if kube.read("apps/v1", "Deployment", serving.namespace, name) is not None:
        # Level-triggered: whatever made it (a reconcile from a view since superseded), it goes.
        kube.delete("apps/v1", "Deployment", serving.namespace, name)


def _rollout_status(
    status: InferenceServiceStatus, rollout: canary.RolloutPlan, generation: int, at: datetime
) -> InferenceServiceStatus:
    status.canary = rollout.canary
    status.rejected = rollout.rejected
    if rollout.verdict is not None:
        verdict = rollout.verdict
        status.conditions = set_condition(
            status.conditions, canary.CONDITION, verdict.status, verdict.reason, verdict.message, generation, at
        )
    return status


def children_hash(children: list[dict[str, Any]]) -> str:
    """Digest of desired child objects: equal digests, nothing to apply."""
    payload = json.dumps(children, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _apply_serving_children(
    kube: Kube, body: Mapping[str, Any], serving: serving_build.Serving, config: OperatorConfig, spec_current: bool
) -> dict[str, Any] | None:
    """Apply the Deployment, Service, budget and autoscaler unless they are already what they should be.

    The digest of all four is kept as an annotation on the Deployment. A read of each child (from the watches'
    stores) tells whether anything must be applied: when the status says this spec was already reconciled, the
    same digest on the Deployment and the others all present costs reads, not four writes, while a child deleted
    by hand (its watch queues the service) is applied again. A new or changed spec applies whatever the digest.
    A child missing is created only once the API server confirms the service itself (confirm_alive). Returns
    the Deployment as stored.
    """
    deployment = serving_build.deployment(serving, config)
    others = [serving_build.service(serving), serving_build.disruption_budget(serving)]
    hpa = serving_build.autoscaler(serving)
    if hpa is not None:
        others.append(hpa)
    digest = children_hash([deployment, *others])
    meta = deployment["metadata"]
    stored = kube.read("apps/v1", "Deployment", meta["namespace"], meta["name"])
    complete = stored is not None and all(_exists(kube, child) for child in others)
    if spec_current and complete and _applied_digest(stored) == digest:
        return stored
    if not complete:
        confirm_alive(kube, INFERENCE_SERVICE, body)
    meta.setdefault("annotations", {})[CHILDREN_HASH_ANNOTATION] = digest
    _hand_over_replicas(kube, deployment)
    stored = kube.apply(deployment)
    for child in others:
        kube.apply(child)
    return stored


def _hand_over_replicas(kube: Kube, deployment: dict[str, Any]) -> None:
    """Before a Deployment is applied without spec.replicas (an HPA scales it), its current count is handed to a
    manager of its own (serving_build.replicas_handover), so the apply cannot drop it to the default of 1.

    A 409 means the HPA's controller already owns the field with another count: nothing left to hand over.
    """
    if "replicas" in deployment["spec"]:
        return
    meta = deployment["metadata"]
    stored = kube.get("apps/v1", "Deployment", meta["namespace"], meta["name"])
    handover = serving_build.replicas_handover(deployment, stored, FIELD_MANAGER)
    if handover is None:
        return
    try:
        kube.apply(handover, manager=serving_build.REPLICAS_HANDOVER_MANAGER, force=False)
    except ApiException as exc:
        if exc.status != 409:
            raise


def _applied_digest(stored: dict[str, Any] | None) -> str | None:
    """The children digest a stored Deployment was last applied with (CHILDREN_HASH_ANNOTATION)."""
    annotations = ((stored or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get(CHILDREN_HASH_ANNOTATION)


def _exists(kube: Kube, obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    return kube.read(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]) is not None


def settle_usage(previous: InferenceServiceStatus, status: InferenceServiceStatus) -> InferenceServiceStatus:
    """The status to write: the previous usage ledger kept when it is all that changed, so that a service at rest
    costs no write however long it serves.

    Lossless: the ledger integrates the ready replicas recorded beside it from usageObservedAt on, and any other
    change (ready replicas, model, placement, a condition) is a write that brings the ledger up to date. Until
    then a service's usage is status.usage plus its readyReplicas for the time since usageObservedAt.
    """
    if previous.usage_observed_at is None:
        return status
    kept = status.model_copy(update={"usage": previous.usage, "usage_observed_at": previous.usage_observed_at})
    return kept if wire(kept) == wire(previous) else status


def _serving_problem(
    kube: Kube,
    body: Mapping[str, Any],
    previous: InferenceServiceStatus,
    generation: int,
    condition: str,
    problem: Problem,
) -> Outcome:
    namespace, name, _, _ = _meta(body)
    status = problem_status(previous, generation, condition, problem, now())
    written, changed = write_status(kube, INFERENCE_SERVICE, namespace, name, previous, status, version(body))
    return Outcome(written, [Event("Warning", problem.reason, problem.message)] if changed else [])


def reconcile_pool(kube: Kube, body: Mapping[str, Any], nodes: list[dict[str, Any]] | None = None) -> Outcome:
    """Pool status from `nodes` (node_summary of every node, from the operator's node watch), or from a
    list of the pool's nodes when none is given (outside the operator: tools and tests)."""
    _, name, _, generation = _meta(body)
    previous = _parse_status(ComputePoolStatus, body)
    try:
        spec = ComputePoolSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        problem = invalid_spec(error)
        status = previous.model_copy(deep=True)
        status.conditions = set_condition(
            status.conditions, "Ready", False, problem.reason, problem.message, generation, now()
        )
        written, changed = write_status(kube, COMPUTE_POOL, None, name, previous, status, version(body))
        return Outcome(written, [Event("Warning", problem.reason, problem.message)] if changed else [])
    # Without the watch's view, only the pool's own nodes: the API server filters by the pool's labels.
    members = nodes if nodes is not None else kube.nodes(spec.node_selector)
    status = pool_status(previous, generation, spec, members, now())
    written, _ = write_status(kube, COMPUTE_POOL, None, name, previous, status, version(body))
    return Outcome(written)
