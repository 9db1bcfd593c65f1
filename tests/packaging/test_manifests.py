"""manifests/ and examples/: the operator base is the chart's render, kustomize renders a complete install,
samples are valid resources."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pkgtools import MANIFESTS, REPO, find, load_yaml_docs, render, run

from tandem.api.computepool import ComputePoolSpec
from tandem.api.inferenceservice import InferenceServiceSpec
from tandem.api.trainingjob import TrainingJobSpec

SPECS: dict[str, Any] = {
    "ComputePool": ComputePoolSpec,
    "TrainingJob": TrainingJobSpec,
    "InferenceService": InferenceServiceSpec,
}
SAMPLE_FILES = sorted((MANIFESTS / "samples").glob("*.yaml"))
EXAMPLE_FILES = sorted((REPO / "examples" / "digits").glob("*.yaml"))


def kustomize(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(run([kubectl, "kustomize", directory]).stdout) if doc]


def test_every_file_a_kustomization_names_exists() -> None:
    for kustomization in MANIFESTS.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        names = list(spec.get("resources") or []) + [p["path"] for p in spec.get("patches") or [] if "path" in p]
        for name in names:
            assert (kustomization.parent / name).exists(), f"{kustomization}: {name} does not exist"


def test_complete_install_renders_crds_namespace_rbac_operator_and_service(kubectl: Path) -> None:
    objects = kustomize(kubectl, MANIFESTS)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["CustomResourceDefinition"] * 3 + [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"])
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Deployment", "Service"):
            assert obj["metadata"]["namespace"] == "tandem-system"
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "tandem-system"


def test_example_overlay_renders_with_its_image_replicas_and_lease_role(kubectl: Path) -> None:
    objects = kustomize(kubectl, MANIFESTS / "overlays" / "example")
    (deployment,) = find(objects, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "registry.example.com/platform/tandem-operator:0.1.0"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env["TANDEM_LEADER_ELECTION"] == "true"
    assert env["TANDEM_NAMESPACES"] == "team-a,team-b"
    assert env["POD_NAME"] is None  # still the downward API entry of the base
    assert len(find(objects, "Role", "tandem-leader-election")) == 1


def test_operator_base_is_what_hack_manifests_renders_from_the_chart(helm: Path) -> None:
    """A chart change without `hack/manifests.sh` fails here, as a model change without `tandem crds` fails."""
    run([REPO / "hack" / "manifests.sh", "--check"], env={**os.environ, "TANDEM_BIN_DIR": str(helm.parent)})


def test_kustomize_operator_container_matches_the_chart(helm: Path) -> None:
    (base,) = load_yaml_docs(MANIFESTS / "operator" / "deployment.yaml")
    (chart,) = find(render(helm, {"fullnameOverride": "tandem"}), "Deployment")
    base_pod, chart_pod = base["spec"]["template"]["spec"], chart["spec"]["template"]["spec"]
    assert base_pod["securityContext"] == chart_pod["securityContext"]
    assert base_pod["volumes"] == chart_pod["volumes"]
    for key in ("env", "ports", "livenessProbe", "readinessProbe", "securityContext", "resources", "args", "image"):
        assert base_pod["containers"][0][key] == chart_pod["containers"][0][key], key


@pytest.mark.parametrize("path", SAMPLE_FILES + EXAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sample_specs_parse_into_the_api_models(path: Path) -> None:
    for obj in load_yaml_docs(path):
        if obj["kind"] in SPECS:
            assert obj["apiVersion"] == "tandem.dev/v1alpha1"
            SPECS[obj["kind"]].model_validate(obj["spec"])


def test_samples_cover_every_kind() -> None:
    kinds = {obj["kind"] for path in SAMPLE_FILES for obj in load_yaml_docs(path)}
    assert set(SPECS) <= kinds


def test_digits_example_trains_on_two_workers_and_serves_from_the_training_job() -> None:
    training = {o["kind"]: o for o in load_yaml_docs(REPO / "examples" / "digits" / "training.yaml")}
    serving = {o["kind"]: o for o in load_yaml_docs(REPO / "examples" / "digits" / "serving.yaml")}
    assert training["TrainingJob"]["spec"]["workers"] == 2
    assert training["TrainingJob"]["spec"]["model"]["output"].startswith("pvc://models/")
    assert "PersistentVolumeClaim" in training
    assert serving["InferenceService"]["metadata"]["name"] == "digits"
    assert serving["InferenceService"]["spec"]["model"] == {"fromTrainingJob": {"name": "digits"}}
