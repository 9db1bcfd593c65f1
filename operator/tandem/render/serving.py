"""Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget for an InferenceService.

A new model changes the pod template (model URI, sha256 and an annotation), so the Deployment rolls out;
maxUnavailable 0 with readiness on /v2/health/ready keeps the old replicas serving until new ones are ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import Autoscaling, AutoscalingMetric, InferenceServiceSpec, Replicas, ServedModel
from tandem.config import OperatorConfig
from tandem.decide.placement import PodPlacement, resource_requirements
from tandem.render import meta
from tandem.storage import pvc_claim

KIND = "InferenceService"
CONTAINER = "server"
HTTP_PORT = 8080
GRPC_PORT = 8081
"""V2 gRPC, in the container and on the Service: KServe's port, where its clients look."""
METRICS_PORT = 9090
MODEL_SHA_ANNOTATION = "tandem.dev/model-sha256"


@dataclass(frozen=True)
class Serving:
    """One InferenceService with the operator's decisions for it: the model to serve, where, on how many
    accelerators and replicas. A decision is a field of its own, never written into the user's spec: `spec` is
    what the user asked, `replicas` what the plan (tandem.decide.serving_plan) settled on."""

    name: str
    namespace: str
    uid: str
    spec: InferenceServiceSpec
    model: ServedModel
    placement: PodPlacement
    pool: ComputePoolSpec
    accelerators: int
    replicas: Replicas
    memory: str | None = None
    """Memory request and limit per replica when the plan raised it from the spec's (a measured footprint)."""

    @property
    def labels(self) -> dict[str, str]:
        return {**meta.MANAGED_BY, "app.kubernetes.io/name": "tandem-server", "tandem.dev/inferenceservice": self.name}

    @property
    def selector(self) -> dict[str, str]:
        return {"tandem.dev/inferenceservice": self.name}

    @property
    def autoscaled(self) -> bool:
        return self.replicas.max > self.replicas.min

    def meta(self) -> dict[str, Any]:
        owner = meta.owner_reference(KIND, self.name, self.uid)
        return meta.object_meta(self.name, self.namespace, self.labels, owner)


def service_url(name: str, namespace: str, cluster_domain: str) -> str:
    return f"http://{name}.{namespace}.svc.{cluster_domain}/v2/models/{name}"


def grpc_address(url: str) -> str:
    """host:port of the V2 gRPC endpoint on the same Service as the REST `url` (gRPC targets are not URLs)."""
    return f"{urlsplit(url).hostname}:{GRPC_PORT}"


GPU_MAX_BATCH_SIZE = 32
"""Rows per run a GPU replica batches by default. A GPU answers a batch of 32 small requests in about the time
of one, so batching is what makes a GPU replica worth its price; with no batch delay the batcher takes only
what is already queued, so an idle replica's single requests wait for nothing."""


@dataclass(frozen=True)
class ServerRuntime:
    """The settings a replica's server runs with once the placement's defaults are filled in."""

    threads: int | None
    max_batch_size: int
    max_batch_delay_ms: float
    execution_provider: str


def server_runtime(spec: InferenceServiceSpec, accelerators: int) -> ServerRuntime:
    """spec.runtime with its defaults for the pool: batching off on CPU, GPU_MAX_BATCH_SIZE on an accelerator."""
    runtime = spec.runtime
    default_batch = GPU_MAX_BATCH_SIZE if accelerators else 1
    return ServerRuntime(
        threads=runtime.threads,
        max_batch_size=runtime.max_batch_size or default_batch,
        max_batch_delay_ms=float(runtime.max_batch_delay_ms),
        execution_provider=runtime.execution_provider.value,
    )


def server_image(spec: InferenceServiceSpec, accelerators: int, config: OperatorConfig) -> str:
    """spec.image, else the operator's GPU server image on an accelerator pool and its CPU image elsewhere.

    The CPU image carries onnxruntime without CUDA (hundreds of MB smaller, and nothing in it can look for a
    GPU); only a replica that holds an accelerator gets the CUDA build.
    """
    if spec.image:
        return spec.image
    return config.server_gpu_image if accelerators else config.server_image


def _server_env(serving: Serving) -> dict[str, str]:
    runtime = server_runtime(serving.spec, serving.accelerators)
    env = {
        "TANDEM_MODEL_NAME": serving.name,
        "TANDEM_MODEL_URI": serving.model.uri,
        "TANDEM_HTTP_PORT": str(HTTP_PORT),
        "TANDEM_GRPC_PORT": str(GRPC_PORT),
        "TANDEM_METRICS_PORT": str(METRICS_PORT),
        "TANDEM_PVC_ROOT": meta.PVC_MOUNT_ROOT,
        "TANDEM_MAX_BATCH_SIZE": str(runtime.max_batch_size),
        "TANDEM_MAX_BATCH_DELAY_MS": str(runtime.max_batch_delay_ms),
        "TANDEM_EXECUTION_PROVIDER": runtime.execution_provider,
    }
    if serving.model.sha256:
        env["TANDEM_MODEL_SHA256"] = serving.model.sha256
    if serving.model.version:
        env["TANDEM_MODEL_VERSION"] = serving.model.version
    if runtime.threads is not None:
        env["TANDEM_THREADS"] = str(runtime.threads)
    return env


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 2,
    }


