"""Security: every pod Tandem creates or ships runs restricted, and credentials never leak.

Expected outcomes: the trainer Job, the serving Deployment, the profile Job (as the operator creates them on
a real API server) and the chart's operator Deployment run every container non-root, with a read-only root
filesystem, no privilege escalation, all capabilities dropped and the RuntimeDefault seccomp profile; a
storage credential given as a Secret reference reaches the pods only as that reference (valueFrom), and the
Secret's value appears in no operator log line and no event.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client as k8s

from support.cluster import wait_until
from support.tandem import REPO, artifact_message, body, create
from tandem.api.resources import INFERENCE_SERVICE, TRAINING_JOB

SHA = "b" * 64
CREDENTIAL_ENV = [
    {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "storage", "key": "secret-key"}}}
]


def restricted_violations(pod_spec: dict[str, Any], where: str) -> list[str]:
    """What keeps a pod spec (camelCase dict) from the restricted profile with a read-only root fs."""
    pod = pod_spec.get("securityContext") or {}
    problems = []
    for container in (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or []):
        ctx = container.get("securityContext") or {}
        name = f"{where}/{container['name']}"

        def effective(key: str, ctx: dict[str, Any] = ctx) -> Any:
            return ctx.get(key, pod.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot not true")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runs as uid 0")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem writable")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation allowed")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problems.append(f"{name}: capabilities {caps}")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccomp {effective('seccompProfile')}")
    return problems


def test_the_checker_catches_each_violation() -> None:
    """Expected: the checker itself flags a root, writable, escalating, capable, unconfined container."""
    assert len(restricted_violations({"containers": [{"name": "c", "securityContext": {"runAsUser": 0}}]}, "x")) == 6


def test_chart_operator_deployment_is_restricted() -> None:
    """Expected: `helm template` of charts/tandem renders an operator Deployment whose pods are restricted."""
    helm = Path(os.environ.get("TANDEM_BIN_DIR") or next(Path.home().glob(".cache/tandem/bin/k8s-*"))) / "helm"
    if not helm.exists():
        pytest.skip("helm not built")
    rendered = subprocess.run(
        [str(helm), "template", "tandem", str(REPO / "charts" / "tandem")], capture_output=True, text=True, check=True
    ).stdout
    deployments = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "Deployment"]
    assert deployments
    for deployment in deployments:
        assert restricted_violations(deployment["spec"]["template"]["spec"], deployment["metadata"]["name"]) == []


def _pod_template(obj: Any, api: k8s.ApiClient) -> dict[str, Any]:
    serialized: dict[str, Any] = api.sanitize_for_serialization(obj.spec.template.spec)
    return serialized


@pytest.mark.cluster
def test_workloads_are_restricted_and_credentials_stay_references(
    tandem_api: k8s.ApiClient, namespace: str, operator: KopfRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """Expected: the Job, Deployment and profile Jobs the operator creates are restricted; the credential
    env var is a secretKeyRef in every pod template that has it, never a literal value; the planted secret
    value is in no log record and no event of the namespace."""
    planted = f"planted-{uuid.uuid4().hex}"
    core = k8s.CoreV1Api(tandem_api)
    core.create_namespaced_secret(
        namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="storage"), string_data={"secret-key": planted})
    )
    annotations = {
        "tandem.dev/fake-duration": "60s",
        "tandem.dev/fake-termination-message": artifact_message("s3://m/model.onnx", SHA),
    }
    training = {
        "model": {"output": "s3://m"},
        "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
        "env": CREDENTIAL_ENV,
        "podMetadata": {"annotations": annotations},
    }
    create(tandem_api, TRAINING_JOB, namespace, body(TRAINING_JOB, "secure", training))
    serving = {
        "model": {"uri": "s3://m/model.onnx", "sha256": SHA},
        "env": CREDENTIAL_ENV,
        "resources": {"cpu": "100m", "memory": "128Mi"},
    }
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "secure", serving))
    auto = {
        **serving,
        "placement": "auto",
        "slo": {"p99LatencyMs": 50, "targetRequestsPerSecond": 10},
        "resources": {"cpu": "1", "memory": "1Gi", "gpus": 0},
    }
    create(tandem_api, INFERENCE_SERVICE, namespace, body(INFERENCE_SERVICE, "auto", auto))

    batch, apps = k8s.BatchV1Api(tandem_api), k8s.AppsV1Api(tandem_api)
    jobs = wait_until(
        lambda: (lambda items: items if len(items) >= 2 else None)(batch.list_namespaced_job(namespace).items),
        timeout=90,
        what="training and profile Jobs",
    )
    deployments = wait_until(lambda: apps.list_namespaced_deployment(namespace).items, timeout=90, what="Deployment")
    templates = {f"Job/{j.metadata.name}": _pod_template(j, tandem_api) for j in jobs}
    templates.update({f"Deployment/{d.metadata.name}": _pod_template(d, tandem_api) for d in deployments})
    assert any("profile" in name for name in templates) or len(jobs) >= 2, sorted(templates)

    problems = [p for where, spec in templates.items() for p in restricted_violations(spec, where)]
    assert problems == []
    with_credential = 0
    for where, spec in templates.items():
        for container in spec.get("containers") or []:
            for env in container.get("env") or []:
                assert planted not in str(env), where
                if env["name"] == "AWS_SECRET_ACCESS_KEY":
                    with_credential += 1
                    assert "value" not in env and env["valueFrom"]["secretKeyRef"]["name"] == "storage", where
    assert with_credential >= 2, sorted(templates)

    events = core.list_namespaced_event(namespace).items
    assert events
    assert all(planted not in (event.message or "") for event in events)
    assert all(planted not in record.getMessage() for record in caplog.records)
    assert planted not in caplog.text
