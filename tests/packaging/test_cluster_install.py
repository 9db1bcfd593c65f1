"""The chart and manifests against the local control plane (hack/cluster.sh), and the chart's RBAC proven
sufficient by running the operator with its ServiceAccount's token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pkgtools import CHART, MANIFESTS, REPO, run, set_args

from support.cluster import stop_process, wait_until

pytestmark = pytest.mark.cluster


@dataclass
class Release:
    name: str
    namespace: str
    gpu_pool: str
    cpu_pool: str
    install_output: str


def kubectl_json(kubectl: Path, *args: str, kubeconfig: Path | None = None) -> Any:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig)) if kubeconfig else None
    return json.loads(run([kubectl, *args, "-o", "json"], env=env).stdout)


@pytest.fixture(scope="module")
def release(cluster: Any, helm: Path, kubectl: Path) -> Iterator[Release]:
    """The chart installed in a fresh namespace, with its own uniquely named pools."""
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"tandem-{suffix}", f"tandem-pkg-{suffix}"
    gpu, cpu = f"pkg-{suffix}-gpu", f"pkg-{suffix}-cpu"
    values = yaml.safe_load((CHART / "values.yaml").read_text())["computePools"]
    pools = {"gpu": {"enabled": False}, "cpu": {"enabled": False},
             gpu: values["gpu"], cpu: values["cpu"]}
    proc = run([helm, "install", name, CHART, "--namespace", namespace, "--create-namespace", "--wait",
                "--timeout", "3m", *set_args({"computePools": pools}),
                # kwok runs a bare pod forever unless told to finish; real clusters need no annotation
                "--set-string", "tests.podAnnotations.tandem\\.dev/fake-duration=1s"])
    try:
        yield Release(name, namespace, gpu, cpu, proc.stdout)
    finally:
        run([helm, "uninstall", name, "--namespace", namespace, "--wait", "--timeout", "2m"], check=False)
        run([kubectl, "delete", "namespace", namespace, "--wait=false"], check=False)


def test_helm_install_creates_the_operator_its_rbac_and_the_pools(release: Release, kubectl: Path) -> None:
    ns = ["--namespace", release.namespace]
    deployment = kubectl_json(kubectl, "get", "deployment", release.name, *ns)
    assert deployment["status"].get("readyReplicas") == 1
    kubectl_json(kubectl, "get", "serviceaccount", release.name, *ns)
    kubectl_json(kubectl, "get", "service", f"{release.name}-metrics", *ns)
    kubectl_json(kubectl, "get", "clusterrole", release.name)
    kubectl_json(kubectl, "get", "clusterrolebinding", release.name)
    pools = {p["metadata"]["name"] for p in kubectl_json(kubectl, "get", "computepools")["items"]}
    assert {release.gpu_pool, release.cpu_pool} <= pools
    assert "kubectl get computepools" in release.install_output  # NOTES.txt


def test_helm_test_hook_passes(release: Release, helm: Path) -> None:
    proc = run([helm, "test", release.name, "--namespace", release.namespace, "--timeout", "2m"])
    assert "Succeeded" in proc.stdout


def test_kustomize_install_passes_server_side_dry_run(release: Release, kubectl: Path) -> None:
    created = run([kubectl, "create", "namespace", "tandem-system"], check=False).returncode == 0
    try:
        proc = run([kubectl, "apply", "-k", MANIFESTS, "--dry-run=server", "--server-side", "--force-conflicts"])
        assert "deployment.apps/tandem serverside-applied (server dry run)" in proc.stdout
    finally:
        if created:
            run([kubectl, "delete", "namespace", "tandem-system", "--wait=false"], check=False)


@pytest.mark.parametrize("path", sorted((MANIFESTS / "samples").glob("*.yaml"))
                         + sorted((REPO / "examples" / "digits").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_applies_with_server_side_dry_run(release: Release, kubectl: Path, namespace: str,
                                                       path: Path) -> None:
    if path.name == "kustomization.yaml":
        run([kubectl, "apply", "-k", path.parent, "--dry-run=server", "--namespace", namespace])
    else:
        run([kubectl, "apply", "-f", path, "--dry-run=server", "--namespace", namespace])


def service_account_kubeconfig(kubectl: Path, admin: Path, release: Release, target: Path) -> Path:
    """A kubeconfig that authenticates with a token of the chart's ServiceAccount, not the admin's certificate."""
    token = run([kubectl, "create", "token", release.name, "--namespace", release.namespace,
                 "--duration", "1h"]).stdout.strip()
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]["cluster"]
    target.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "tandem", "user": {"token": token}}],
        # kopf posts the events of cluster-scoped ComputePools in the context's namespace, as in the pod
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "tandem",
                                                "namespace": release.namespace}}],
    }))
    return target


def rbac_denials(log: str) -> list[str]:
    """Log lines where the API server refused the ServiceAccount ("... is forbidden: User
    "system:serviceaccount:..." cannot ..."), not other 403s such as a namespace being terminated."""
    return [line for line in log.splitlines() if "system:serviceaccount:" in line and " cannot " in line]


def phase(kubectl: Path, kind: str, name: str, namespace: str) -> str | None:
    status = kubectl_json(kubectl, "get", kind, name, "--namespace", namespace).get("status") or {}
    value = status.get("phase")
    return str(value) if value else None


def reconcile_with_service_account(
    kubectl: Path, admin: Path, account: Release, pools: Release, namespace: str, watch: str, tmp_path: Path
) -> None:
    """Run `tandem operator` locally with a token of `account`'s ServiceAccount; a ComputePool, a TrainingJob
    and an InferenceService must reach their status, and the operator log must show no refusal."""
    kubeconfig = service_account_kubeconfig(kubectl, admin, account, tmp_path / "sa.kubeconfig")
    sa_env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    can_i = run([kubectl, "auth", "can-i", "list", "secrets", "--all-namespaces"], check=False, env=sa_env)
    assert can_i.stdout.strip() == "no", "the token must not be an admin's"

    log = (tmp_path / "operator.log").open("w")
    env = dict(sa_env, TANDEM_NAMESPACES=watch, POD_NAMESPACE=account.namespace, POD_NAME="local-operator")
    operator = subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )
    try:
        wait_until(
            lambda: (kubectl_json(kubectl, "get", "computepool", pools.gpu_pool).get("status") or {}).get("nodes"),
            timeout=90, what=f"ComputePool {pools.gpu_pool} status.nodes",
        )
        training = {
            "apiVersion": "tandem.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "digits"},
            "spec": {"pool": pools.gpu_pool, "workers": 1, "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"},
                     "model": {"output": "file:///tmp/models/digits"}},
        }
        serving = {
            "apiVersion": "tandem.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "digits"},
            "spec": {"model": {"uri": "file:///tmp/models/digits/model.onnx"}, "pool": pools.cpu_pool,
                     # replicas and resources spelled out (before 20ec556 the CRD's CEL rules needed them)
                     "replicas": {"min": 1, "max": 1}, "resources": {"cpu": "500m", "memory": "256Mi"}},
        }
        manifest = tmp_path / "resources.yaml"
        manifest.write_text(yaml.safe_dump_all([training, serving]))
        run([kubectl, "apply", "-f", manifest, "--namespace", namespace])
        wait_until(lambda: phase(kubectl, "trainingjob", "digits", namespace) in ("Running", "Succeeded", "Failed"),
                   timeout=120, what="TrainingJob digits to run")
        job = kubectl_json(kubectl, "get", "trainingjob", "digits", "--namespace", namespace)["status"]
        assert job["pool"] == pools.gpu_pool
        kubectl_json(kubectl, "get", "job", job["jobName"], "--namespace", namespace)
        wait_until(lambda: phase(kubectl, "inferenceservice", "digits", namespace) == "Ready",
                   timeout=120, what="InferenceService digits to be Ready")
        run([kubectl, "wait", "--for=condition=Ready", "inferenceservice/digits", "--namespace", namespace,
             "--timeout=10s"])
        for kind in ("deployment", "service", "poddisruptionbudget"):
            kubectl_json(kubectl, "get", kind, "digits", "--namespace", namespace)
    finally:
        stop_process(operator)
        log.close()
    text = (tmp_path / "operator.log").read_text()
    assert not rbac_denials(text), "the operator was refused:\n" + "\n".join(rbac_denials(text)[:20])


