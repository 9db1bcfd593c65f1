"""InferenceService: an ONNX model served over Open Inference Protocol V2, on CPUs unless told otherwise."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Self, cast

from pydantic import ConfigDict, Field, JsonValue, model_validator

from tandem.api.base import ApiModel
from tandem.api.common import (
    CONDITIONS_SCHEMA_EXTRA,
    DNS_SUBDOMAIN,
    Condition,
    EnvVar,
    ModelSourceUri,
    PodMetadata,
    Quantity,
    Usage,
)
from tandem.api.podspec import PullSecrets


class TrainingJobRef(ApiModel):
    """A TrainingJob in the same namespace whose newest model is served."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """TrainingJob name."""


MODEL_SOURCE_RULES: list[dict[str, str]] = [
    {
        "rule": "has(self.uri) != has(self.fromTrainingJob)",
        "message": "spec.model needs exactly one of uri or fromTrainingJob",
    },
    {
        "rule": "!has(self.sha256) || has(self.uri)",
        "message": "spec.model.sha256 goes with spec.model.uri",
        "fieldPath": ".sha256",
    },
]


class ModelSource(ApiModel):
    """Where the model comes from: a fixed URI, or whatever a TrainingJob last produced."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(JsonValue, MODEL_SOURCE_RULES)})

    uri: ModelSourceUri | None = None
    """URI of an ONNX file: s3://, pvc://claim/path, file://, or http(s):// (downloaded once per replica)."""
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """Expected SHA-256 of the file at uri; the server refuses a file that differs."""
    from_training_job: TrainingJobRef | None = None
    """Serve the newest model of this TrainingJob and roll out each new one."""




class Placement(StrEnum):
    """Where to serve: CPU pool, GPU pool, or measured and decided by cost within the SLO."""

    CPU = "cpu"
    GPU = "gpu"
    AUTO = "auto"


class Replicas(ApiModel):
    """Replica bounds for the autoscaler."""

    min: int = Field(default=1, ge=1, le=1000)
    """Fewest replicas."""
    max: int = Field(default=1, ge=1, le=1000)
    """Most replicas."""


class AutoscalingMetric(StrEnum):
    """What the HorizontalPodAutoscaler scales on."""

    CPU = "cpu"
    REQUESTS_PER_SECOND = "requestsPerSecond"
    REQUESTS_IN_FLIGHT = "requestsInFlight"


AUTOSCALING_RULES: list[dict[str, str]] = [
    {
        "rule": "self.metric != 'requestsPerSecond' || has(self.targetRequestsPerSecond)",
        "message": "spec.autoscaling.targetRequestsPerSecond is required with metric requestsPerSecond",
        "fieldPath": ".targetRequestsPerSecond",
    },
    {
        "rule": "self.metric != 'requestsInFlight' || has(self.targetRequestsInFlight)",
        "message": "spec.autoscaling.targetRequestsInFlight is required with metric requestsInFlight",
        "fieldPath": ".targetRequestsInFlight",
    },
]


class Autoscaling(ApiModel):
    """HorizontalPodAutoscaler metric, target and pace, used when replicas.max > replicas.min.

    cpu reads the resource metrics API (metrics-server). requestsPerSecond and requestsInFlight read the
    servers' own request metrics as custom metrics (custom.metrics.k8s.io, served by prometheus-adapter with
    the rules of the chart's autoscaling.prometheusAdapter option): for requests of a millisecond or less, CPU
    utilisation says little about load, the request rate says it directly.
    """

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(JsonValue, AUTOSCALING_RULES)})

    metric: AutoscalingMetric = AutoscalingMetric.CPU
    """cpu (the default), requestsPerSecond or requestsInFlight, each averaged over the replicas."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Average CPU utilisation, percent of the request, that the autoscaler aims at (metric cpu)."""
    target_requests_per_second: float | None = Field(default=None, gt=0, le=1_000_000)
    """Infer requests per second per replica that the autoscaler aims at (metric requestsPerSecond)."""
    target_requests_in_flight: float | None = Field(default=None, gt=0, le=100_000)
    """Infer requests being answered at once per replica, on average, that the autoscaler aims at (metric
    requestsInFlight); suits models whose requests take long enough to be seen in flight."""
    scale_down_stabilization_seconds: int | None = Field(default=None, ge=0, le=3600)
    """How long the autoscaler keeps to the highest replica count it recommended before it removes replicas.
    Empty: Kubernetes' default, 300 seconds."""

    @model_validator(mode="after")
    def _target_for_the_metric(self) -> Self:
        if self.metric is AutoscalingMetric.REQUESTS_PER_SECOND and self.target_requests_per_second is None:
            raise ValueError(AUTOSCALING_RULES[0]["message"])
        if self.metric is AutoscalingMetric.REQUESTS_IN_FLIGHT and self.target_requests_in_flight is None:
            raise ValueError(AUTOSCALING_RULES[1]["message"])
        return self


