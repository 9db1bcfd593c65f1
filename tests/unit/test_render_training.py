from __future__ import annotations

import signal
from typing import Any

import pytest

from tandem.api.artifact import EXIT_PEER_LOST
from tandem.api.computepool import ComputePoolSpec
from tandem.api.trainingjob import TrainingJobSpec
from tandem.config import OperatorConfig
from tandem.decide.placement import pod_placement
from tandem.render.meta import dns_name
from tandem.render.training import (
    COMPLETION_INDEX,
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    TrainingRun,
    training_job,
    worker_service,
)


def _run(body: dict[str, Any], generation: int = 3, name: str = "digits", **fields: Any) -> TrainingRun:
    spec = TrainingJobSpec.model_validate({**body, **fields})
    return TrainingRun(name=name, namespace="ml", uid="uid-1", generation=generation, spec=spec)


def _job(run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig, pool: str = "gpu") -> Any:
    return training_job(run, pod_placement(pool, pools[pool]), pools[pool], config)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(job: dict[str, Any]) -> dict[str, Any]:
    """Env by name: the literal value, or the whole valueFrom."""
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in _container(job)["env"]}


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def _claim_volumes(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [volume for volume in _pod(job)["volumes"] if "persistentVolumeClaim" in volume]


def _claim_and_mount(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's one claim volume and the container's one mount of it: unpacked, so that a test reading them
    also fails where the claim is missing, duplicated or mounted other than once."""
    [volume] = _claim_volumes(job)
    [mount] = [mount for mount in _container(job)["volumeMounts"] if mount["name"] == volume["name"]]
    return volume, mount


@pytest.fixture
def single(training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig) -> Any:
    return _job(_run(training_spec_body), pools, config)


@pytest.fixture
def multi_run(training_spec_body: dict[str, Any]) -> TrainingRun:
    return _run(training_spec_body, workers=4)


def test_single_worker_is_an_indexed_job_of_one(single: dict[str, Any]) -> None:
    spec = single["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 1, 1)
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_job_is_named_after_the_resource_and_generation(single: dict[str, Any]) -> None:
    assert single["metadata"]["name"] == "digits-g3"
    assert single["metadata"]["namespace"] == "ml"


def test_model_output_is_versioned_by_generation(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body, model={"output": "s3://models/digits/"})
    assert _env(_job(run, pools, config))["TANDEM_MODEL_OUTPUT"] == "s3://models/digits/v3"


def test_the_run_is_named_by_uid_and_generation_so_only_it_may_announce_its_version_again(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body)
    assert _env(_job(run, pools, config))["TANDEM_RUN"] == f"{run.uid}/3"


def test_single_worker_world_size_is_one(single: dict[str, Any]) -> None:
    env = _env(single)
    assert env["WORLD_SIZE"] == "1"
    assert env["MASTER_ADDR"] == "127.0.0.1"


def test_single_worker_needs_no_service_or_subdomain(training_spec_body: dict[str, Any], single: Any) -> None:
    assert worker_service(_run(training_spec_body)) is None
    assert "subdomain" not in single["spec"]["template"]["spec"]


def test_multi_worker_job_runs_all_workers_at_once(
    multi_run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    spec = _job(multi_run, pools, config)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)


def test_multi_worker_pods_live_under_the_headless_service(
    multi_run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(multi_run, pools, config)
    service = worker_service(multi_run)
    assert service is not None
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"] == "digits-g3"


def test_master_addr_is_worker_zero_under_the_service(
    multi_run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    env = _env(_job(multi_run, pools, config))
    assert env["MASTER_ADDR"] == "digits-g3-0.digits-g3"
    assert env["MASTER_PORT"] == "29500"
    assert env["WORLD_SIZE"] == "4"


def test_rank_comes_from_the_completion_index_annotation(
    multi_run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    env = _env(_job(multi_run, pools, config))
    assert env["RANK"] == {"fieldRef": {"fieldPath": COMPLETION_INDEX}}
    assert COMPLETION_INDEX == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_headless_service_publishes_not_ready_workers(multi_run: TrainingRun) -> None:
    service = worker_service(multi_run)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"tandem.dev/trainingjob": "digits", "tandem.dev/generation": "3"}


def test_headless_service_selects_the_job_pods(
    multi_run: TrainingRun, pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    service = worker_service(multi_run)
    assert service is not None
    pod_labels = _job(multi_run, pools, config)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_several_gpus_per_worker_start_torchrun_without_python(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, workers=2, resources={"gpus": 4}), pools, config)
    command = _container(job)["command"]
    assert command[0] == "torchrun"
    assert "--nproc-per-node=4" in command
    assert "--no-python" in command
    assert command[command.index("--no-python") + 1 :] == ["tandem", "train", "digits"]


def test_torchrun_sets_rank_and_world_size_itself(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    env = _env(_job(_run(training_spec_body, workers=2, resources={"gpus": 4}), pools, config))
    assert "RANK" not in env
    assert "WORLD_SIZE" not in env
    assert env["NNODES"] == "2"


def test_one_gpu_per_worker_runs_the_command_directly(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, command=["python", "train.py"], args=["--epochs", "3"]), pools, config)
    assert _container(job)["command"] == ["python", "train.py"]
    assert _container(job)["args"] == ["--epochs", "3"]


def test_queue_sets_the_kueue_label_and_starts_suspended(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, queue="team-a"), pools, config)
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    assert job["spec"]["suspend"] is True


def test_a_priority_class_labels_the_job_for_kueue_and_the_pods_keep_their_priority(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, queue="team-a", priorityClass="urgent"), pools, config)
    assert job["metadata"]["labels"][KUEUE_PRIORITY_LABEL] == "urgent"
    assert "priorityClassName" not in _pod(job)


def test_without_a_queue_the_job_runs_unsuspended(single: dict[str, Any]) -> None:
    assert KUEUE_QUEUE_LABEL not in single["metadata"]["labels"]
    assert single["spec"]["suspend"] is False


def test_spec_suspend_suspends_the_job(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    assert _job(_run(training_spec_body, suspend=True), pools, config)["spec"]["suspend"] is True


def test_job_limits_come_from_the_spec(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body, backoffLimit=0, activeDeadlineSeconds=3600, ttlSecondsAfterFinished=120)
    spec = _job(run, pools, config)["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 3600)
    assert "ttlSecondsAfterFinished" not in spec, "set by the operator once the run's result is recorded"


def test_pvc_output_mounts_the_claim(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, model={"output": "pvc://models/digits"}), pools, config)
    volume, mount = _claim_and_mount(job)
    assert volume["persistentVolumeClaim"] == {"claimName": "models"}
    assert mount["mountPath"] == "/mnt/pvc/models"


def test_output_and_checkpoint_on_the_same_claim_mount_it_once(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body, model={"output": "pvc://data/models"}, checkpoint={"uri": "pvc://data/ckpt"})
    job = _job(run, pools, config)
    assert len(_claim_volumes(job)) == 1
    assert _env(job)["TANDEM_CHECKPOINT_URI"] == "pvc://data/ckpt/v3"


def test_object_store_output_mounts_no_claim(single: dict[str, Any]) -> None:
    assert not _claim_volumes(single)


def test_job_and_service_are_owned_by_the_training_job(multi_run: TrainingRun, single: dict[str, Any]) -> None:
    service = worker_service(multi_run)
    assert service is not None
    for child in (single, service):
        [owner] = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "tandem.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "digits",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_job_is_deterministic(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    assert _job(_run(training_spec_body), pools, config) == _job(_run(training_spec_body), pools, config)


def test_long_names_are_shortened_to_a_dns_label_with_a_hash(training_spec_body: dict[str, Any]) -> None:
    first = _run(training_spec_body, name="a" * 70).job_name
    second = _run(training_spec_body, name="a" * 69 + "b").job_name
    assert len(first) <= 63
    assert first != second
    assert first.startswith("a" * 40)


def test_dns_name_keeps_short_names_unchanged() -> None:
    assert dns_name("digits", "g12") == "digits-g12"


def test_dns_name_never_ends_a_shortened_prefix_with_a_dash() -> None:
    name = dns_name("a" * 53 + "-" + "b" * 20)
    assert len(name) <= 63
    assert "--" not in name


def test_dns_name_turns_a_dotted_subdomain_into_a_label_distinct_from_the_dashed_one() -> None:
    dotted = dns_name("team.digits", "g1")
    assert "." not in dotted
    assert dotted.startswith("team-digits-g1-")
    assert dotted != dns_name("team-digits", "g1")


def test_dotted_training_job_names_give_label_hostnames(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, name="team.digits", workers=2), pools, config)
    assert "." not in job["metadata"]["name"]
    assert _env(job)["MASTER_ADDR"].split(".") == [f"{job['metadata']['name']}-0", job["metadata"]["name"]]


def test_dotted_claim_names_give_label_volume_names(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, model={"output": "pvc://team.models/digits"}), pools, config)
    volume, mount = _claim_and_mount(job)
    assert "." not in volume["name"]
    assert volume["persistentVolumeClaim"] == {"claimName": "team.models"}
    assert mount["mountPath"] == "/mnt/pvc/team.models"


def test_multi_worker_hostnames_fit_a_dns_label(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    """Indexed Job pods are named <job>-<index>; with a long name the hostname must still be a DNS label."""
    run = _run(training_spec_body, name="x" * 80, workers=128)
    job = _job(run, pools, config)
    assert len(f"{job['metadata']['name']}-127") <= 63
    assert _env(job)["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{job['metadata']['name']}"


def test_container_runs_restricted(single: dict[str, Any]) -> None:
    context = _container(single)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert single["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_read_only_root_leaves_tmp_and_shm_writable(single: dict[str, Any]) -> None:
    paths = {mount["mountPath"] for mount in _container(single)["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= paths


def test_worker_requests_come_from_the_spec_and_the_pool(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, resources={"gpus": 2, "cpu": "8", "memory": "32Gi"}), pools, config)
    resources = _container(job)["resources"]
    assert resources["requests"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert resources["limits"] == resources["requests"]


def test_gpu_workers_get_the_gpu_pool_scheduling(single: dict[str, Any]) -> None:
    pod = single["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"tandem.dev/pool": "gpu"}
    assert [toleration["key"] for toleration in pod["tolerations"]] == ["nvidia.com/gpu"]


def test_cpu_workers_get_no_gpu_tolerations(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, pool="cpu", resources={"gpus": 0}), pools, config, pool="cpu")
    pod = job["spec"]["template"]["spec"]
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in _container(job)["resources"]["requests"]


def test_image_defaults_to_the_operator_trainer_image(single: dict[str, Any]) -> None:
    assert _container(single)["image"] == "trainer:test"


def test_termination_message_is_read_from_the_file_with_log_fallback(single: dict[str, Any]) -> None:
    container = _container(single)
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert _env(single)["TANDEM_TERMINATION_MESSAGE_PATH"] == "/dev/termination-log"


def test_user_env_follows_the_operator_env(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, env=[{"name": "LR", "value": "0.1"}]), pools, config)
    assert _container(job)["env"][-1] == {"name": "LR", "value": "0.1"}


def test_extra_pod_labels_reach_the_pods_not_the_job(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    config = OperatorConfig(extra_pod_labels={"team": "ml"})
    job = _job(_run(training_spec_body), pools, config)
    assert job["spec"]["template"]["metadata"]["labels"]["team"] == "ml"
    assert "team" not in job["metadata"]["labels"]


def test_workers_run_as_the_named_service_account_without_its_api_token(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body, serviceAccountName="s3-writer", imagePullSecrets=[{"name": "registry"}])
    pod = _pod(_job(run, pools, config))
    assert pod["serviceAccountName"] == "s3-writer"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["automountServiceAccountToken"] is False


def test_workers_without_an_identity_use_the_namespace_default(single: dict[str, Any]) -> None:
    pod = _pod(single)
    assert "serviceAccountName" not in pod
    assert "imagePullSecrets" not in pod


def test_user_volumes_are_passed_through_beside_tandems_own(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(
        training_spec_body,
        volumes=[
            {"name": "code", "configMap": {"name": "my-script", "defaultMode": 0o555}},
            {"name": "creds", "secret": {"secretName": "gcp", "items": [{"key": "key.json", "path": "key.json"}]}},
        ],
        volumeMounts=[
            {"name": "code", "mountPath": "/app", "readOnly": True},
            {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
        ],
    )
    job = _job(run, pools, config)
    volumes = {volume["name"]: volume for volume in _pod(job)["volumes"]}
    assert volumes["code"] == {"name": "code", "configMap": {"name": "my-script", "defaultMode": 0o555}}
    assert volumes["creds"]["secret"]["items"] == [{"key": "key.json", "path": "key.json"}]
    assert {"tmp", "dshm"} <= set(volumes)
    mounts = {mount["mountPath"]: mount for mount in _container(job)["volumeMounts"]}
    assert mounts["/app"] == {"name": "code", "mountPath": "/app", "readOnly": True}
    assert mounts["/var/run/creds"]["name"] == "creds"


def test_a_dataset_claim_is_mounted_read_only_and_named_in_the_env(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, dataset={"uri": "pvc://datasets/digits.csv"}), pools, config)
    volume, mount = _claim_and_mount(job)
    assert volume["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert (mount["mountPath"], mount["readOnly"]) == ("/mnt/pvc/datasets", True)
    assert _env(job)["TANDEM_DATASET_URI"] == "pvc://datasets/digits.csv"


def test_a_dataset_on_the_output_claim_shares_its_writable_mount(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    run = _run(training_spec_body, model={"output": "pvc://models/digits"}, dataset={"uri": "pvc://models/data.csv"})
    job = _job(run, pools, config)
    volume, mount = _claim_and_mount(job)
    assert volume["persistentVolumeClaim"] == {"claimName": "models"}
    assert "readOnly" not in mount


def test_an_object_store_dataset_mounts_nothing(
    training_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    job = _job(_run(training_spec_body, dataset={"uri": "s3://data/digits.csv"}), pools, config)
    assert not _claim_volumes(job)
    assert _env(job)["TANDEM_DATASET_URI"] == "s3://data/digits.csv"


def test_a_worker_stopped_by_a_lost_peer_or_by_sigterm_is_replaced_without_counting(single: dict[str, Any]) -> None:
    rules = single["spec"]["podFailurePolicy"]["rules"]
    [ignored] = [rule for rule in rules if rule["action"] == "Ignore" and "onExitCodes" in rule]
    assert ignored["onExitCodes"] == {
        "containerName": "trainer", "operator": "In", "values": [EXIT_PEER_LOST, 128 + signal.SIGTERM]
    }
