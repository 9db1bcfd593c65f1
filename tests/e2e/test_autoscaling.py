"""An InferenceService under load scales out through its HorizontalPodAutoscaler and back in after, on the
real node, with the metrics pipeline a cluster runs: metrics-server reading the real kubelet for CPU, and
Prometheus with prometheus-adapter (the chart's rules) serving the servers' own request rate.

The pipeline runs beside this package's cluster (hack/cluster.sh metrics up: hack/lib/metrics.sh) and the
controller-manager's HPA sync period is 5 s there; each service sets a scale-down stabilisation window of a
few seconds, so coming back in takes well under a minute instead of the default five.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e.conftest import CHART, Load, ModelVolume, Release, helm, service_address
from support.cluster import ExternalCluster, LocalCluster, wait_until
from support.dashboards import panel_queries
from support.digits import CPU_POOL, training_spec
from support.models import tiny_model
from support.tandem import body, condition, create, wait_for
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB
from tandem.render.serving import REQUESTS_IN_FLIGHT_METRIC, REQUESTS_PER_SECOND_METRIC

pytestmark = pytest.mark.timeout(600)

SCALE_DOWN_WINDOW_S = 5


@pytest.fixture(scope="module")
def metrics_pipeline(cluster: LocalCluster | ExternalCluster, kube: k8s.ApiClient) -> Iterator[None]:
    """metrics-server, Prometheus and prometheus-adapter in this package's cluster for this module's tests
    (an external cluster is expected to have its own), the resource and custom metrics APIs answering."""
    if isinstance(cluster, LocalCluster):
        cluster.metrics_pipeline("up")
    try:
        yield
    finally:
        if isinstance(cluster, LocalCluster):
            cluster.metrics_pipeline("down")


def serve_tiny_model(
    kube: k8s.ApiClient,
    namespace: str,
    models: ModelVolume,
    name: str,
    autoscaling: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> str:
    """An InferenceService of one to three replicas of a quarter core each on the real CPU node, Ready; returns
    its Service's ClusterIP:port once that answers (reached from this machine through kube-proxy)."""
    data = tiny_model()
    (models.path / "tiny.onnx").write_bytes(data)
    spec = {
        "model": {"uri": f"pvc://{models.claim}/tiny.onnx", "sha256": hashlib.sha256(data).hexdigest()},
        "pool": CPU_POOL,
        "replicas": {"min": 1, "max": 3},
        "resources": {"cpu": "250m", "memory": "512Mi"},
        "autoscaling": {**autoscaling, "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW_S},
        **(extra or {}),
    }
    create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, name, spec))
    wait_for(
        kube,
        INFERENCE_SERVICE,
        namespace,
        name,
        lambda o: (condition(o, "Ready") or {}).get("status") == "True",
        "Ready",
        180,
    )
    return service_address(kube, namespace, name)


def hpa(kube: k8s.ApiClient, namespace: str, name: str) -> Any:
    return k8s.AutoscalingV2Api(kube).read_namespaced_horizontal_pod_autoscaler(name, namespace)


def current_metric(kube: k8s.ApiClient, namespace: str, name: str) -> Any:
    """The HPA's first current metric once the controller has read one (the pipeline answers for the pods)."""
    metrics = hpa(kube, namespace, name).status.current_metrics or []
    return metrics[0] if metrics else None


def cpu_reading(kube: k8s.ApiClient, namespace: str, name: str) -> int | None:
    """The average CPU utilisation the HPA last computed, None while it has none."""
    metric = current_metric(kube, namespace, name)
    if metric is None or metric.type != "Resource" or metric.resource.name != "cpu":
        return None
    utilisation: int | None = metric.resource.current.average_utilization
    return None if utilisation is None else utilisation + 1  # truthy at 0%


def resource_metrics(kube: k8s.ApiClient, namespace: str) -> str:
    """What the metrics API and the real CPU node's kubelet say of the namespace's pods, for a failure."""
    paths = (
        f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
        "/api/v1/nodes/real-cpu-0/proxy/metrics/resource",
    )
    answers = []
    for path in paths:
        try:
            text = kube.call_api(path, "GET", response_type="str", _return_http_data_only=True)
        except ApiException as exc:
            text = f"{exc.status} {exc.reason}: {exc.body}"
        lines = str(text).splitlines()
        answers.append(f"{path}:\n" + "\n".join(line for line in lines if namespace in line or len(lines) < 5))
    return "\n".join(answers)


