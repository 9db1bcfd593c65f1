"""What each image is: its user, entrypoint, labels and tags, exactly the locked packages, and its size."""

from __future__ import annotations

import json
import re

import pytest

from images.conftest import REPO, Image, Pod, podman

LOCKS = {"operator": "operator", "trainer": "train", "server": "serve", "server-gpu": "serve-gpu"}
COMMANDS = {"operator": ["operator"], "trainer": ["train", "digits"], "server": ["serve"], "server-gpu": ["serve"]}
SIZE_LIMITS_MB = {"operator": 250, "server": 350, "server-gpu": 3000}
"""Uncompressed size targets; the trainer is as large as torch and its CUDA libraries make it, the GPU server as
onnxruntime-gpu with cuBLAS and cuDNN (about 2.5 GB, nearly all of it NVIDIA's libraries)."""

LIST_DISTRIBUTIONS = (
    "import importlib.metadata as m, json;"
    "print(json.dumps(sorted(f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))"
)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(image: str) -> set[str]:
    text = (REPO / "docker" / f"requirements-{LOCKS[image]}.txt").read_text()
    return {f"{normalized(n)}=={v}" for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, flags=re.M)}


def inspect(ref: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(podman("image", "inspect", ref).stdout)[0]
    return result


def python(image: Image, code: str) -> str:
    proc = Pod(image, entrypoint="/usr/bin/python3").run("-c", code)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def importable(image: Image, *modules: str) -> list[str]:
    """Those of `modules` the image's Python finds, in the order asked: found, not imported, so the answer is
    about what the image ships, not about what importing a module would need at run time (a GPU, a cluster)."""
    code = f"import importlib.util as u, json; print(json.dumps([m for m in {modules!r} if u.find_spec(m)]))"
    found: list[str] = json.loads(python(image, code))
    return found


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_image_runs_tandem_as_65532_with_oci_labels_and_version_and_content_tags(
    images: dict[str, Image], name: str
) -> None:
    image = images[name]
    data = inspect(image.ref)
    config = data["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["tandem"]
    assert config["Cmd"] == COMMANDS[name]
    assert "HOME=/tmp" in config["Env"] and "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == f"tandem-{name}"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    version_tag, content_tag = f"localhost/tandem-{name}:0.1.0", image.ref
    assert re.fullmatch(rf"localhost/tandem-{name}:0\.1\.0-[0-9a-f]{{12}}", content_tag)
    assert set(data["RepoTags"]) >= {version_tag, content_tag}  # type: ignore[operator]
    assert image.archive.is_file() and image.archive.name.endswith(".oci.tar")


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_image_holds_exactly_its_locked_distributions_and_tandem(images: dict[str, Image], name: str) -> None:
    installed = {normalized(d.split("==")[0]) + "==" + d.split("==")[1]
                 for d in json.loads(python(images[name], LIST_DISTRIBUTIONS))}
    assert installed - {"tandem==0.1.0"} == locked(name)
    assert "tandem==0.1.0" in installed


def test_server_image_has_onnxruntime_and_neither_torch_nor_the_kubernetes_client(images: dict[str, Image]) -> None:
    found = importable(images["server"], "onnxruntime", "numpy", "uvloop", "torch", "kubernetes", "kopf")
    assert found == ["onnxruntime", "numpy", "uvloop"]


def test_cpu_server_image_carries_no_cuda(images: dict[str, Image]) -> None:
    out = python(images["server"], (
        "import onnxruntime, os; print(onnxruntime.get_available_providers()); "
        "print(os.path.exists('/usr/local/lib/python3.11/dist-packages/nvidia'))"
    ))
    assert out.splitlines() == ["['AzureExecutionProvider', 'CPUExecutionProvider']", "False"]


def test_gpu_server_image_has_onnxruntimes_cuda_build_with_its_libraries_and_no_torch(images: dict[str, Image]) -> None:
    # The GPU nodes bring the NVIDIA driver (libcuda); the CUDA runtime, cuBLAS and cuDNN it loads are here.
    out = python(images["server-gpu"], (
        "import onnxruntime, glob, os, importlib.util as u; print(onnxruntime.get_available_providers()); "
        "print(sorted({os.path.basename(p).split('.so')[0] for p in glob.glob("
        "'/usr/local/lib/python3.11/dist-packages/nvidia/**/lib*.so*', recursive=True)})); "
        "print([m for m in ('torch', 'kubernetes', 'kopf') if u.find_spec(m)])"
    ))
    available, libraries, unwanted = out.splitlines()
    assert "CUDAExecutionProvider" in available
    for library in ("libcudart", "libcublas", "libcublasLt", "libcurand", "libcudnn"):
        assert f"'{library}'" in libraries
    assert unwanted == "[]"
    env = inspect(images["server-gpu"].ref)["Config"]["Env"]  # type: ignore[index]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


def test_operator_image_has_kopf_and_the_client_and_no_ml_runtime(images: dict[str, Image]) -> None:
    found = importable(images["operator"], "kopf", "kubernetes", "torch", "onnxruntime", "numpy")
    assert found == ["kopf", "kubernetes"]


def test_trainer_image_has_torch_built_for_cuda_with_its_cuda_libraries(images: dict[str, Image]) -> None:
    # The GPU nodes bring the NVIDIA driver; everything above it (CUDA runtime, cuBLAS, cuDNN, NCCL) is here.
    out = python(images["trainer"], (
        "import torch, glob, os; print(torch.version.cuda); "
        "print(sorted({os.path.basename(p).split('.so')[0] for p in glob.glob("
        "'/usr/local/lib/python3.11/dist-packages/nvidia/**/lib*.so*', recursive=True)}))"
    ))
    cuda, libraries = out.splitlines()
    assert re.fullmatch(r"\d+\.\d+", cuda)
    for library in ("libcudart", "libcublas", "libcudnn", "libnccl"):
        assert library in libraries


@pytest.mark.parametrize("name", sorted(SIZE_LIMITS_MB))
def test_image_stays_under_its_size_target(images: dict[str, Image], name: str) -> None:
    size = inspect(images[name].ref)["Size"]
    assert isinstance(size, int)
    assert size < SIZE_LIMITS_MB[name] * 1_000_000, f"{name}: {size / 1e6:.0f} MB"
