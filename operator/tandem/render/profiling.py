"""The batch/v1 Job that profiles an InferenceService's model on one candidate pool (placement: auto).

The pod runs a serving replica's own server container (tandem.render.serving.server_container: same image,
CPU and memory, threads, batching and execution provider, one accelerator on an accelerator pool) as a
native sidecar, and `tandem profile` beside it, which sends it requests over loopback as clients would and
reports its JSON in the termination message; the operator reads it from pod status as it reads the trainer's
artifact. When the profiler exits the kubelet stops the server and the Job completes. The profiler requests
no CPU and has no CPU limit, so the load it generates runs beside the replica's CPU, not inside it.

Profiles are cached by labels: model (sha256), pool and a hash of the settings above. Any completed Job in the
namespace with the same three labels answers for every service that serves that model there, so a second
service, a restart or an SLO change never re-measures. The Job name adds the service, so two services that
start profiling the same model at once do not fight over one object.

The pods do not carry the tandem.dev/inferenceservice label: the service's Service and PodDisruptionBudget
select on it, and a profile pod must never receive traffic.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.cgroup import sized_runtime
from tandem.config import OperatorConfig
from tandem.decide.placement import PodPlacement, serving_accelerators
from tandem.quantity import parse_quantity
from tandem.render import meta
from tandem.render import serving as serving_build

KIND = "InferenceService"
CONTAINER = "profiler"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
SHA_LABEL = "tandem.dev/profile-sha256"
POOL_LABEL = "tandem.dev/profile-pool"
SETTINGS_LABEL = "tandem.dev/profile-settings"
FOR_LABEL = "tandem.dev/profile-for"
MODEL_SHA_ANNOTATION = "tandem.dev/model-sha256"
MODEL_URI_ANNOTATION = "tandem.dev/model-uri"
ACTIVE_DEADLINE_SECONDS = 600
"""Image pull, model download and the two timed phases (a few seconds) fit well inside ten minutes."""
PROFILER_RESOURCES = {"requests": {"memory": "64Mi"}, "limits": {"memory": "256Mi"}}
"""The load generator asks for no CPU: a replica sized to a whole node must still fit there with its profiler
(a sidecar's requests add to the pod's). With no CPU limit either, it runs on the node's spare cores."""


def model_key(model: ServedModel) -> str:
    """The cache key of a model: its sha256, shortened to 32 hex digits because a label value holds 63.

    A model named by URI alone (no sha256) is keyed by its URI, so a file replaced in place is not re-profiled;
    spec.model.sha256 avoids that, and the full sha256 is kept in an annotation for the record.
    """
    source = model.sha256 or hashlib.sha256(model.uri.encode()).hexdigest()
    return source[:32]