def replicas_reach(kube: k8s.ApiClient, namespace: str, name: str, done: Any, what: str, timeout: float) -> int:
    """Wait until the Deployment's replica count (what the HPA set) satisfies `done`; returns it."""
    apps = k8s.AppsV1Api(kube)

    def count() -> int | None:
        replicas: int = apps.read_namespaced_deployment(name, namespace).spec.replicas
        return replicas if done(replicas) else None

    return wait_until(count, timeout=timeout, interval=1, what=f"{name}: {what}")


def hpa_summary(kube: k8s.ApiClient, namespace: str, name: str) -> str:
    status = hpa(kube, namespace, name).status
    conditions = [(c.type, c.status, c.reason, c.message) for c in status.conditions or []]
    return (
        f"replicas {status.current_replicas}->{status.desired_replicas}, metrics {status.current_metrics}, {conditions}"
    )


def test_cpu_load_scales_a_service_out_through_metrics_server_and_back_in_after(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume, metrics_pipeline: None
) -> None:
    address = serve_tiny_model(kube, namespace, models, "cpu", {"metric": "cpu", "targetCpuUtilization": 30})
    # The HPA reads the idle replica's CPU from the resource metrics API before any load: the pipeline is in
    # the path (until metrics-server has two samples of the new pod, the HPA lists an empty metric).
    try:
        wait_until(lambda: cpu_reading(kube, namespace, "cpu"), timeout=120, what="the HPA reading the replica's CPU")
    except TimeoutError:
        pytest.fail(f"no CPU reading: {hpa_summary(kube, namespace, 'cpu')}\n{resource_metrics(kube, namespace)}")
    started = time.monotonic()
    with Load(address, "cpu") as load:
        try:
            scaled = replicas_reach(kube, namespace, "cpu", lambda n: n >= 2, "scaled out under load", 240)
        except TimeoutError:
            pytest.fail(f"no scale-out: {hpa_summary(kube, namespace, 'cpu')}")
        print(
            f"cpu: {scaled} replicas {time.monotonic() - started:.0f}s into the load;",
            hpa_summary(kube, namespace, "cpu"),
        )
    stopped = time.monotonic()
    assert scaled >= 2
    assert load.answered > 0
    try:
        replicas_reach(kube, namespace, "cpu", lambda n: n == 1, "back to one replica after the load", 180)
    except TimeoutError:
        pytest.fail(f"no scale-in: {hpa_summary(kube, namespace, 'cpu')}")
    print(
        f"cpu: {load.answered} requests answered, {len(load.failures)} failed {load.failure_kinds()};",
        f"one replica {time.monotonic() - stopped:.0f}s after the load stopped",
    )


def test_request_rate_scales_a_service_out_through_prometheus_adapter_and_back_in_after(
    kube: k8s.ApiClient, namespace: str, release: Release, models: ModelVolume, metrics_pipeline: None
) -> None:
    """Five requests per second per replica: the unpaced load is many times that, so the HPA goes to the
    maximum of three, reading the servers' request rate through the custom metrics API."""
    autoscaling = {"metric": "requestsPerSecond", "targetRequestsPerSecond": 5}
    address = serve_tiny_model(kube, namespace, models, "rps", autoscaling)
    started = time.monotonic()
    with Load(address, "rps") as load:
        try:
            replicas_reach(kube, namespace, "rps", lambda n: n == 3, "scaled out to the maximum", 240)
        except TimeoutError:
            pytest.fail(f"no scale-out: {hpa_summary(kube, namespace, 'rps')}")
        busy = current_metric(kube, namespace, "rps")
        print(f"rps: 3 replicas {time.monotonic() - started:.0f}s into the load; {hpa_summary(kube, namespace, 'rps')}")
    stopped = time.monotonic()
    assert busy.type == "Pods"
    assert busy.pods.metric.name == REQUESTS_PER_SECOND_METRIC
    assert k8s_quantity(busy.pods.current.average_value) > 5, busy
    assert load.answered > 0
    try:
        replicas_reach(kube, namespace, "rps", lambda n: n == 1, "back to one replica after the load", 180)
    except TimeoutError:
        pytest.fail(f"no scale-in: {hpa_summary(kube, namespace, 'rps')}")
    print(
        f"rps: {load.answered} requests answered, {len(load.failures)} failed {load.failure_kinds()};",
        f"one replica {time.monotonic() - stopped:.0f}s after the load stopped",
    )


