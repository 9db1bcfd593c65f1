"""TrainingJob: PyTorch training on a pool (GPU by default) that ends in a checked ONNX model."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tandem.api.artifact import ModelArtifact
from tandem.api.base import ApiModel
from tandem.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    DNS_SUBDOMAIN,
    Condition,
    EnvVar,
    PodMetadata,
    Quantity,
    StorageUri,
    Usage,
)
from tandem.api.podspec import (
    MOUNTS_NAME_VOLUMES_RULES,
    PullSecrets,
    VolumeMounts,
    Volumes,
    check_mounts_name_volumes,
)


class WorkerResources(ApiModel):
    """What each worker pod requests; limits equal requests so a worker gets what it asked for."""

    gpus: int = Field(default=1, ge=0, le=16)
    """Accelerators per worker, of the pool's kind; 0 runs on CPU only."""
    cpu: Quantity = "2"
    """CPU per worker."""
    memory: Quantity = "4Gi"
    """Memory per worker."""


class ExportFormat(StrEnum):
    ONNX = "onnx"


class ModelExport(ApiModel):
    """How the trained model is exported and checked."""

    format: ExportFormat = ExportFormat.ONNX
    """Export format."""
    opset: int | None = Field(default=None, ge=7, le=30)
    """ONNX opset; empty lets the exporter choose."""
    sample_input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, max_length=8)
    """Shape of one sample input without the batch dimension. The exporter traces and checks parity on random
    inputs of this shape when the training script passes no sample, and refuses a sample of another shape."""


class ModelOutput(ApiModel):
    """Where the model goes and in what form."""

    output: StorageUri
    """Folder URI for model.onnx and metadata.json: s3://, pvc://claim/path or file://."""
    export: ModelExport = Field(default_factory=ModelExport)
    """Export settings."""


class Checkpointing(ApiModel):
    """Periodic checkpoints, so a retried worker resumes instead of starting over."""

    uri: StorageUri | None = None
    """Folder URI for checkpoints."""
    resume: bool = True
    """Resume from the newest checkpoint when one exists."""


class Dataset(ApiModel):
    """The data a run reads, named once in the spec instead of in each script's arguments."""

    uri: StorageUri
    """pvc://claim/path (the claim is mounted read-only unless the model or checkpoints go to it too), s3://
    or file://; the workers get it as TANDEM_DATASET_URI."""


class TrainingJobSpec(ApiModel):
    """A training run: what to run, on how many workers, and where the model goes."""

    pool: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """ComputePool to run on; empty picks the pool whose role is training."""
    image: str | None = Field(default=None, min_length=1)
    """Container image; empty uses the operator's trainer image."""
    command: list[str] | None = None
    """Entrypoint; empty runs `tandem train digits`, the built-in example."""
    args: list[str] = Field(default_factory=list)
    """Arguments appended to the command."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment for every worker; credentials by Secret reference only."""
    pod_metadata: PodMetadata = Field(default_factory=PodMetadata)
    """Labels and annotations for the pods."""
    workers: int = Field(default=1, ge=1, le=128)
    """Worker pods; more than one runs data-parallel under torch.distributed."""
    resources: WorkerResources = Field(default_factory=WorkerResources)
    """Requests per worker."""
    model: ModelOutput
    """Output and export of the trained model."""
    checkpoint: Checkpointing | None = None
    """Checkpointing and resume."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries before the job is marked Failed."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Wall-clock limit for a run."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the finished run's pods and Job this many seconds after the operator recorded its result (the
    Job gets the TTL only then); status and the model stay."""
    suspend: bool = False
    """Hold the run (or pause a running one) without deleting the resource."""
    queue: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=63)
    """Kueue LocalQueue; the run is admitted by Kueue when set."""
    priority_class: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Kueue WorkloadPriorityClass of a queued run (needs spec.queue). Kueue admits higher priorities first and,
    where the ClusterQueue allows it, preempts lower-priority runs that hold the quota a higher one needs; a
    preempted run waits in its queue and resumes from its last checkpoint. It may change to another class
    (the run goes on, at the new priority) but not be added or removed later. Empty: priority 0."""
    service_account_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """ServiceAccount the workers run as: the identity that IRSA or Workload Identity maps to a cloud role.
    Its Kubernetes API token is not mounted. Empty runs as the namespace's default ServiceAccount."""
    image_pull_secrets: PullSecrets = Field(default_factory=list)
    """Secrets (of type kubernetes.io/dockerconfigjson) for pulling a private image."""
    volumes: Volumes = Field(default_factory=list)
    """Extra volumes for the workers (a claim, a ConfigMap with the user's script, a Secret); each is mounted
    by an entry of volumeMounts."""
    volume_mounts: VolumeMounts = Field(default_factory=list)
    """Where each extra volume appears in the trainer container."""
    dataset: Dataset | None = None
    """Training data, given to the workers as TANDEM_DATASET_URI."""

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> TrainingJobSpec:
        check_mounts_name_volumes(self.volumes, self.volume_mounts)
        return self


