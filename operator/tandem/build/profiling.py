"""The batch/v1 Job that profiles an InferenceService's model on one candidate pool (placement: auto).

The pod is a serving replica in all that affects speed: same image, same CPU and memory (so the server's
cgroup-derived thread count is the same), same threads and batching settings, and on an accelerator pool one
accelerator. It runs `tandem profile` instead of `tandem serve` and reports its JSON in the termination
message, which the operator reads from pod status as it reads the trainer's artifact.

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
from dataclasses import dataclass
from typing import Any

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.build.meta import (
    MANAGED_BY,
    PVC_MOUNT_ROOT,
    dns_name,
    env_list,
    object_meta,
    owner_reference,
    pod_identity,
    pod_security_context,
    pvc_volumes,
    restricted_security_context,
)
from tandem.config import OperatorConfig
from tandem.placement import PodPlacement, resource_requirements
from tandem.storage import pvc_claim

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


def model_key(model: ServedModel) -> str:
    """The cache key of a model: its sha256, shortened to 32 hex digits because a label value holds 63.

    A model named by URI alone (no sha256) is keyed by its URI, so a file replaced in place is not re-profiled;
    spec.model.sha256 avoids that, and the full sha256 is kept in an annotation for the record.
    """
    source = model.sha256 or hashlib.sha256(model.uri.encode()).hexdigest()
    return source[:32]


def settings_key(spec: InferenceServiceSpec, image: str, accelerators: int) -> str:
    """Hash of everything besides the model and the pool that changes a replica's speed."""
    payload = {
        "image": image,
        "cpu": str(spec.resources.cpu),
        "memory": str(spec.resources.memory),
        "accelerators": accelerators,
        "runtime": spec.runtime.model_dump(mode="json", by_alias=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ProfileTarget:
    """One InferenceService's model on one candidate pool."""

    service: str
    namespace: str
    uid: str
    spec: InferenceServiceSpec
    model: ServedModel
    placement: PodPlacement
    pool: ComputePoolSpec
    accelerators: int
    image: str

    @property
    def pool_name(self) -> str:
        return self.placement.pool

    @property
    def key(self) -> str:
        return model_key(self.model)

    @property
    def settings(self) -> str:
        return settings_key(self.spec, self.image, self.accelerators)

    @property
    def cache_labels(self) -> dict[str, str]:
        """The labels that identify an equivalent profile, whichever service ran it."""
        return {SHA_LABEL: self.key, POOL_LABEL: self.pool_name, SETTINGS_LABEL: self.settings}

    @property
    def job_name(self) -> str:
        model = (self.model.sha256 or self.key)[:10]
        return dns_name(self.service, "profile", self.pool_name, model, self.settings[:6])


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
    accelerators = max(spec.resources.gpus, 1) if pool.accelerator else 0
    return ProfileTarget(
        service=service,
        namespace=namespace,
        uid=uid,
        spec=spec,
        model=model,
        placement=placement,
        pool=pool,
        accelerators=accelerators,
        image=spec.image or config.server_image,
    )


def _env(profile: ProfileTarget) -> dict[str, str]:
    runtime = profile.spec.runtime
    env = {
        "TANDEM_MODEL_URI": profile.model.uri,
        "TANDEM_PVC_ROOT": PVC_MOUNT_ROOT,
        "TANDEM_MAX_BATCH_SIZE": str(runtime.max_batch_size),
        "TANDEM_MAX_BATCH_DELAY_MS": str(runtime.max_batch_delay_ms),
        "TANDEM_PROFILE_DEVICE": "cuda" if profile.accelerators else "cpu",
        "TANDEM_TERMINATION_MESSAGE_PATH": TERMINATION_MESSAGE_PATH,
    }
    if profile.model.sha256:
        env["TANDEM_MODEL_SHA256"] = profile.model.sha256
    if runtime.threads is not None:
        env["TANDEM_THREADS"] = str(runtime.threads)
    return env


def profile_job(profile: ProfileTarget, config: OperatorConfig) -> dict[str, Any]:
    """The Job that runs `tandem profile` once on the target pool, owned by the InferenceService."""
    spec = profile.spec
    claim = pvc_claim(profile.model.uri)
    volumes, mounts = pvc_volumes([claim] if claim else [])
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": profile.image,
        "command": ["tandem", "profile"],
        "env": env_list(_env(profile)) + [variable.to_wire() for variable in spec.env],
        "resources": resource_requirements(
            spec.resources.cpu, spec.resources.memory, profile.accelerators, profile.pool
        ),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": restricted_security_context(),
        "volumeMounts": mounts,
    }
    pod_spec = profile.placement.apply(
        {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": volumes,
            "securityContext": pod_security_context(),
            # The profiler pulls the same image and reads the same model as the service's replicas.
            **pod_identity(spec.service_account_name, spec.image_pull_secrets),
        }
    )
    pod_labels = {
        **spec.pod_metadata.labels,
        **config.extra_pod_labels,
        **MANAGED_BY,
        "app.kubernetes.io/name": "tandem-profiler",
        FOR_LABEL: profile.service,
        "tandem.dev/pool": profile.pool_name,
    }
    job_labels = {**MANAGED_BY, "app.kubernetes.io/name": "tandem-profiler", FOR_LABEL: profile.service}
    job_labels.update(profile.cache_labels)
    meta = object_meta(
        profile.job_name, profile.namespace, job_labels, owner_reference(KIND, profile.service, profile.uid)
    )
    meta["annotations"] = {MODEL_SHA_ANNOTATION: profile.model.sha256 or "", MODEL_URI_ANNOTATION: profile.model.uri}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": ACTIVE_DEADLINE_SECONDS,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": dict(spec.pod_metadata.annotations)},
                "spec": pod_spec,
            },
        },
    }