def server_volumes(serving: Serving) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, server mounts): the model's claim, if any, and a writable /tmp on a read-only root."""
    claim = pvc_claim(serving.model.uri)
    volumes, mounts = meta.pvc_volumes([claim] if claim else [])
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return volumes, mounts


def server_container(serving: Serving, config: OperatorConfig, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The model server container of a replica: the profile Job runs this same container, so it measures
    what a replica delivers (image, CPU limit, threads, batching, execution provider)."""
    spec = serving.spec
    return {
        "name": CONTAINER,
        "image": server_image(spec, serving.accelerators, config),
        "command": ["tandem", "serve"],
        "env": meta.env_list(_server_env(serving)) + [variable.to_wire() for variable in spec.env],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": resource_requirements(
            spec.resources.cpu, serving.memory or spec.resources.memory, serving.accelerators, serving.pool
        ),
        "readinessProbe": _probe("/v2/health/ready", 2, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "startupProbe": _probe("/v2/health/live", 2, 60),
        # Endpoints lag behind pod deletion: keep serving a few seconds so a rollout drops no requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": meta.restricted_security_context(),
        "volumeMounts": mounts,
        # A model that cannot load ends the server with its reason in the log's last lines: the pod status
        # (and a profile that waited for it) can then say why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def deployment(serving: Serving, config: OperatorConfig) -> dict[str, Any]:
    spec = serving.spec
    volumes, mounts = server_volumes(serving)
    container = server_container(serving, config, mounts)
    pod_spec = serving.placement.apply(
        {
            "containers": [container],
            "volumes": volumes,
            "securityContext": meta.pod_security_context(),
            **meta.pod_identity(spec.service_account_name, spec.image_pull_secrets),
            "terminationGracePeriodSeconds": 30,
        }
    )
    template_meta: dict[str, Any] = {
        "labels": {
            **spec.pod_metadata.labels,
            **config.extra_pod_labels,
            **serving.labels,
            "tandem.dev/pool": serving.placement.pool,
        },
        "annotations": {**spec.pod_metadata.annotations, MODEL_SHA_ANNOTATION: serving.model.sha256 or ""},
    }
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": serving.selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": template_meta, "spec": pod_spec},
    }
    if not serving.autoscaled:
        deployment_spec["replicas"] = serving.replicas.min
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": serving.meta(), "spec": deployment_spec}


REPLICAS_HANDOVER_MANAGER = "tandem-handover-to-hpa"
"""The field manager that holds a Deployment's spec.replicas between the operator letting go and the HPA's first
scale."""


def replicas_handover(desired: dict[str, Any], stored: dict[str, Any] | None, manager: str) -> dict[str, Any] | None:
    """The stored Deployment's replica count, to apply under REPLICAS_HANDOVER_MANAGER before `desired`, which
    leaves spec.replicas to an HPA, is applied by `manager` (the operator's field manager); None when there is
    nothing to hand over.

    Server-side apply removes a field that its only manager stops applying, and a Deployment without
    spec.replicas defaults to 1: a service switched from fixed to autoscaled replicas would fall to one replica
    until the HPA's next sync. Kubernetes documents the cure ("Transferring ownership" in its server-side
    apply reference): apply the current count under a manager of its own first, so that the field keeps an
    owner, and its value, when the operator's manager lets go of it. The HPA's first scale takes the field
    from that manager, which then owns nothing and is gone.

    Needs the stored object's managedFields (a GET; the watch's store leaves them out): only a count that
    `manager` applied is handed over, so a Deployment the HPA already scales costs no write.
    """
    count = ((stored or {}).get("spec") or {}).get("replicas")
    if "replicas" in desired["spec"] or count is None or not _applies_replicas(stored or {}, manager):
        return None
    desired_meta = desired["metadata"]
    return {
        "apiVersion": desired["apiVersion"],
        "kind": desired["kind"],
        "metadata": {"name": desired_meta["name"], "namespace": desired_meta["namespace"]},
        "spec": {"replicas": count},
    }


def _applies_replicas(stored: dict[str, Any], manager: str) -> bool:
    """Whether `manager` owns the object's spec.replicas through an apply (its managedFields say)."""
    return any(
        entry.get("manager") == manager
        and entry.get("operation") == "Apply"
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in (stored.get("metadata") or {}).get("managedFields") or []
    )