TRAINING_JOB_RULES: list[dict[str, str]] = [
    {
        "rule": "!has(self.checkpoint) || !self.checkpoint.resume || has(self.checkpoint.uri)",
        "message": "spec.checkpoint.uri is required when spec.checkpoint.resume is true",
        "fieldPath": ".checkpoint.uri",
    },
    {
        "rule": "!has(oldSelf.queue) || (has(self.queue) && self.queue == oldSelf.queue)",
        "message": "spec.queue is immutable",
        "fieldPath": ".queue",
    },
    {
        "rule": "!has(self.priorityClass) || has(self.queue)",
        "message": "spec.priorityClass needs spec.queue: priorities are Kueue's, within a queue",
        "fieldPath": ".priorityClass",
    },
    {
        "rule": "has(oldSelf.priorityClass) == has(self.priorityClass)",
        "message": "spec.priorityClass cannot be added or removed once the TrainingJob exists; it may change",
        "fieldPath": ".priorityClass",
    },
    *MOUNTS_NAME_VOLUMES_RULES,
]


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class WorkerCounts(ApiModel):
    """Worker pods by state, from the child Job."""

    active: int = 0
    """Running or pending workers."""
    succeeded: int = 0
    """Workers that finished successfully."""
    failed: int = 0
    """Worker pod failures, retries included."""


class CheckpointReport(ApiModel):
    """A checkpoint as a worker reported it in its termination message when it stopped (preempted, suspended,
    deleted, or failed after checkpointing): where the next start of the same run resumes from."""

    step: int = Field(ge=0)
    """Optimizer step the checkpoint was taken after."""
    uri: str | None = None
    """The checkpoint file."""


class WorkerStopped(ApiModel):
    """What a worker stopped by SIGTERM writes to its termination message instead of an artifact: the reason,
    and the newest checkpoint of the run (none when it had saved none yet)."""

    reason: Literal["Stopped"] = "Stopped"
    """Always Stopped."""
    error: str
    """What stopped it and where it was, in words."""
    checkpoint: CheckpointReport | None = None
    """The newest checkpoint saved by this run, from which it resumes."""


class CheckpointStatus(ApiModel):
    """Checkpoint progress of the current run, as its workers reported it."""

    step: int = Field(ge=0)
    """Step of the newest checkpoint a worker reported: where the run resumes after a preemption or a suspend."""
    uri: str | None = None
    """The checkpoint file."""
    resumed_from_step: int | None = Field(default=None, ge=0)
    """The step the run that finished resumed from (its model's resumed_from_step metric); 0: it started fresh."""


class TrainingJobStatus(ApiModel):
    """What the operator observed of the current run."""

    phase: TrainingPhase | None = None
    """Summary of the conditions: Pending, Queued, Running, Succeeded or Failed."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=CONDITIONS_SCHEMA_EXTRA)] = Field(
        default_factory=list
    )
    """PoolResolved, Running, Succeeded, Failed."""
    pool: str | None = None
    """ComputePool the current run was placed on."""
    job_name: str | None = None
    """Child batch/v1 Job of the current run."""
    start_time: datetime | None = None
    """When the current run started."""
    completion_time: datetime | None = None
    """When the current run finished."""
    workers: WorkerCounts = Field(default_factory=WorkerCounts)
    """Worker pods by state."""
    checkpoint: CheckpointStatus | None = None
    """Checkpoint progress of the current run, once a worker has reported one."""
    model: ModelArtifact | None = None
    """The newest model this TrainingJob produced; kept while a re-run trains the next one."""
    model_generation: int | None = None
    """The .metadata.generation whose run produced status.model."""
    usage: Usage = Field(default_factory=Usage)
    """Resources used and their estimated cost, over all runs."""
    run_usage: Usage = Field(default_factory=Usage)
    """Resources used by the current run alone."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