def settings_key(spec: InferenceServiceSpec, image: str, accelerators: int) -> str:
    """Hash of everything besides the model and the pool that changes a replica's speed."""
    runtime = serving_build.server_runtime(spec, accelerators)
    payload = {
        "image": image,
        "cpu": str(spec.resources.cpu),
        "memory": str(spec.resources.memory),
        "accelerators": accelerators,
        "runtime": {
            "threads": runtime.threads,
            "maxBatchSize": runtime.max_batch_size,
            "maxBatchDelayMs": runtime.max_batch_delay_ms,
            "executionProvider": runtime.execution_provider,
        },
        "protocol": "http-v2",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ProfileTarget:
    """One InferenceService's model on one candidate pool: the replica it would run there, and its image."""

    replica: serving_build.Serving
    """The replica the profile runs, exactly as a Deployment on that pool would (one of them)."""
    image: str

    @property
    def pool_name(self) -> str:
        return self.replica.placement.pool

    @property
    def key(self) -> str:
        return model_key(self.replica.model)

    @property
    def settings(self) -> str:
        return settings_key(self.replica.spec, self.image, self.replica.accelerators)

    @property
    def cache_labels(self) -> dict[str, str]:
        """The labels that identify an equivalent profile, whichever service ran it."""
        return {SHA_LABEL: self.key, POOL_LABEL: self.pool_name, SETTINGS_LABEL: self.settings}

    @property
    def job_name(self) -> str:
        model = (self.replica.model.sha256 or self.key)[:10]
        return meta.dns_name(self.replica.name, "profile", self.pool_name, model, self.settings[:6])


def target(
    service: str,
    namespace: str,
    uid: str,
    spec: InferenceServiceSpec,
    model: ServedModel,
    placement: PodPlacement,
    pool: ComputePoolSpec,
    config: OperatorConfig,
) -> ProfileTarget:
    """The profile of `model` on `pool`, with one accelerator per replica on an accelerator pool."""
    accelerators = serving_accelerators(spec, pool)
    replica = serving_build.Serving(
        name=service,
        namespace=namespace,
        uid=uid,
        spec=spec,
        model=model,
        placement=placement,
        pool=pool,
        accelerators=accelerators,
        replicas=spec.replicas,
    )
    return ProfileTarget(replica, serving_build.server_image(spec, accelerators, config))


def concurrency(spec: InferenceServiceSpec, accelerators: int) -> int:
    """Requests in flight that keep every run of a replica busy: runs in flight times rows per batch.

    Runs in flight are what the server derives from its CPU limit (tandem.cgroup.sized_runtime on the limit
    rounded up), so the operator knows them without asking the pod.
    """
    runtime = serving_build.server_runtime(spec, accelerators)
    cores = max(1, math.ceil(float(parse_quantity(spec.resources.cpu))))
    _, runs = sized_runtime(runtime.threads, None, cores)
    return runs * runtime.max_batch_size


def _profiler_env(profile: ProfileTarget) -> dict[str, str]:
    runtime = serving_build.server_runtime(profile.replica.spec, profile.replica.accelerators)
    env = {
        "TANDEM_MODEL_NAME": profile.replica.name,
        "TANDEM_PROFILE_URL": f"http://127.0.0.1:{serving_build.HTTP_PORT}",
        "TANDEM_PROFILE_METRICS_URL": f"http://127.0.0.1:{serving_build.METRICS_PORT}/metrics",
        "TANDEM_PROFILE_CONCURRENCY": str(concurrency(profile.replica.spec, profile.replica.accelerators)),
        "TANDEM_PROFILE_DEVICE": "cuda" if profile.replica.accelerators else "cpu",
        "TANDEM_THREADS": str(runtime.threads or 1),
        "TANDEM_MAX_BATCH_SIZE": str(runtime.max_batch_size),
        "TANDEM_MAX_BATCH_DELAY_MS": str(runtime.max_batch_delay_ms),
        "TANDEM_TERMINATION_MESSAGE_PATH": TERMINATION_MESSAGE_PATH,
    }
    if profile.replica.model.sha256:
        env["TANDEM_MODEL_SHA256"] = profile.replica.model.sha256
    return env


def profile_job(profile: ProfileTarget, config: OperatorConfig) -> dict[str, Any]:
    """The Job that profiles the target once on its pool, owned by the InferenceService."""
    replica = profile.replica
    spec = replica.spec
    volumes, mounts = serving_build.server_volumes(replica)
    server = serving_build.server_container(replica, config, mounts)
    # A native sidecar: started (and ready) before the profiler, stopped once the profiler has exited.
    server["restartPolicy"] = "Always"
    for kept_out in ("livenessProbe", "lifecycle"):
        server.pop(kept_out)
    profiler: dict[str, Any] = {
        "name": CONTAINER,
        "image": profile.image,
        "command": ["tandem", "profile"],
        "env": meta.env_list(_profiler_env(profile)) + [variable.to_wire() for variable in spec.env],
        "resources": PROFILER_RESOURCES,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": meta.restricted_security_context(),
        "volumeMounts": [mount for mount in mounts if mount["name"] == "tmp"],
    }
    pod_spec = replica.placement.apply(
        {
            "restartPolicy": "Never",
            "initContainers": [server],
            "containers": [profiler],
            "volumes": volumes,
            "securityContext": meta.pod_security_context(),
            # The profiler pulls the same image and reads the same model as the service's replicas.
            **meta.pod_identity(spec.service_account_name, spec.image_pull_secrets),
        }
    )
    pod_labels = {
        **spec.pod_metadata.labels,
        **config.extra_pod_labels,
        **meta.MANAGED_BY,
        "app.kubernetes.io/name": "tandem-profiler",
        FOR_LABEL: replica.name,
        "tandem.dev/pool": profile.pool_name,
    }
    job_labels = {**meta.MANAGED_BY, "app.kubernetes.io/name": "tandem-profiler", FOR_LABEL: replica.name}
    job_labels.update(profile.cache_labels)
    owner = meta.owner_reference(KIND, replica.name, replica.uid)
    job_meta = meta.object_meta(profile.job_name, replica.namespace, job_labels, owner)
    job_meta["annotations"] = {
        MODEL_SHA_ANNOTATION: replica.model.sha256 or "",
        MODEL_URI_ANNOTATION: replica.model.uri,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_meta,
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(spec.pod_metadata.annotations)},
                "spec": pod_spec,
            },
        },
    }