CANARY_TRACK = {"tandem.dev/track": "canary"}


def canary_name(name: str) -> str:
    return f"{name}-canary"


def canary_selector(name: str) -> dict[str, str]:
    """The canary Deployment's pods: the service's label and the track label."""
    return {"tandem.dev/inferenceservice": name, **CANARY_TRACK}


def canary_deployment(serving: Serving, config: OperatorConfig, replicas: int) -> dict[str, Any]:
    """The canary: the stable Deployment's pods with the model on trial (serving.model), a fixed count of them.

    Its pods keep the service's label, so the Service balances requests over both Deployments by replica
    count and the disruption budget covers them too. Its own selector adds the track label; the stable
    Deployment's selector (immutable) matches canary pods as well, which its ReplicaSets never adopt (they
    select by pod-template-hash and skip pods another controller owns).
    """
    desired = deployment(serving, config)
    desired["metadata"]["name"] = canary_name(serving.name)
    desired["metadata"]["labels"] = {**desired["metadata"]["labels"], **CANARY_TRACK}
    desired["spec"]["selector"] = {"matchLabels": canary_selector(serving.name)}
    template_labels = desired["spec"]["template"]["metadata"]["labels"]
    desired["spec"]["template"]["metadata"]["labels"] = {**template_labels, **CANARY_TRACK}
    desired["spec"]["replicas"] = replicas
    return desired


def service(serving: Serving) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": serving.meta(),
        "spec": {
            "selector": serving.selector,
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                # h2c: gRPC over cleartext HTTP/2, so meshes and gateways route it as gRPC, not HTTP/1.1
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


REQUESTS_PER_SECOND_METRIC = "tandem_inference_requests_per_second"
"""Custom metric (custom.metrics.k8s.io, per pod) of infer requests per second: the rate of the servers'
tandem_inference_requests_total, as the chart's prometheus-adapter rules name it."""
REQUESTS_IN_FLIGHT_METRIC = "tandem_inference_requests_in_flight"
"""Custom metric (per pod) of infer requests in flight: the servers' tandem_inference_in_flight gauge averaged
over the adapter's rate window, as the chart's prometheus-adapter rules name it."""


def _milli(value: float) -> str:
    """A Kubernetes quantity for a per-replica target, exact to a thousandth (2.5 -> "2500m")."""
    return f"{round(value * 1000)}m"


def _autoscaler_metric(autoscaling: Autoscaling) -> dict[str, Any]:
    if autoscaling.metric is AutoscalingMetric.CPU:
        target = {"type": "Utilization", "averageUtilization": autoscaling.target_cpu_utilization}
        return {"type": "Resource", "resource": {"name": "cpu", "target": target}}
    if autoscaling.metric is AutoscalingMetric.REQUESTS_PER_SECOND:
        name, value = REQUESTS_PER_SECOND_METRIC, autoscaling.target_requests_per_second
    else:
        name, value = REQUESTS_IN_FLIGHT_METRIC, autoscaling.target_requests_in_flight
    assert value is not None  # the API refuses a request metric without its target
    return {
        "type": "Pods",
        "pods": {"metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": _milli(value)}},
    }


def autoscaler(serving: Serving) -> dict[str, Any] | None:
    """An HPA between replicas.min and replicas.max on spec.autoscaling's metric; None when they are equal.

    Request metrics are Pods metrics: the HPA averages them over the Deployment's pods and compares the
    average with the per-replica target, as it does CPU utilisation. Only a scale-down stabilisation window
    that the spec sets is written; otherwise the controller's default (5 minutes) holds.
    """
    if not serving.autoscaled:
        return None
    spec = serving.spec
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": serving.name},
        "minReplicas": serving.replicas.min,
        "maxReplicas": serving.replicas.max,
        "metrics": [_autoscaler_metric(spec.autoscaling)],
    }
    window = spec.autoscaling.scale_down_stabilization_seconds
    if window is not None:
        hpa_spec["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": window}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": serving.meta(),
        "spec": hpa_spec,
    }


def disruption_budget(serving: Serving) -> dict[str, Any]:
    """No voluntary eviction (a node drain, the cluster autoscaler) ever takes the last ready replica.

    With two replicas or more at all times (replicas.min >= 2), one eviction at a time leaves the others
    serving. With one, `maxUnavailable: 1` would let a drain evict the only replica and the service would be
    down until its replacement is ready; `minAvailable: 1` makes the drain wait instead, and `kubectl drain`
    says why ("would violate the pod's disruption budget") until another replica is ready.
    """
    budget: dict[str, Any] = {"maxUnavailable": 1} if serving.replicas.min >= 2 else {"minAvailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": serving.meta(),
        "spec": {**budget, "selector": {"matchLabels": serving.selector}},
    }