def test_the_api_server_refuses_a_request_metric_without_its_target(
    kube: k8s.ApiClient, namespace: str, release: Release
) -> None:
    spec = {
        "model": {"uri": "pvc://models/tiny.onnx"},
        "replicas": {"min": 1, "max": 3},
        "autoscaling": {"metric": "requestsInFlight"},
    }
    with pytest.raises(ApiException) as refused:
        create(kube, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "untargeted", spec))
    assert refused.value.status == 422
    assert "spec.autoscaling.targetRequestsInFlight is required with metric requestsInFlight" in refused.value.body


def test_the_charts_adapter_rules_serve_the_metrics_the_autoscaler_asks_for() -> None:
    """The names autoscaler() puts in an HPA are the names the chart's rules give the series, per pod and
    namespace, over the window the values set, in the namespace where the adapter runs."""
    rendered = helm(
        "template", "tandem", str(CHART), "--namespace", "tandem-system",
        "--set", "autoscaling.prometheusAdapter.enabled=true",
        "--set", "autoscaling.prometheusAdapter.namespace=monitoring",
        "--set", "autoscaling.prometheusAdapter.window=2m",
        "--show-only", "templates/prometheus-adapter-rules.yaml",
    )  # fmt: skip
    config_map = yaml.safe_load(rendered)
    assert (config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == (
        "tandem-adapter-rules",
        "monitoring",
    )
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert {rule["name"]["as"] for rule in rules} == {REQUESTS_PER_SECOND_METRIC, REQUESTS_IN_FLIGHT_METRIC}
    for rule in rules:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "[2m]" in rule["metricsQuery"]
    default = yaml.safe_load_all(helm("template", "tandem", str(CHART), "--namespace", "tandem-system"))
    assert "tandem-adapter-rules" not in {doc["metadata"]["name"] for doc in default if doc}, "off by default"


def test_every_dashboard_query_returns_series_from_the_clusters_prometheus(
    cluster: LocalCluster | ExternalCluster,
    kube: k8s.ApiClient,
    namespace: str,
    release: Release,
    models: ModelVolume,
    metrics_pipeline: None,
) -> None:
    """The chart's dashboards against the local cluster's Prometheus, which scrapes the operator and the
    servers as the chart's ServiceMonitor and PodMonitor do: with a service under load and a TrainingJob, every
    panel's query has series to draw."""
    if not isinstance(cluster, LocalCluster):
        pytest.skip("reads the local cluster's Prometheus")
    prometheus = f"http://127.0.0.1:{cluster.ports('metrics/state.env')['prometheus']}"
    slo = {"slo": {"p99LatencyMs": 500, "targetRequestsPerSecond": 5}}
    address = serve_tiny_model(kube, namespace, models, "dashboard", {}, slo)
    create(kube, TRAINING_JOB, namespace, body(TRAINING_JOB, "held", {**training_spec(workers=1), "suspend": True}))
    queries = panel_queries()
    missing: list[tuple[str, str, str]] = []

    def every_query_answered() -> bool:
        missing[:] = [query for query in queries if not prometheus_series(prometheus, query[2])]
        return not missing

    with Load(address, "dashboard", workers=1):
        try:
            wait_until(every_query_answered, timeout=180, interval=5, what="series for every dashboard query")
        except TimeoutError:
            pytest.fail("no series for: " + "; ".join(f"{board} / {panel}: {expr}" for board, panel, expr in missing))
    rules = wait_until(lambda: evaluated_rules(prometheus), timeout=60, what="the chart's rules evaluated, no error")
    assert {rule["name"] for rule in rules} >= {"TandemOperatorDown", "tandem:inference_server_errors:ratio"}


def evaluated_rules(prometheus: str) -> list[dict[str, Any]] | None:
    """The rules Prometheus loaded (the chart's PrometheusRule groups, hack/lib/metrics.sh) once every one has
    been evaluated without error; None before."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as reply:
        answer = json.load(reply)
    rules: list[dict[str, Any]] = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
    return rules if rules and all(rule["health"] == "ok" for rule in rules) else None


def prometheus_series(prometheus: str, query: str) -> list[Any]:
    """The instant vector Prometheus answers for `query` now."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        answer = json.load(reply)
    assert answer["status"] == "success", answer
    result: list[Any] = answer["data"]["result"]
    return result


def k8s_quantity(value: str) -> float:
    """A quantity as the custom metrics API writes it ("12", "12500m")."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
