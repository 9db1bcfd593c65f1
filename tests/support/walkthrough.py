"""`python -m support.walkthrough`: the demo's run of the digits example on the real nodes, with a summary.

Expects the local cluster with real nodes and Tandem installed by its chart (hack/demo.sh does both). Does
what the end-to-end test does, in the same way (support.digits), and prints progress while it waits, then
the summary: pools, where each pod ran, held-out accuracy through V2 via the Service, serving latency, and
the GPU and core seconds from status.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from support.digits import accuracy, bound_directory, held_out, model_claim, predict, serving_spec, training_spec
from tandem.api.resources import COMPUTE_POOL, GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION, Resource

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[walkthrough {time.monotonic() - STARTED:5.1f}s] {message}", flush=True)


def created(call: Callable[[], Any]) -> None:
    """Create something; one that already exists (a re-run) is kept."""
    try:
        call()
    except ApiException as exc:
        if exc.status != 409:
            raise


class Demo:
    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.namespace = namespace

    def apply(self, resource: Resource, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": resource.kind, "metadata": {"name": name}, "spec": spec}
        created(
            lambda: self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, resource.plural, body)
        )

    def get(self, resource: Resource, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, resource.plural, name
        )
        return found

    def wait(
        self, resource: Resource, name: str, done: Callable[[dict[str, Any]], bool], what: str, timeout: float
    ) -> dict[str, Any]:
        """Poll until done, printing the phase whenever it changes."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            obj = self.get(resource, name)
            status = obj.get("status") or {}
            shown = (status.get("phase"), (status.get("workers") or {}).get("active"), status.get("readyReplicas"))
            if shown != last:
                say(f"  {resource.kind}/{name}: phase={shown[0]} active={shown[1]} ready={shown[2]}")
                last = shown
            if done(obj):
                return obj
            if time.monotonic() > deadline:
                raise TimeoutError(f"{resource.kind} {name}: not {what} after {timeout:.0f}s: {status}")
            time.sleep(1.0)

    def model_volume(self) -> None:
        """The claim `models`, bound by the cluster's default StorageClass to a directory both nodes mount."""
        created(lambda: self.core.create_namespaced_persistent_volume_claim(self.namespace, model_claim()))
        say(f"  claim models bound to {bound_directory(self.core.api_client, self.namespace)}")

    def service_address(self, name: str) -> str:
        service = self.core.read_namespaced_service(name, self.namespace)
        port = next(p.port for p in service.spec.ports if p.name == "http")
        return f"{service.spec.cluster_ip}:{port}"


def ready(obj: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


@click.command()
@click.option("--kubeconfig", envvar="KUBECONFIG", required=True)
@click.option("--namespace", default="tandem-demo", show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--requests", "count", default=500, show_default=True, help="Requests for the latency figures.")
@click.option("--timeout", default=900.0, show_default=True)
def main(kubeconfig: str, namespace: str, workers: int, count: int, timeout: float) -> None:
    """Train the digits example on the real GPU node, serve it on the real CPU node, and summarise."""
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    demo = Demo(api, namespace)
    created(lambda: demo.core.create_namespace({"metadata": {"name": namespace}}))
    demo.model_volume()
    pixels, labels = held_out()

    say(f"TrainingJob digits: {workers} workers, `tandem train digits` -> pvc://models/digits")
    demo.apply(TRAINING_JOB, "digits", training_spec(workers=workers))
    trained = demo.wait(
        TRAINING_JOB,
        "digits",
        lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        "done",
        timeout,
    )
    tj = trained["status"]
    if tj.get("phase") != "Succeeded":
        say(f"training failed: {tj}")
        sys.exit(1)
    model = tj["model"]
    say(f"  model {model['uri']} sha256 {model['sha256'][:16]}... accuracy {model['metrics']['accuracy']:.4f}")

    say("InferenceService digits: fromTrainingJob digits")
    demo.apply(INFERENCE_SERVICE, "digits", serving_spec("digits"))
    served = demo.wait(INFERENCE_SERVICE, "digits", ready, "Ready", timeout)
    address = demo.service_address("digits")
    say(f"  ready; Service digits at {address} (ClusterIP, through kube-proxy)")

    prediction = predict(address, "digits", pixels)
    served_accuracy = accuracy(prediction, labels)
    say(f"measuring latency over {count} one-digit requests through the Service")
    latencies = [
        predict(address, "digits", pixels[i % len(pixels) : i % len(pixels) + 1]).seconds for i in range(count)
    ]
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))

    print("\n=== Tandem demo summary ===")
    pools = demo.custom.list_cluster_custom_object(GROUP, VERSION, COMPUTE_POOL.plural)
    for pool in pools.get("items") or []:
        status = pool.get("status") or {}
        selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["nodeSelector"].items())
        print(
            f"pool {pool['metadata']['name']:<10} nodes {status.get('readyNodes', 0)}/{status.get('nodes', 0)} "
            f"accelerators {(status.get('allocatable') or {}).get('accelerators', 0):<3} selector {selector}"
        )
    for pod in demo.core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/managed-by=tandem").items:
        container = (pod.spec.containers or [None])[0]
        print(
            f"pod  {pod.metadata.name:<32} node {pod.spec.node_name or '-':<11} ip {pod.status.pod_ip or '-':<11} "
            f"phase {pod.status.phase:<9} image {container.image if container else '-'}"
        )
    usage = tj.get("usage") or {}
    print(
        f"training   workers {tj['workers']['succeeded']} succeeded; gpuSeconds {usage.get('gpuSeconds', 0):.1f}, "
        f"coreSeconds {usage.get('coreSeconds', 0):.1f}, estimated cost {usage.get('estimatedCost', 0):.4f}"
    )
    print(f"model      {model['uri']} sha256 {model['sha256'][:16]}... ({model.get('sizeBytes', 0)} bytes)")
    print(
        f"accuracy   trainer {model['metrics']['accuracy']:.4f}; served over V2 (tritonclient) {served_accuracy:.4f} "
        f"on {len(labels)} held-out digits"
    )
    print(
        f"serving    pool {served['status']['placement']['pool']}; latency p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"over {count} requests (one digit each, a new connection each, through the Service)"
    )
    if served_accuracy < 0.9:
        sys.exit(1)


if __name__ == "__main__":
    main()
