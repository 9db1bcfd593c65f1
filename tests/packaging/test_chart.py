"""The Helm chart: lint, render with every documented option, hardened operator pod, refused bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pkgtools import CHART, MANIFESTS, find, render, run, set_args

OPTION_SETS: dict[str, dict[str, Any]] = {
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "watch-the-release-namespace": {"watchNamespaces": ["tandem-system"]},
    "two-replicas": {"replicaCount": 2},
    "leader-election-single-replica": {"leaderElection": {"enabled": True, "leaseName": "my-lease"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "no-metrics-service": {"metrics": {"service": {"enabled": False}}},
    "server-pod-monitor": {"metrics": {"serverPodMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "dashboards": {"dashboards": {"enabled": True, "namespace": "monitoring", "label": "grafana_dashboard"}},
    "prometheus-rule": {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"},
                                                       "queuedFor": "1h", "operatorJob": "tandem"}}},
    "image-digest": {"image": {"repository": "registry.example.com/tandem-operator", "digest": "sha256:" + "a" * 64}},
    "image-tag-and-pull-secrets": {"image": {"tag": "dev"}, "imagePullSecrets": [{"name": "regcred"}]},
    "existing-service-account": {"serviceAccount": {"create": False, "name": "platform-operator"}},
    "service-account-annotations": {"serviceAccount": {"annotations": {"iam.example.com/role": "tandem"}}},
    "no-rbac": {"rbac": {"create": False}},
    "no-pools": {"computePools": {"gpu": {"enabled": False}, "cpu": {"enabled": False}}},
    "extra-pool": {"computePools": {"spot-gpu": {"enabled": True, "spec": {
        "accelerator": "nvidia.com/gpu", "nodeSelector": {"pool": "spot"}, "price": {"acceleratorHour": 1.2}}}}},
    "workload-settings": {"operator": {
        "trainerImage": "r.example.com/trainer:1", "serverImage": "r.example.com/server:1",
        "serverGpuImage": "r.example.com/server-gpu:1",
        "clusterDomain": "corp.local", "podLabels": {"team": "ml", "cost": "gpu"}, "verbose": True,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}},
    "scheduling": {"nodeSelector": {"tandem.dev/pool": "cpu"}, "tolerations": [{"key": "x", "operator": "Exists"}],
                   "affinity": {"nodeAffinity": {}}, "priorityClassName": "system-cluster-critical",
                   "podAnnotations": {"a": "b"}, "podLabels": {"c": "d"}},
    "ports": {"health": {"port": 9440}, "metrics": {"port": 9000, "service": {"port": 80}}},
    "no-tests": {"tests": {"enabled": False}},
    "names": {"nameOverride": "tdm", "fullnameOverride": "platform-tandem"},
}


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(objects, "Deployment")
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_chart_lints_clean_in_strict_mode(helm: Path) -> None:
    run([helm, "lint", "--strict", CHART])


@pytest.mark.parametrize("values", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_chart_lints_and_renders_with_each_documented_option(helm: Path, values: dict[str, Any]) -> None:
    run([helm, "lint", "--strict", CHART, *set_args(values)])
    objects = render(helm, values)
    assert len(find(objects, "Deployment")) == 1
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"]


def test_default_render_has_the_operator_its_rbac_metrics_service_pools_and_test_pod(helm: Path) -> None:
    kinds = sorted(obj["kind"] for obj in render(helm))
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment", "ComputePool",
         "ComputePool", "Pod"]
    )


def test_operator_pod_runs_non_root_read_only_without_capabilities(helm: Path) -> None:
    objects = render(helm)
    pod = find(objects, "Deployment")[0]["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_probes_healthz_and_exposes_metrics(helm: Path) -> None:
    container = operator_container(render(helm))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8000, "health": 8080}
    assert container["args"] == ["operator"]


def test_operator_learns_its_namespace_and_name_from_the_downward_api(helm: Path) -> None:
    env = env_of(operator_container(render(helm)))
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_operator_env_carries_every_setting(helm: Path) -> None:
    env = env_of(operator_container(render(helm, OPTION_SETS["workload-settings"] | OPTION_SETS["watch-namespaces"])))
    assert env["TANDEM_NAMESPACES"] == "team-a,team-b"
    assert env["TANDEM_TRAINER_IMAGE"] == "r.example.com/trainer:1"
    assert env["TANDEM_SERVER_IMAGE"] == "r.example.com/server:1"
    assert env["TANDEM_SERVER_GPU_IMAGE"] == "r.example.com/server-gpu:1"
    assert env["TANDEM_CLUSTER_DOMAIN"] == "corp.local"
    assert env["TANDEM_POD_LABELS"] == "cost=gpu,team=ml"
    assert env["TANDEM_VERBOSE"] == "true"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"


def test_workload_images_default_to_the_operator_repository_and_app_version(helm: Path) -> None:
    env = env_of(operator_container(render(helm, {"image": {"repository": "r.example.com/x/tandem-operator"}})))
    assert env["TANDEM_TRAINER_IMAGE"] == "r.example.com/x/tandem-trainer:0.1.0"
    assert env["TANDEM_SERVER_IMAGE"] == "r.example.com/x/tandem-server:0.1.0"
    assert env["TANDEM_SERVER_GPU_IMAGE"] == "r.example.com/x/tandem-server-gpu:0.1.0"


def test_one_replica_runs_without_leader_election_and_recreates_on_rollout(helm: Path) -> None:
    objects = render(helm)
    assert env_of(operator_container(objects))["TANDEM_LEADER_ELECTION"] == "false"
    assert find(objects, "Deployment")[0]["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(objects, "Role")


def test_several_replicas_turn_leader_election_on_with_a_lease_role(helm: Path) -> None:
    objects = render(helm, {"replicaCount": 3})
    container = operator_container(objects)
    assert env_of(container)["TANDEM_LEADER_ELECTION"] == "true"
    assert env_of(container)["TANDEM_LEASE_NAME"] == "tandem"
    # a standby replica has no /healthz until it leads, so liveness must not depend on it
    assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"
    (role,) = find(objects, "Role", "tandem-leader-election")
    assert role["metadata"]["namespace"] == "tandem-system"
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["tandem"],
            "verbs": ["get", "update"]} in role["rules"]


def test_watch_namespaces_become_roles_and_a_cluster_role_for_cluster_scoped_objects_only(helm: Path) -> None:
    objects = render(helm, {"watchNamespaces": ["team-a", "team-b"]})
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in find(objects, "Role")}
    assert roles == {("team-a", "tandem"), ("team-b", "tandem"), ("default", "tandem-events")}
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in find(objects, "RoleBinding")}
    assert bindings == roles
    (cluster_role,) = find(objects, "ClusterRole")
    resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert resources == {
        "computepools", "computepools/status", "nodes", "pods", "customresourcedefinitions", "namespaces"
    }  # pods: listed cluster-wide for pool room (tandem.decide.gang)


def test_default_pools_are_gpu_for_training_and_cpu_for_serving(helm: Path) -> None:
    pools = {p["metadata"]["name"]: p["spec"] for p in find(render(helm), "ComputePool")}
    assert pools["gpu"]["nodeSelector"] == {"tandem.dev/pool": "gpu"}
    assert pools["gpu"]["accelerator"] == "nvidia.com/gpu"
    assert pools["gpu"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pools["gpu"]["role"] == "training"
    assert pools["cpu"]["nodeSelector"] == {"tandem.dev/pool": "cpu"}
    assert pools["cpu"]["role"] == "serving"
    assert "accelerator" not in pools["cpu"]


def test_default_pools_are_valid_compute_pool_specs(helm: Path) -> None:
    from tandem.api.computepool import ComputePoolSpec

    for pool in find(render(helm), "ComputePool"):
        ComputePoolSpec.model_validate(pool["spec"])


def test_service_monitor_scrapes_the_metrics_service(helm: Path) -> None:
    objects = render(helm, OPTION_SETS["service-monitor"])
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = find(objects, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert all(service["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


def test_server_pod_monitor_scrapes_the_metrics_port_of_serving_pods_and_not_of_profile_jobs(helm: Path) -> None:
    from tandem.api.computepool import ComputePoolSpec
    from tandem.api.inferenceservice import InferenceServiceSpec, Replicas, ServedModel
    from tandem.config import OperatorConfig
    from tandem.decide.placement import pod_placement
    from tandem.render.serving import Serving, deployment

    (monitor,) = find(render(helm, OPTION_SETS["server-pod-monitor"]), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    pool = ComputePoolSpec.model_validate({"nodeSelector": {"tandem.dev/pool": "cpu"}})
    serving = Serving(
        name="digits", namespace="ml", uid="u", spec=InferenceServiceSpec.model_validate({"model": {"uri": "s3://m"}}),
        model=ServedModel(uri="s3://m"), placement=pod_placement("cpu", pool), pool=pool, accelerators=0,
        replicas=Replicas(),
    )
    template = deployment(serving, OperatorConfig())["spec"]["template"]
    labels = template["metadata"]["labels"]
    selector = monitor["spec"]["selector"]
    assert selector["matchLabels"].items() <= labels.items()
    expressions = [(e["key"], e["operator"]) for e in selector["matchExpressions"]]
    assert expressions == [("tandem.dev/inferenceservice", "Exists")]
    ports = {port["name"] for port in template["spec"]["containers"][0]["ports"]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    scoped = render(helm, OPTION_SETS["server-pod-monitor"] | OPTION_SETS["watch-namespaces"])
    assert find(scoped, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_metrics_service_selects_the_operator_pods(helm: Path) -> None:
    objects = render(helm)
    (service,) = find(objects, "Service")
    labels = find(objects, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]


def test_helm_test_pod_is_a_test_hook_that_fetches_metrics(helm: Path) -> None:
    (pod,) = find(render(helm, {"tests": {"podAnnotations": {"x": "y"}}}), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["annotations"]["x"] == "y"
    assert "tandem-metrics.tandem-system.svc:8000/metrics" in pod["spec"]["containers"][0]["command"][-1]
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-key": ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    "negative-replicas": ({"replicaCount": -1}, "/replicaCount"),
    "bad-pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad-namespace": ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    "bad-port": ({"metrics": {"port": 70000}}, "/metrics/port"),
    "bad-digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "pool-without-selector": ({"computePools": {"x": {"enabled": True, "spec": {"role": "serving"}}}},
                              "missing property 'nodeSelector'"),
    "pool-bad-role": ({"computePools": {"gpu": {"spec": {"role": "inference"}}}}, "/computePools/gpu/spec/role"),
    "pool-negative-price": ({"computePools": {"cpu": {"spec": {"price": {"coreHour": -1}}}}},
                            "/computePools/cpu/spec/price/coreHour"),
    "pool-bad-name": ({"computePools": {"GPU": {"enabled": True, "spec": {"nodeSelector": {"a": "b"}}}}},
                      "invalid propertyName 'GPU'"),
    "typo-in-nested-key": ({"metrics": {"serviceMonitor": {"enable": True}}}, "'enable' not allowed"),
    "bad-interval": ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
}


@pytest.mark.parametrize(("values", "message"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_refused_with_the_offending_key(helm: Path, values: dict[str, Any], message: str) -> None:
    proc = run([helm, "template", "tandem", CHART, *set_args(values)], check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_service_monitor_without_metrics_service_fails_with_a_reason(helm: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}
    proc = run([helm, "template", "tandem", CHART, *set_args(values)], check=False)
    assert proc.returncode != 0
    assert "metrics.serviceMonitor.enabled needs metrics.service.enabled" in proc.stderr


def test_existing_service_account_needs_a_name(helm: Path) -> None:
    proc = run([helm, "template", "tandem", CHART, *set_args({"serviceAccount": {"create": False}})], check=False)
    assert proc.returncode != 0
    assert "serviceAccount.name is required" in proc.stderr


def _schema_key_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, sub in (schema.get("properties") or {}).items():
        paths.append((*prefix, key))
        paths += _schema_key_paths(sub, (*prefix, key))
    return paths


def test_every_values_key_the_schema_names_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    located: dict[tuple[str, ...], int] = {}
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        located.setdefault(tuple(k for _, k in stack), number)
    missing = []
    for path in _schema_key_paths(schema):
        concrete = [p for p in located if len(p) == len(path) and all(a == b for a, b in zip(p, path, strict=True))]
        for key in concrete:
            previous = lines[located[key] - 1].strip()
            if not previous.startswith("#"):
                missing.append(".".join(key))
    pool_keys = [p for p in located if len(p) == 3 and p[0] == "computePools" and p[2] in ("enabled", "spec")]
    missing += [".".join(p) for p in pool_keys if not lines[located[p] - 1].strip().startswith("#")]
    assert not missing, f"values.yaml keys without a comment above: {missing}"
    assert len(located) > 40


def test_values_yaml_passes_its_own_schema_and_names_every_schema_key() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])


def test_chart_crds_are_the_generated_crds() -> None:
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in (MANIFESTS / "crds").glob("*.tandem.dev.yaml")}
    assert chart == generated
    assert set(chart) == {"computepools.tandem.dev.yaml", "trainingjobs.tandem.dev.yaml",
                          "inferenceservices.tandem.dev.yaml"}
