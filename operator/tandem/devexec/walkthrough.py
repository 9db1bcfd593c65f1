"""`python -m tandem.devexec.walkthrough`: the demo's end-to-end run of the digits example, with a summary.

Expects a cluster with Tandem's CRDs, the local-gpu / local-cpu pools, the executor and the operator
running (hack/demo.sh sets all of that up). Prints progress while it waits, then the summary: pools, where
each pod ran, held-out accuracy through V2, serving latency, and the GPU and core seconds from status.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
import numpy as np
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from tandem.api.resources import COMPUTE_POOL, GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION, Resource
from tandem.devexec.digits import accuracy, create_model_volume, held_out, predict, serving_spec, training_spec
from tandem.devexec.endpoints import ServiceEndpoints
from tandem.devexec.kubeapi import KubeApi

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


class Client:
    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def path(self, resource: Resource, name: str = "") -> str:
        ns = f"/namespaces/{self.namespace}" if resource.namespaced else ""
        return f"/apis/{GROUP}/{VERSION}{ns}/{resource.plural}" + (f"/{name}" if name else "")

    def create(self, resource: Resource, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": resource.kind, "metadata": {"name": name}, "spec": spec}
        try:
            self.api.call("POST", self.path(resource), body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.api.call(
                "PATCH", self.path(resource, name), {"spec": spec}, content_type="application/merge-patch+json"
            )

    def get(self, resource: Resource, name: str) -> dict[str, Any]:
        return self.api.call("GET", self.path(resource, name))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        found = self.api.call("GET", f"/api/v1/namespaces/{self.namespace}/pods", query=[("labelSelector", selector)])
        return list(found.get("items") or [])

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
    """Train the digits example on the local GPU pool, serve it on the local CPU pool, and summarise."""
    api = KubeApi(k8s_config.new_client_from_config(config_file=kubeconfig))
    try:
        api.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    client = Client(api, namespace)
    create_model_volume(api, namespace)
    pixels, labels = held_out()

    say(f"TrainingJob digits: {workers} workers, `tandem train digits` -> pvc://models/digits")
    client.create(TRAINING_JOB, "digits", training_spec(workers=workers))
    trained = client.wait(
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
    client.create(INFERENCE_SERVICE, "digits", serving_spec("digits"))
    served = client.wait(INFERENCE_SERVICE, "digits", ready, "Ready", timeout)
    endpoints = ServiceEndpoints(api, namespace, "digits").start()
    address = endpoints.wait(60)[0]
    say(f"  ready at {address} (a pod address on loopback)")

    prediction = predict(address, "digits", pixels)
    served_accuracy = accuracy(prediction, labels)
    say(f"measuring latency over {count} one-digit requests")
    latencies = []
    for i in range(count):
        picked = endpoints.pick() or address
        latencies.append(predict(picked, "digits", pixels[i % len(pixels) : i % len(pixels) + 1]).seconds)
    endpoints.close()
    p50, p99 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 99))

    print("\n=== Tandem demo summary ===")
    pools = api.call("GET", f"/apis/{GROUP}/{VERSION}/{COMPUTE_POOL.plural}")
    for pool in pools.get("items") or []:
        status = pool.get("status") or {}
        selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["nodeSelector"].items())
        print(
            f"pool {pool['metadata']['name']:<10} nodes {status.get('readyNodes', 0)}/{status.get('nodes', 0)} "
            f"accelerators {(status.get('allocatable') or {}).get('accelerators', 0):<3} selector {selector}"
        )
    for pod in client.pods("app.kubernetes.io/managed-by=tandem"):
        print(
            f"pod  {pod['metadata']['name']:<32} node {pod['spec'].get('nodeName', '-'):<12} "
            f"ip {(pod.get('status') or {}).get('podIP', '-'):<14} phase {(pod.get('status') or {}).get('phase')}"
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
        f"over {count} requests (one digit each, new connection each)"
    )
    if served_accuracy < 0.9:
        sys.exit(1)


if __name__ == "__main__":
    main()
