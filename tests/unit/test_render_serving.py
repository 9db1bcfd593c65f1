from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec, ServedModel
from tandem.config import OperatorConfig
from tandem.decide.placement import pod_placement, serving_accelerators
from tandem.render.serving import (
    MODEL_SHA_ANNOTATION,
    REPLICAS_HANDOVER_MANAGER,
    REQUESTS_IN_FLIGHT_METRIC,
    REQUESTS_PER_SECOND_METRIC,
    Serving,
    autoscaler,
    deployment,
    disruption_budget,
    grpc_address,
    replicas_handover,
    service,
    service_url,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def _serving(
    body: dict[str, Any],
    pools: dict[str, ComputePoolSpec],
    pool: str = "cpu",
    model: ServedModel | None = None,
    **fields: Any,
) -> Serving:
    spec = InferenceServiceSpec.model_validate({**body, **fields})
    return Serving(
        name="digits",
        namespace="ml",
        uid="uid-2",
        spec=spec,
        model=model or ServedModel(uri="s3://models/digits/v1/model.onnx", sha256=SHA_A, version="1"),
        placement=pod_placement(pool, pools[pool]),
        pool=pools[pool],
        accelerators=serving_accelerators(spec, pools[pool]),
        replicas=spec.replicas,
    )


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(obj: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in _container(obj)["env"]}


def test_deployment_env_names_the_model(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    env = _env(deployment(_serving(serving_spec_body, pools), config))
    assert env["TANDEM_MODEL_URI"] == "s3://models/digits/v1/model.onnx"
    assert env["TANDEM_MODEL_SHA256"] == SHA_A
    assert env["TANDEM_MODEL_NAME"] == "digits"
    assert env["TANDEM_MODEL_VERSION"] == "1"


def test_a_new_model_changes_the_pod_template(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    """A changed template is what makes the Deployment roll out the next model."""
    old = deployment(_serving(serving_spec_body, pools), config)
    model = ServedModel(uri="s3://models/digits/v2/model.onnx", sha256=SHA_B, version="2")
    new = deployment(_serving(serving_spec_body, pools, model=model), config)
    assert old["spec"]["template"]["metadata"]["annotations"][MODEL_SHA_ANNOTATION] == SHA_A
    assert new["spec"]["template"]["metadata"]["annotations"][MODEL_SHA_ANNOTATION] == SHA_B


def test_rollout_never_takes_a_serving_replica_down_first(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    strategy = deployment(_serving(serving_spec_body, pools), config)["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_a_replica_gets_the_memory_the_plan_raised_and_otherwise_the_specs(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    asked = _serving(serving_spec_body, pools)
    raised = replace(asked, memory="1401Mi")
    assert _container(deployment(asked, config))["resources"]["limits"]["memory"] == asked.spec.resources.memory
    resources = _container(deployment(raised, config))["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "1401Mi"


def test_probes_use_the_v2_health_endpoints(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    container = _container(deployment(_serving(serving_spec_body, pools), config))
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    port_names = {port["name"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names


def test_fixed_replicas_set_the_replica_count(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools, replicas={"min": 3, "max": 3})
    assert deployment(serving, config)["spec"]["replicas"] == 3


def test_autoscaled_deployment_leaves_replicas_to_the_autoscaler(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools, replicas={"min": 1, "max": 4})
    assert "replicas" not in deployment(serving, config)["spec"]


def _stored(replicas: int, *owners: str) -> dict[str, Any]:
    """A Deployment as the API server returns it: spec.replicas applied by each of `owners`."""
    applied = {"f:spec": {"f:replicas": {}, "f:template": {}}}
    fields = [{"manager": owner, "operation": "Apply", "fieldsV1": applied} for owner in owners]
    return {"metadata": {"name": "digits", "namespace": "ml", "managedFields": fields}, "spec": {"replicas": replicas}}


def test_a_switch_to_autoscaling_hands_the_operators_replica_count_to_a_manager_of_its_own(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    desired = deployment(_serving(serving_spec_body, pools, replicas={"min": 2, "max": 8}), config)
    handover = replicas_handover(desired, _stored(3, "tandem-operator"), "tandem-operator")
    assert handover == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits", "namespace": "ml"},
        "spec": {"replicas": 3},
    }
    assert REPLICAS_HANDOVER_MANAGER != "tandem-operator"


def test_nothing_is_handed_over_that_the_operator_does_not_apply(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    autoscaled = deployment(_serving(serving_spec_body, pools, replicas={"min": 2, "max": 8}), config)
    fixed = deployment(_serving(serving_spec_body, pools, replicas={"min": 3, "max": 3}), config)
    assert replicas_handover(autoscaled, _stored(5, "kube-controller-manager"), "tandem-operator") is None
    assert replicas_handover(autoscaled, None, "tandem-operator") is None
    assert replicas_handover(fixed, _stored(3, "tandem-operator"), "tandem-operator") is None


def test_autoscaler_spans_min_to_max_on_cpu_utilisation(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    autoscaling = {"targetCpuUtilization": 60}
    serving = _serving(serving_spec_body, pools, replicas={"min": 2, "max": 5}, autoscaling=autoscaling)
    hpa = autoscaler(serving)
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits"}
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


def test_the_cpu_autoscaler_keeps_the_controllers_default_pace_unless_told(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    """No behaviour written by default: the controller's own 5-minute scale-down stabilisation holds."""
    hpa = autoscaler(_serving(serving_spec_body, pools, replicas={"min": 1, "max": 3}))
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert "behavior" not in hpa["spec"]


@pytest.mark.parametrize(
    ("autoscaling", "metric", "average"),
    [
        ({"metric": "requestsPerSecond", "targetRequestsPerSecond": 12.5}, REQUESTS_PER_SECOND_METRIC, "12500m"),
        ({"metric": "requestsInFlight", "targetRequestsInFlight": 4}, REQUESTS_IN_FLIGHT_METRIC, "4000m"),
    ],
)
def test_the_autoscaler_scales_on_a_request_metric_per_replica(
    serving_spec_body: dict[str, Any],
    pools: dict[str, ComputePoolSpec],
    autoscaling: dict[str, Any],
    metric: str,
    average: str,
) -> None:
    """A Pods metric averaged over the replicas, named as the chart's prometheus-adapter rules name it."""
    serving = _serving(serving_spec_body, pools, replicas={"min": 1, "max": 3}, autoscaling=autoscaling)
    hpa = autoscaler(serving)
    assert hpa is not None
    target = {"type": "AverageValue", "averageValue": average}
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": metric}, "target": target}}]


@pytest.mark.parametrize("metric", ["cpu", "requestsPerSecond"])
def test_the_scale_down_stabilisation_window_is_the_specs_for_every_metric(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], metric: str
) -> None:
    autoscaling = {"metric": metric, "targetRequestsPerSecond": 5, "scaleDownStabilizationSeconds": 10}
    hpa = autoscaler(_serving(serving_spec_body, pools, replicas={"min": 1, "max": 3}, autoscaling=autoscaling))
    assert hpa is not None
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 10}}


@pytest.mark.parametrize(
    ("metric", "target"),
    [("requestsPerSecond", "targetRequestsPerSecond"), ("requestsInFlight", "targetRequestsInFlight")],
)
def test_a_request_metric_without_its_target_is_refused(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], metric: str, target: str
) -> None:
    """The operator refuses what the CRD's CEL rule refuses, with the same message."""
    with pytest.raises(ValidationError, match=f"spec.autoscaling.{target} is required with metric {metric}"):
        _serving(serving_spec_body, pools, replicas={"min": 1, "max": 3}, autoscaling={"metric": metric})


def test_no_autoscaler_when_min_equals_max(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec]
) -> None:
    assert autoscaler(_serving(serving_spec_body, pools, replicas={"min": 2, "max": 2})) is None


def test_service_selects_the_deployment_pods(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools)
    svc = service(serving)
    pod_labels = deployment(serving, config)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert {port["port"] for port in svc["spec"]["ports"]} >= {80}
    assert svc["metadata"]["name"] == "digits"


@pytest.mark.parametrize(
    ("replicas", "budget"),
    [({"min": 2, "max": 6}, {"maxUnavailable": 1}), ({"min": 1, "max": 4}, {"minAvailable": 1})],
)
def test_disruption_budget_never_lets_an_eviction_take_the_last_ready_replica(
    serving_spec_body: dict[str, Any],
    pools: dict[str, ComputePoolSpec],
    replicas: dict[str, int],
    budget: dict[str, int],
) -> None:
    """One eviction at a time while two replicas always run; with one, maxUnavailable 1 would let a drain evict
    it, so the budget keeps one available instead."""
    serving_spec_body["replicas"] = replicas
    serving = _serving(serving_spec_body, pools)
    assert disruption_budget(serving)["spec"] == {**budget, "selector": {"matchLabels": serving.selector}}


def test_every_child_is_owned_by_the_inference_service(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools, replicas={"min": 1, "max": 2})
    hpa = autoscaler(serving)
    assert hpa is not None
    for child in (deployment(serving, config), service(serving), disruption_budget(serving), hpa):
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "InferenceService",
            "digits",
            "uid-2",
            True,
        )


def test_cpu_serving_pods_land_on_the_cpu_pool_without_gpu_tolerations(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    obj = deployment(_serving(serving_spec_body, pools), config)
    pod = obj["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"tandem.dev/pool": "cpu"}
    assert "tolerations" not in pod
    assert "nvidia.com/gpu" not in _container(obj)["resources"]["limits"]


def test_gpu_serving_pods_request_the_accelerator_and_tolerate_the_taint(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    obj = deployment(_serving(serving_spec_body, pools, pool="gpu", placement="gpu"), config)
    assert _container(obj)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert obj["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_server_runs_restricted_with_a_writable_tmp(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    container = _container(deployment(_serving(serving_spec_body, pools), config))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_pvc_model_mounts_its_claim(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    model = ServedModel(uri="pvc://models/digits/v1/model.onnx", sha256=SHA_A)
    obj = deployment(_serving(serving_spec_body, pools, model=model), config)
    claims = [v for v in obj["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert [claim["persistentVolumeClaim"]["claimName"] for claim in claims] == ["models"]
    assert "/mnt/pvc/models" in {mount["mountPath"] for mount in _container(obj)["volumeMounts"]}


def test_runtime_threads_and_batching_reach_the_server(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools, runtime={"threads": 3, "maxBatchSize": 8, "maxBatchDelayMs": 5})
    env = _env(deployment(serving, config))
    assert (env["TANDEM_THREADS"], env["TANDEM_MAX_BATCH_SIZE"], env["TANDEM_MAX_BATCH_DELAY_MS"]) == ("3", "8", "5.0")


def test_image_defaults_to_the_operator_server_image(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    assert _container(deployment(_serving(serving_spec_body, pools), config))["image"] == "server:test"
    custom = _serving(serving_spec_body, pools, image="registry.local/server:1")
    assert _container(deployment(custom, config))["image"] == "registry.local/server:1"


def test_deployment_is_deterministic(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    assert deployment(_serving(serving_spec_body, pools), config) == deployment(
        _serving(serving_spec_body, pools), config
    )


def test_the_service_carries_v2_grpc_to_the_servers_grpc_port(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools)
    container = _container(deployment(serving, config))
    env = {item["name"]: item.get("value") for item in container["env"]}
    (port,) = [port for port in service(serving)["spec"]["ports"] if port["name"] == "grpc"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (8081, "grpc", "kubernetes.io/h2c")
    assert {"name": "grpc", "containerPort": int(env["TANDEM_GRPC_PORT"])} in container["ports"]


def test_grpc_address_is_the_services_host_and_grpc_port() -> None:
    assert grpc_address(service_url("digits", "ml", "cluster.local")) == "digits.ml.svc.cluster.local:8081"


def test_service_url_is_the_in_cluster_v2_model_endpoint() -> None:
    assert service_url("digits", "ml", "cluster.local") == "http://digits.ml.svc.cluster.local/v2/models/digits"


def test_server_pods_run_as_the_named_service_account_without_its_api_token(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    serving = _serving(serving_spec_body, pools, serviceAccountName="reader", imagePullSecrets=[{"name": "registry"}])
    pod = deployment(serving, config)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "reader"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["automountServiceAccountToken"] is False


def test_server_pods_without_an_identity_name_none(
    serving_spec_body: dict[str, Any], pools: dict[str, ComputePoolSpec], config: OperatorConfig
) -> None:
    pod = deployment(_serving(serving_spec_body, pools), config)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert "imagePullSecrets" not in pod
