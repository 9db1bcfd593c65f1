"""A service switched from fixed to autoscaled replicas keeps its replicas, on the real API server's apply.

Expected outcome: every version of the Deployment the API server stores from the switch on, up to the one the
operator applies for the new spec, counts at least the fixed replicas it had; server-side apply never drops
spec.replicas to the Deployment's default of 1 while the new HPA has yet to act (kube-controller-manager's
HPA controller runs here, so the count it then keeps is its own).
"""

from __future__ import annotations

from typing import Any

import pytest
from kopf.testing import KopfRunner
from kubernetes import client as k8s
from kubernetes import watch

from support.cluster import wait_until
from support.tandem import body, create, patch_spec, wait_for
from tandem.api.resources import INFERENCE_SERVICE
from tandem.controller.reconcile import CHILDREN_HASH_ANNOTATION

SPEC: dict[str, Any] = {
    "model": {"uri": "s3://models/handover/model.onnx"},
    "resources": {"cpu": "50m", "memory": "64Mi"},
    "replicas": {"min": 3, "max": 3},
}


def _digest(deployment: k8s.V1Deployment) -> str | None:
    return (deployment.metadata.annotations or {}).get(CHILDREN_HASH_ANNOTATION)


def test_switching_from_fixed_to_autoscaled_replicas_never_drops_below_the_fixed_count(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner
) -> None:
    apps = k8s.AppsV1Api(tandem_api)
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "handover", SPEC))
    wait_for(
        tandem_api, INFERENCE_SERVICE, namespace, "handover",
        lambda o: (o.get("status") or {}).get("observedGeneration") == 1, "the fixed spec reconciled",
    )
    fixed = apps.read_namespaced_deployment("handover", namespace)
    assert fixed.spec.replicas == 3

    patch_spec(tandem_api, INFERENCE_SERVICE, namespace, "handover", {"replicas": {"min": 3, "max": 6}})
    seen: list[int] = []
    stream = watch.Watch().stream(
        apps.list_namespaced_deployment, namespace, field_selector="metadata.name=handover",
        resource_version=fixed.metadata.resource_version, timeout_seconds=90,
    )
    for event in stream:
        deployment: k8s.V1Deployment = event["object"]
        seen.append(deployment.spec.replicas)
        if _digest(deployment) != _digest(fixed):
            break  # the operator's apply for the autoscaled spec: where the count would have fallen
    else:
        pytest.fail(f"the operator applied no Deployment for the autoscaled spec within 90s; saw {seen}")
    assert min(seen) >= 3, seen
    autoscaling = k8s.AutoscalingV2Api(tandem_api)
    # The autoscaler is applied after the Deployment: it may not exist yet when the Deployment's change is seen.
    hpas = wait_until(
        lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items, timeout=60, what="the HPA"
    )
    assert [(hpa.metadata.name, hpa.spec.min_replicas, hpa.spec.max_replicas) for hpa in hpas] == [("handover", 3, 6)]