def test_operator_with_the_chart_service_account_reconciles_pools_jobs_and_services(
    release: Release, kubectl: Path, cluster: Any, namespace: str, tmp_path: Path
) -> None:
    reconcile_with_service_account(kubectl, Path(cluster.kubeconfig), release, release, namespace, "", tmp_path)


def test_namespaced_install_rights_suffice_for_its_watched_namespace(
    release: Release, helm: Path, kubectl: Path, cluster: Any, namespace: str, tmp_path: Path
) -> None:
    """A second release with watchNamespaces: Roles in the watched namespace, a ClusterRole for pools only."""
    suffix = uuid.uuid4().hex[:6]
    scoped = Release(f"tandem-ns-{suffix}", f"tandem-ns-{suffix}", release.gpu_pool, release.cpu_pool, "")
    run([helm, "install", scoped.name, CHART, "--namespace", scoped.namespace, "--create-namespace",
         *set_args({"watchNamespaces": [namespace], "tests": {"enabled": False},
                    "computePools": {"gpu": {"enabled": False}, "cpu": {"enabled": False}}})])
    try:
        reconcile_with_service_account(
            kubectl, Path(cluster.kubeconfig), scoped, release, namespace, namespace, tmp_path
        )
    finally:
        run([helm, "uninstall", scoped.name, "--namespace", scoped.namespace, "--wait", "--timeout", "2m"],
            check=False)
        run([kubectl, "delete", "namespace", scoped.namespace, "--wait=false"], check=False)


