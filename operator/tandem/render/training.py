"""The batch/v1 Job (and headless Service) that runs one generation of a TrainingJob.

Every run is an Indexed Job named after the TrainingJob and its generation, so changing the spec starts a
new run while the old one's record stays distinct. With several workers, a headless Service gives the pods
stable DNS names: worker 0 is the torch.distributed rendezvous (MASTER_ADDR), and each worker's RANK is its
completion index, read through the downward API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tandem.api.artifact import EXIT_PEER_LOST, EXIT_PERMANENT, EXIT_USAGE
from tandem.api.computepool import ComputePoolSpec
from tandem.api.trainingjob import TrainingJobSpec
from tandem.config import OperatorConfig
from tandem.decide.placement import PodPlacement, resource_requirements
from tandem.render import meta
from tandem.storage import pvc_claim

KIND = "TrainingJob"
CONTAINER = "trainer"
MASTER_PORT = 29500
DEFAULT_COMMAND = ["tandem", "train", "digits"]
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
"""Names the WorkloadPriorityClass Kueue gives the Job's Workload (a Kueue-only priority: pods keep theirs)."""
EXIT_STOPPED = 128 + 15
"""Exit code of a process ended by SIGTERM, which the trainer also exits with when it stops on one."""
JOB_NAME_LIMIT = 63 - len("-127")
"""The Job controller names each pod's hostname <job>-<index> (index < 128 workers) and a hostname is a DNS label."""


@dataclass(frozen=True)
class TrainingRun:
    """One generation of one TrainingJob: everything the builders need to know about the resource."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: TrainingJobSpec

    @property
    def job_name(self) -> str:
        return meta.dns_name(self.name, f"g{self.generation}", limit=JOB_NAME_LIMIT)

    @property
    def labels(self) -> dict[str, str]:
        return {
            **meta.MANAGED_BY,
            "app.kubernetes.io/name": "tandem-trainer",
            "tandem.dev/trainingjob": self.name,
            "tandem.dev/generation": str(self.generation),
        }

    @property
    def model_output(self) -> str:
        """Each generation writes its own folder, so a server never sees a half-replaced model."""
        return f"{self.spec.model.output.rstrip('/')}/v{self.generation}"

    @property
    def checkpoint_uri(self) -> str | None:
        checkpoint = self.spec.checkpoint
        if checkpoint is None or checkpoint.uri is None:
            return None
        return f"{checkpoint.uri.rstrip('/')}/v{self.generation}"


def _distributed_env(run: TrainingRun) -> list[dict[str, Any]]:
    """torch.distributed's env: torchrun's variables for one process per pod, or torchrun's inputs."""
    workers = run.spec.workers
    master = f"{run.job_name}-0.{run.job_name}" if workers > 1 else "127.0.0.1"
    index = {"valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "NNODES", "value": str(workers)},
        {"name": "NODE_RANK", **index},
    ]
    if run.spec.resources.gpus <= 1:
        env += [
            {"name": "WORLD_SIZE", "value": str(workers)},
            {"name": "RANK", **index},
            {"name": "LOCAL_RANK", "value": "0"},
        ]
    return env


def _command(run: TrainingRun) -> list[str]:
    """The worker's command; with several accelerators per worker, torchrun starts one process per GPU."""
    command = list(run.spec.command or DEFAULT_COMMAND)
    gpus = run.spec.resources.gpus
    if gpus <= 1:
        return command
    return [
        "torchrun",
        "--nnodes=$(NNODES)",
        f"--nproc-per-node={gpus}",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "--no-python",
        *command,
    ]


def _tandem_env(run: TrainingRun) -> dict[str, str]:
    spec = run.spec
    env = {
        "TANDEM_TRAININGJOB": run.name,
        "TANDEM_GENERATION": str(run.generation),
        "TANDEM_RUN": f"{run.uid}/{run.generation}",
        "TANDEM_MODEL_OUTPUT": run.model_output,
        "TANDEM_PVC_ROOT": meta.PVC_MOUNT_ROOT,
        "TANDEM_TERMINATION_MESSAGE_PATH": TERMINATION_MESSAGE_PATH,
    }
    if run.checkpoint_uri is not None and spec.checkpoint is not None:
        env["TANDEM_CHECKPOINT_URI"] = run.checkpoint_uri
        env["TANDEM_CHECKPOINT_RESUME"] = str(spec.checkpoint.resume).lower()
    if spec.model.export.opset is not None:
        env["TANDEM_EXPORT_OPSET"] = str(spec.model.export.opset)
    if spec.dataset is not None:
        env["TANDEM_DATASET_URI"] = spec.dataset.uri
    if spec.model.export.sample_input_shape is not None:
        env["TANDEM_SAMPLE_INPUT_SHAPE"] = ",".join(map(str, spec.model.export.sample_input_shape))
    return env


