"""Tandem on the test cluster: CRDs from the generated manifests, the default pools, and resource helpers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kopf
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from support.cluster import ExternalCluster, LocalCluster, wait_until
from tandem.api.resources import COMPUTE_POOL, GROUP, VERSION, Resource
from tandem.controller.controller import Controller

REPO = Path(__file__).resolve().parents[2]
HANDLERS = "tandem.controller.handlers"
"""The module kopf runs as the operator (`kopf run -m`), as `tandem operator` does."""

_memos: list[kopf.Memo] = []
"""kopf's memo of the operator run going on in this process, if any (the tests' own record)."""


@kopf.on.startup(id="tandem-tests-keep-memo")
def _keep_memo(memo: kopf.Memo, **_: Any) -> None:
    """Registered beside the operator's handlers in kopf's default registry, which `kopf run -m` (KopfRunner) uses:
    kopf hands every startup handler of a run the same memo, the one the operator's own keeps its Controller in."""
    _memos[:] = [memo]


@kopf.on.cleanup(id="tandem-tests-forget-memo")
def _forget_memo(**_: Any) -> None:
    _memos.clear()


def running_controller(timeout: float = 90) -> Controller:
    """The Controller of the operator that KopfRunner runs in this process, once it has started (KopfRunner
    returns before kopf's startup handlers have run; the operator's waits for its child watches to list).

    The operator keeps its Controller only in kopf's memo (tandem.controller.handlers.configure), so that nothing of
    a running operator is module state in tandem.controller; the record of which run is going on is the tests'."""

    def started() -> Controller | None:
        controller: Controller | None = _memos[0].get("controller") if _memos else None
        return controller if controller is not None and controller.running.is_set() else None

    found: Controller = wait_until(started, timeout=timeout, what="the operator's Controller started")
    return found


GPU_POOL: dict[str, Any] = {
    "nodeSelector": {"tandem.dev/pool": "gpu"},
    "accelerator": "nvidia.com/gpu",
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "role": "training",
    "price": {"nodeHour": 0, "acceleratorHour": 2.5, "coreHour": 0.02},
    "power": {"wattsPerAccelerator": 700, "wattsPerCore": 5},
}
CPU_POOL: dict[str, Any] = {
    "nodeSelector": {"tandem.dev/pool": "cpu"},
    "role": "serving",
    "price": {"coreHour": 0.03},
    "power": {"wattsPerCore": 6},
}


@contextmanager
def api_client(cluster: LocalCluster | ExternalCluster) -> Iterator[k8s.ApiClient]:
    """A kubernetes ApiClient for `cluster`, closed on the way out so that its pooled connections do not outlive
    the fixture (and the cluster) they were made for."""
    api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api
    finally:
        api.close()


def install_crds(api: k8s.ApiClient) -> None:
    """Apply the generated CRDs and wait until they are Established.

    Server-side apply, so suites that install concurrently (or again) do not conflict.
    """
    from kubernetes import dynamic

    crds = dynamic.DynamicClient(api).resources.get(
        api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition"
    )
    for path in sorted((REPO / "manifests" / "crds").glob("*.tandem.dev.yaml")):
        document = yaml.safe_load(path.read_text())
        name = document["metadata"]["name"]
        crds.server_side_apply(body=document, name=name, field_manager="tandem-tests", force_conflicts=True)

        def established(crd_name: str = name) -> bool:
            conditions = crds.get(name=crd_name).to_dict().get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_until(established, timeout=60, what=f"CRD {name} established")


def resource_api(api: k8s.ApiClient) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api)


def body(resource: Resource, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": resource.kind,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def create(api: k8s.ApiClient, resource: Resource, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
    """Create with strict field validation, as `kubectl apply` does by default."""
    custom = resource_api(api)
    if resource.namespaced:
        assert namespace is not None
        result = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, resource.plural, obj, field_validation="Strict"
        )
    else:
        result = custom.create_cluster_custom_object(GROUP, VERSION, resource.plural, obj, field_validation="Strict")
    created: dict[str, Any] = result
    return created


def get(api: k8s.ApiClient, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
    custom = resource_api(api)
    if resource.namespaced:
        found: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, resource.plural, name)
    else:
        found = custom.get_cluster_custom_object(GROUP, VERSION, resource.plural, name)
    return found


def patch_spec(api: k8s.ApiClient, resource: Resource, namespace: str, name: str, spec: dict[str, Any]) -> None:
    resource_api(api).patch_namespaced_custom_object(GROUP, VERSION, namespace, resource.plural, name, {"spec": spec})


def delete(api: k8s.ApiClient, resource: Resource, namespace: str, name: str) -> None:
    resource_api(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, resource.plural, name)


def ensure_pools(api: k8s.ApiClient) -> None:
    """The gpu (training) and cpu (serving) pools that match hack/cluster.sh's nodes."""
    for name, spec in (("gpu", GPU_POOL), ("cpu", CPU_POOL)):
        try:
            create(api, COMPUTE_POOL, None, body(COMPUTE_POOL, name, spec))
        except ApiException as exc:
            if exc.status != 409:
                raise


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def events_for(api: k8s.ApiClient, namespace: str, name: str) -> list[k8s.CoreV1Event]:
    selector = f"involvedObject.name={name}"
    events: list[k8s.CoreV1Event] = k8s.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items
    return events


def artifact_message(uri: str, sha256: str, accuracy: float = 0.97) -> str:
    """A termination message as the trainer writes it, for kwok to report from a fake worker."""
    return json.dumps(
        {
            "uri": uri,
            "sha256": sha256,
            "sizeBytes": 1234,
            "format": "onnx",
            "opset": 18,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
            "metrics": {"accuracy": accuracy},
        }
    )


def wait_for(
    api: k8s.ApiClient,
    resource: Resource,
    namespace: str | None,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 90,
) -> dict[str, Any]:
    """Poll the resource until `check` holds; return it (what: the condition, for the timeout message)."""

    def probe() -> dict[str, Any] | None:
        obj = get(api, resource, namespace, name)
        return obj if check(obj) else None

    return wait_until(probe, timeout=timeout, interval=0.5, what=f"{resource.kind} {name}: {what}")


def reconciles(kind: str) -> float:
    """Successful reconciles of a kind so far by the operator running in this process (tandem_reconcile_total)."""
    return REGISTRY.get_sample_value("tandem_reconcile_total", {"kind": kind, "result": "success"}) or 0.0