def test_leader_election_role_lets_the_operator_take_and_renew_its_lease(
    helm: Path, kubectl: Path, cluster: Any, release: Release, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:6]
    elected = Release(f"tandem-le-{suffix}", f"tandem-le-{suffix}", "", "", "")
    run([helm, "install", elected.name, CHART, "--namespace", elected.namespace, "--create-namespace",
         *set_args({"leaderElection": {"enabled": True}, "tests": {"enabled": False},
                    "computePools": {"gpu": {"enabled": False}, "cpu": {"enabled": False}}})])
    kubeconfig = service_account_kubeconfig(kubectl, Path(cluster.kubeconfig), elected, tmp_path / "sa.kubeconfig")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), POD_NAMESPACE=elected.namespace, POD_NAME="local",
               TANDEM_LEASE_NAME=elected.name, TANDEM_LEADER_ELECTION="true",
               # watch only its own (empty) namespace: other tests' leftovers are none of its business
               TANDEM_NAMESPACES=elected.namespace)
    log = (tmp_path / "operator.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
    )
    try:
        def renewed() -> bool:
            lease = run([kubectl, "get", "lease", elected.name, "-n", elected.namespace, "-o", "json"], check=False)
            spec = json.loads(lease.stdout).get("spec", {}) if lease.returncode == 0 else {}
            return str(spec.get("holderIdentity", "")).startswith("local-") and spec.get("renewTime") != spec.get(
                "acquireTime")

        wait_until(renewed, timeout=60, what=f"Lease {elected.name} taken and renewed")
        assert operator.poll() is None, "the operator exited: " + (tmp_path / "operator.log").read_text()[-2000:]
    finally:
        stop_process(operator)
        log.close()
        run([helm, "uninstall", elected.name, "--namespace", elected.namespace, "--wait", "--timeout", "2m"],
            check=False)
        run([kubectl, "delete", "namespace", elected.namespace, "--wait=false"], check=False)
    text = (tmp_path / "operator.log").read_text()
    assert not rbac_denials(text), "\n".join(rbac_denials(text)[:20])


def test_denial_detector_sees_an_operator_without_rights(
    kubectl: Path, cluster: Any, namespace: str, tmp_path: Path
) -> None:
    """Negative control for rbac_denials: the namespace's default ServiceAccount has no rights at all."""
    nobody = Release("default", namespace, "", "", "")
    kubeconfig = service_account_kubeconfig(kubectl, Path(cluster.kubeconfig), nobody, tmp_path / "sa.kubeconfig")
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "tandem", "operator", "--metrics-port", "0", "--health-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=dict(os.environ, KUBECONFIG=str(kubeconfig), TANDEM_NAMESPACES=""),
        )
        try:
            wait_until(lambda: rbac_denials(log_path.read_text()), timeout=60, what="an RBAC denial in the log")
        finally:
            stop_process(operator)