def _volumes(spec: TrainingJobSpec, checkpoint_uri: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Claims of the pvc:// URIs, scratch space, then the user's own volumes as the spec declares them.

    A dataset claim is mounted read-only unless the model or the checkpoints are written to it as well.
    """
    written = {claim for uri in (spec.model.output, checkpoint_uri) if uri and (claim := pvc_claim(uri))}
    dataset = pvc_claim(spec.dataset.uri) if spec.dataset is not None else None
    read = {dataset} - written if dataset else set()
    volumes, mounts = meta.pvc_volumes(sorted(written | read), read_only=frozenset(read))
    volumes += [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts += [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]
    volumes += [volume.to_wire() for volume in spec.volumes]
    mounts += [mount.to_wire() for mount in spec.volume_mounts]
    return volumes, mounts


def failure_policy() -> dict[str, Any]:
    """Fail the run at once on the trainer's permanent exit codes; don't count node disruptions as failures.

    Without it a NaN loss or a failed parity check would be retried backoffLimit times for nothing. A worker
    that exits EXIT_PEER_LOST stopped because a peer was lost: it is replaced without counting, so one lost
    worker restarts the whole group (from the last checkpoint) at the price of one retry, the peer's own. A
    worker stopped by SIGTERM (Kueue's preemption suspends the Job, which deletes its pods; a suspend; a pod
    deleted by hand) did not fail either: the Job controller counts a deleted pod as failed unless a rule
    ignores it, and preemptions would otherwise use up the retry budget.
    """
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_USAGE, EXIT_PERMANENT]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [EXIT_PEER_LOST, EXIT_STOPPED],
                },
            },
        ]
    }


def held_as_gang(spec: TrainingJobSpec) -> bool:
    """Whether the operator starts the run's Job itself once every worker fits (tandem.decide.gang): a run of several
    workers that no Kueue queue admits. Its Job is created suspended, as a queued one is for Kueue."""
    return spec.workers > 1 and spec.queue is None


def training_job(
    run: TrainingRun, placement: PodPlacement, pool: ComputePoolSpec, config: OperatorConfig
) -> dict[str, Any]:
    """The Indexed Job for one run."""
    spec = run.spec
    volumes, mounts = _volumes(spec, run.checkpoint_uri)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or config.trainer_image,
        "command": _command(run),
        "args": list(spec.args),
        "env": meta.env_list(_tandem_env(run))
        + _distributed_env(run)
        + [variable.to_wire() for variable in spec.env],
        "resources": resource_requirements(spec.resources.cpu, spec.resources.memory, spec.resources.gpus, pool),
        "ports": [{"name": "rendezvous", "containerPort": MASTER_PORT}],
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": meta.restricted_security_context(),
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": volumes,
        "securityContext": meta.pod_security_context(),
        **meta.pod_identity(spec.service_account_name, spec.image_pull_secrets),
    }
    if spec.workers > 1:
        pod_spec["subdomain"] = run.job_name
    labels = {**run.labels, "tandem.dev/pool": placement.pool}
    job_labels = dict(labels)
    if spec.queue:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue
    if spec.queue and spec.priority_class:
        job_labels[KUEUE_PRIORITY_LABEL] = spec.priority_class
    job_spec: dict[str, Any] = {
        "completions": spec.workers,
        "parallelism": spec.workers,
        "completionMode": "Indexed",
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": failure_policy(),
        "suspend": spec.suspend or spec.queue is not None or held_as_gang(spec),
        "template": {
            "metadata": {
                "labels": {**spec.pod_metadata.labels, **config.extra_pod_labels, **labels},
                "annotations": dict(spec.pod_metadata.annotations),
            },
            "spec": placement.apply(pod_spec),
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    owner = meta.owner_reference(KIND, run.name, run.uid)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta.object_meta(run.job_name, run.namespace, job_labels, owner),
        "spec": job_spec,
    }


def worker_service(run: TrainingRun) -> dict[str, Any] | None:
    """The headless Service that gives multi-worker pods DNS names; None for a single worker."""
    if run.spec.workers <= 1:
        return None
    owner = meta.owner_reference(KIND, run.name, run.uid)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.object_meta(run.job_name, run.namespace, run.labels, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"tandem.dev/trainingjob": run.name, "tandem.dev/generation": str(run.generation)},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