class Rollout(ApiModel):
    """How a new model replaces the one serving: a quality bar from its training metrics, then a canary.

    With canaryPercent above 0, a new model first serves on a share of replicas beside the old one (the
    Service balances requests over both). Its error rate and p99 latency are read from the canary servers'
    own metrics; a canary that exceeds a bound is rolled back, one that stays within them for canarySeconds
    is promoted to every replica. A model rolled back or below the bar is not tried again; the old one keeps
    serving. To pin a model, serve it by model.uri (and sha256) instead of fromTrainingJob.
    """

    canary_percent: int = Field(default=0, ge=0, le=99)
    """Share of replicas, and so of requests, that serve a new model first; 0 rolls it to every replica at once."""
    canary_seconds: int = Field(default=300, ge=0, le=86_400)
    """How long the canary serves within its bounds, once all its replicas are ready, before it is promoted."""
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """Largest share of the canary's infer requests answered with a server error (5xx) before it is rolled back."""
    max_p99_latency_ms: float | None = Field(default=None, gt=0)
    """Largest p99 latency of the canary's infer requests, judged once it has answered 100; empty: not judged."""
    min_metrics: dict[str, float] = Field(default_factory=dict, max_length=16)
    """Quality bar: least value of each named training metric (such as accuracy) that a model from the
    TrainingJob must report to be rolled out at all. Models by model.uri carry no metrics and are not held."""


class ServingResources(ApiModel):
    """What each replica requests; limits equal requests, and the server sizes its threads to the CPU limit."""

    cpu: Quantity = "2"
    """CPU per replica."""
    memory: Quantity = "1Gi"
    """Memory per replica."""
    gpus: int = Field(default=0, ge=0, le=8)
    """Accelerators per replica, only on a GPU pool."""


class ExecutionProvider(StrEnum):
    """Which onnxruntime execution provider runs the model."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class Runtime(ApiModel):
    """Server runtime settings."""

    threads: int | None = Field(default=None, ge=1, le=256)
    """onnxruntime threads per run; runs in flight fill the CPU limit. Empty: 1 while runs overlap (the fastest
    under load), and a run that finds the server idle uses every CPU of the limit."""
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Dynamic batching: largest batch formed from concurrent requests; 1 is off. Empty: off on CPU, 32 on a GPU."""
    max_batch_delay_ms: float = Field(default=0.0, ge=0, le=1000)
    """Dynamic batching: longest wait for a batch to fill (0: batch only what is already queued)."""
    execution_provider: ExecutionProvider = ExecutionProvider.AUTO
    """auto: CUDA (or TensorRT) when the replica sees a GPU, else CPU; a forced GPU provider falls back to CPU."""


class Slo(ApiModel):
    """Service level objective, used by placement: auto."""

    p99_latency_ms: float = Field(gt=0)
    """99th percentile latency bound per request, in milliseconds."""
    target_requests_per_second: float = Field(gt=0)
    """Load the service must sustain."""


class InferenceServiceSpec(ApiModel):
    """A served model: source, placement, scale and runtime."""

    model: ModelSource
    """Model source."""
    placement: Placement = Placement.CPU
    """cpu, gpu or auto."""
    pool: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """Explicit ComputePool, overriding placement."""
    image: str | None = Field(default=None, min_length=1)
    """Container image; empty uses the operator's server image."""
    replicas: Replicas = Field(default_factory=Replicas)
    """Replica bounds."""
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    """How the HorizontalPodAutoscaler scales replicas between replicas.min and replicas.max: metric, target, pace."""
    resources: ServingResources = Field(default_factory=ServingResources)
    """Requests per replica."""
    runtime: Runtime = Field(default_factory=Runtime)
    """Server runtime settings."""
    rollout: Rollout = Field(default_factory=Rollout)
    """How a new model replaces the one serving: quality bar, canary share, canary window and bounds."""
    slo: Slo | None = None
    """Latency and throughput objective; required for placement: auto."""
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment for the server; credentials by Secret reference only."""
    pod_metadata: PodMetadata = Field(default_factory=PodMetadata)
    """Labels and annotations for the pods."""
    service_account_name: str | None = Field(default=None, pattern=DNS_SUBDOMAIN, max_length=253)
    """ServiceAccount the server runs as (the identity a cloud maps to a role for reading the model); its
    Kubernetes API token is not mounted. Empty runs as the namespace's default ServiceAccount."""
    image_pull_secrets: PullSecrets = Field(default_factory=list)
    """Secrets (of type kubernetes.io/dockerconfigjson) for pulling a private image."""


INFERENCE_SERVICE_RULES: list[dict[str, str]] = [
    {
        "rule": "self.replicas.max >= self.replicas.min",
        "message": "spec.replicas.max must be at least spec.replicas.min",
        "fieldPath": ".replicas.max",
    },
    {
        "rule": "self.placement != 'auto' || has(self.slo)",
        "message": "spec.slo is required when spec.placement is auto",
        "fieldPath": ".slo",
    },
    {
        "rule": "self.resources.gpus == 0 || self.placement == 'gpu' || has(self.pool)",
        "message": "spec.resources.gpus needs placement gpu or an explicit pool",
        "fieldPath": ".resources.gpus",
    },
]


