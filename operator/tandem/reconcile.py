"""Level-triggered reconciliation: read the resource and what it owns, apply the desired children, write status.

Everything here is I/O glue between `Kube` and the pure modules (placement, build, status); the kopf
registrations in tandem.handlers only decide when to call it. Each function can run any number of times
for the same state and converges to the same objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tandem import placement
from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus
from tandem.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus, PlacementStatus
from tandem.api.resources import COMPUTE_POOL, INFERENCE_SERVICE, TRAINING_JOB
from tandem.api.trainingjob import TrainingJobSpec, TrainingJobStatus, TrainingPhase
from tandem.build import serving as serving_build
from tandem.build import training as training_build
from tandem.config import OperatorConfig
from tandem.errors import Problem
from tandem.kube import Kube
from tandem.quantity import parse_quantity
from tandem.status.conditions import Event, set_condition
from tandem.status.pools import pool_status
from tandem.status.serving import problem_status, resolve_model, serving_status
from tandem.status.training import ObservedRun, training_status

SPEC_HASH_ANNOTATION = "tandem.dev/spec-hash"
StatusT = TypeVar("StatusT", bound=BaseModel)


@dataclass
class Outcome:
    """What a reconcile changed: the status written and the events to post."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def wire(model: BaseModel) -> dict[str, Any]:
    """Status as a merge patch: None fields are sent as null so that the API server removes them."""
    return model.model_dump(mode="json", by_alias=True)


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
    """Hash of what defines a run; suspend is left out so that pausing a run does not restart it."""
    payload = spec.model_dump(mode="json", by_alias=True, exclude={"suspend"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _parse_status(model: type[StatusT], body: Mapping[str, Any]) -> StatusT:
    try:
        return model.model_validate(body.get("status") or {})
    except ValidationError:
        return model()


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str, int]:
    meta = body["metadata"]
    return meta.get("namespace", ""), meta["name"], meta["uid"], int(meta.get("generation") or 1)


def _matching_run(kube: Kube, status: TrainingJobStatus, namespace: str, spec_hash: str) -> dict[str, Any] | None:
    """The current run's Job, if it still exists and was made for this spec."""
    if status.job_name is None:
        return None
    job = kube.get("batch/v1", "Job", namespace, status.job_name)
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    return job if annotations.get(SPEC_HASH_ANNOTATION) == spec_hash else None


def _run_generation(job: dict[str, Any]) -> int:
    return int(((job.get("metadata") or {}).get("labels") or {}).get("tandem.dev/generation", 0))


def reconcile_training(
    kube: Kube, body: Mapping[str, Any], pools: Mapping[str, Any], config: OperatorConfig
) -> Outcome:
    namespace, name, uid, generation = _meta(body)
    previous = _parse_status(TrainingJobStatus, body)
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _training_problem(kube, namespace, name, previous, generation, invalid_spec(error))
    parsed_pools = parse_pools(pools)
    try:
        pool_name = placement.training_pool(spec, parsed_pools)
    except Problem as problem:
        return _training_problem(kube, namespace, name, previous, generation, problem)
    pool = parsed_pools[pool_name]
    spec_hash = run_spec_hash(spec)
    job = _matching_run(kube, previous, namespace, spec_hash)
    run_generation = _run_generation(job) if job is not None else generation
    run = training_build.TrainingRun(name=name, namespace=namespace, uid=uid, generation=run_generation, spec=spec)
    finished_before = previous.job_name == run.job_name and previous.phase in (
        TrainingPhase.SUCCEEDED,
        TrainingPhase.FAILED,
    )
    events: list[Event] = []
    if previous.job_name and previous.job_name != run.job_name:
        kube.delete("batch/v1", "Job", namespace, previous.job_name)
        kube.delete("v1", "Service", namespace, previous.job_name)
        replaced = f"spec changed: run {previous.job_name} replaced by {run.job_name}"
        events.append(Event("Normal", "RunReplaced", replaced))
    if job is None:
        job = kube.get("batch/v1", "Job", namespace, run.job_name)
    if job is None and not finished_before:
        desired = training_build.training_job(run, placement.pod_placement(pool_name, pool), pool, config)
        desired["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash}
        service = training_build.worker_service(run)
        if service is not None:
            kube.apply(service)
        job = kube.apply(desired)
        events.append(
            Event("Normal", "Created", f"Job {run.job_name} with {spec.workers} workers on ComputePool {pool_name}")
        )
    elif job is not None and bool((job.get("spec") or {}).get("suspend")) != spec.suspend and spec.queue is None:
        job = kube.merge_patch("batch/v1", "Job", namespace, run.job_name, {"spec": {"suspend": spec.suspend}})
    pods = kube.list_objects("v1", "Pod", namespace, {"job-name": run.job_name}) if job is not None else []
    status, status_events = training_status(previous, run, pool_name, pool, ObservedRun(job, pods), now())
    status.observed_generation = generation
    written = wire(status)
    if written != wire(previous):
        kube.patch_status(TRAINING_JOB, namespace, name, written)
    return Outcome(written, events + status_events)


def _training_problem(
    kube: Kube, namespace: str, name: str, previous: TrainingJobStatus, generation: int, problem: Problem
) -> Outcome:
    status = previous.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions, "PoolResolved", False, problem.reason, problem.message, generation, now()
    )
    status.phase = status.phase or TrainingPhase.PENDING
    status.observed_generation = generation
    written = wire(status)
    if written != wire(previous):
        kube.patch_status(TRAINING_JOB, namespace, name, written)
        return Outcome(written, [Event("Warning", problem.reason, problem.message)])
    return Outcome(written)


def _training_job_status(kube: Kube, namespace: str, name: str) -> TrainingJobStatus | None:
    body = kube.get_custom(TRAINING_JOB, namespace, name)
    return None if body is None else _parse_status(TrainingJobStatus, body)


def decide_placement(spec: InferenceServiceSpec, pools: Mapping[str, ComputePoolSpec]) -> PlacementStatus:
    """Pool and reason for cpu, gpu or an explicit pool; priced at the minimum replica count."""
    pool_name, reason = placement.serving_pool(spec, pools)
    pool = pools[pool_name]
    cores = float(parse_quantity(spec.resources.cpu))
    accelerators = placement.serving_accelerators(spec, pool)
    hourly = spec.replicas.min * (cores * pool.price.core_hour + accelerators * pool.price.accelerator_hour)
    return PlacementStatus(pool=pool_name, reason=reason, cost_per_hour=round(hourly, 6))


def reconcile_serving(
    kube: Kube, body: Mapping[str, Any], pools: Mapping[str, Any], config: OperatorConfig
) -> Outcome:
    namespace, name, uid, generation = _meta(body)
    previous = _parse_status(InferenceServiceStatus, body)
    try:
        spec = InferenceServiceSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _serving_problem(kube, namespace, name, previous, generation, "ModelResolved", invalid_spec(error))
    source = spec.model.from_training_job
    training_job = _training_job_status(kube, namespace, source.name) if source else None
    try:
        model = resolve_model(spec.model, training_job)
    except Problem as problem:
        return _serving_problem(kube, namespace, name, previous, generation, "ModelResolved", problem)
    parsed_pools = parse_pools(pools)
    try:
        decision = decide_placement(spec, parsed_pools)
    except Problem as problem:
        return _serving_problem(kube, namespace, name, previous, generation, "PlacementDecided", problem)
    pool = parsed_pools[decision.pool]
    serving = serving_build.Serving(
        name=name,
        namespace=namespace,
        uid=uid,
        spec=spec,
        model=model,
        placement=placement.pod_placement(decision.pool, pool),
        pool=pool,
        accelerators=placement.serving_accelerators(spec, pool),
    )
    deployment = kube.apply(serving_build.deployment(serving, config))
    kube.apply(serving_build.service(serving))
    kube.apply(serving_build.disruption_budget(serving))
    hpa = serving_build.autoscaler(serving)
    if hpa is not None:
        kube.apply(hpa)
    elif previous.observed_generation not in (None, generation):
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", namespace, name)
    url = serving_build.service_url(name, namespace, config.cluster_domain)
    status, events = serving_status(previous, generation, model, decision, url, deployment, now())
    written = wire(status)
    if written != wire(previous):
        kube.patch_status(INFERENCE_SERVICE, namespace, name, written)
    return Outcome(written, events)


def _serving_problem(
    kube: Kube,
    namespace: str,
    name: str,
    previous: InferenceServiceStatus,
    generation: int,
    condition: str,
    problem: Problem,
) -> Outcome:
    status = problem_status(previous, generation, condition, problem, now())
    written = wire(status)
    if written != wire(previous):
        kube.patch_status(INFERENCE_SERVICE, namespace, name, written)
        return Outcome(written, [Event("Warning", problem.reason, problem.message)])
    return Outcome(written)


def reconcile_pool(kube: Kube, body: Mapping[str, Any]) -> Outcome:
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
        kube.patch_status(COMPUTE_POOL, None, name, wire(status))
        return Outcome(wire(status), [Event("Warning", problem.reason, problem.message)])
    status = pool_status(previous, generation, spec, kube.nodes(), now())
    written = wire(status)
    if written != wire(previous):
        kube.patch_status(COMPUTE_POOL, None, name, written)
    return Outcome(written)