class ServicePhase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    READY = "Ready"
    FAILED = "Failed"


class ServedModel(ApiModel):
    """The model the Deployment serves now."""

    uri: str
    """Model URI."""
    sha256: str | None = None
    """Model SHA-256, when known."""
    version: str | None = None
    """Version: the TrainingJob generation that produced it, or the first 12 characters of the sha256."""
    training_job: str | None = None
    """TrainingJob the model came from."""


class CanaryStatus(ApiModel):
    """A new model serving on a share of replicas while it is judged."""

    model: ServedModel
    """The model on trial."""
    replicas: int = 0
    """Canary replicas wanted."""
    ready_replicas: int = 0
    """Canary replicas that pass their readiness probe."""
    percent: int = 0
    """Share of all ready replicas, and so of requests, that the canary serves now."""
    created_at: datetime | None = None
    """When the canary was created; one not fully ready by canarySeconds + 300 s after it is rolled back."""
    started_at: datetime | None = None
    """When all canary replicas were first ready; the window counts from here."""
    requests: int = 0
    """Infer requests the canary has answered."""
    errors: int = 0
    """Of those, answered with a server error (5xx)."""
    p99_latency_ms: float | None = None
    """p99 latency of the canary's infer requests, from its servers' histograms."""


class RejectedModel(ApiModel):
    """A model that was not promoted, and is not tried again."""

    uri: str
    """Model URI."""
    sha256: str | None = None
    """Model SHA-256."""
    version: str | None = None
    """Model version."""
    reason: str
    """BelowQualityBar or RolledBack."""
    message: str
    """What was measured against which bound."""
    at: datetime
    """When it was rejected."""


class PoolEstimate(ApiModel):
    """Measured figures and the cost of serving the SLO on one candidate pool."""

    pool: str
    """ComputePool."""
    measured: bool = False
    """Whether the figures were measured on that pool's hardware."""
    p99_latency_ms: float | None = None
    """Measured 99th percentile latency per request, one replica."""
    throughput_per_replica: float | None = None
    """Measured sustainable requests per second, one replica."""
    replicas: int | None = None
    """Replicas needed for the SLO's target load."""
    cost_per_hour: float | None = None
    """Hourly cost of those replicas."""
    cost_per_million_inferences: float | None = None
    """Cost of a million requests at the SLO's target load: the hourly cost over the requests of an hour."""
    joules_per_inference: float | None = None
    """Energy per request at the SLO's target load, modelled from the pool's spec.power (its replicas at full
    draw), not measured."""
    meets_slo: bool = False
    """Whether the pool meets the SLO."""
    note: str | None = None
    """Why figures are missing or the SLO cannot be met."""


class PlacementStatus(ApiModel):
    """Where the service runs and why."""

    pool: str
    """Chosen ComputePool."""
    reason: str
    """Why this pool: the rule or the numbers that decided."""
    cost_per_hour: float | None = None
    """Hourly cost at the current replica count."""
    cost_per_million_inferences: float | None = None
    """placement auto: the chosen pool's cost of a million requests at the SLO's target load."""
    joules_per_inference: float | None = None
    """placement auto: the chosen pool's energy per request at that load, modelled from its spec.power."""
    candidates: list[PoolEstimate] = Field(default_factory=list)
    """Every pool considered by placement: auto, with its figures."""


class InferenceServiceStatus(ApiModel):
    """What the operator observed of the service."""

    phase: ServicePhase | None = None
    """Summary of the conditions: Pending, Deploying, Ready or Failed."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=CONDITIONS_SCHEMA_EXTRA)] = Field(
        default_factory=list
    )
    """ModelResolved, PlacementDecided, Ready, and Canary once a rollout has judged a model."""
    url: str | None = None
    """In-cluster base URL of the V2 REST endpoint."""
    grpc_address: str | None = None
    """In-cluster host:port of the V2 gRPC endpoint (inference.GRPCInferenceService)."""
    model: ServedModel | None = None
    """The model being served (by every replica but a canary's)."""
    canary: CanaryStatus | None = None
    """A new model on trial on a share of replicas (spec.rollout.canaryPercent)."""
    rejected: list[RejectedModel] = Field(default_factory=list)
    """Models below the quality bar or rolled back, newest last (the last 10)."""
    placement: PlacementStatus | None = None
    """Placement decision."""
    replicas: int = 0
    """Replicas of the current Deployment."""
    ready_replicas: int = 0
    """Replicas that pass their readiness probe."""
    usage: Usage = Field(default_factory=Usage)
    """Resources used and their estimated cost."""
    usage_observed_at: datetime | None = None
    """When status.usage was last brought up to date; the next reconcile adds the time since, priced."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""
