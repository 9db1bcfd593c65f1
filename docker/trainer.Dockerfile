# syntax=docker/dockerfile:1
# Training workers: `tandem train digits` (extra tandem[train]: torch, onnx, onnxruntime). PyPI ships torch for Linux x86_64 only with CUDA, so this image carries the CUDA wheels (torch 1.1 GB + nvidia-* 3 GB installed): about 5 GB. Right for GPU pools; the NVIDIA driver comes from the node.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t tandem-trainer:0.1.0 .
# Dependencies are pinned with hashes in docker/requirements-train.txt (docker/lock.sh writes them).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tandem
# Dependencies first, so a code change reuses this (large) layer.
COPY docker/requirements-train.txt /tmp/requirements.txt
RUN /opt/tandem/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/tandem/bin/pip install --no-cache-dir --no-deps . \
 && /opt/tandem/bin/python -m compileall -q /opt/tandem/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tandem-trainer" \
      org.opencontainers.image.source="https://github.com/tandem-dev/tandem" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tandem /opt/tandem
# Read-only root filesystem: no bytecode written at run time; HOME and caches on the pod's /tmp emptyDir.
ENV PATH=/opt/tandem/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
EXPOSE 29500
ENTRYPOINT ["tandem"]
CMD ["train", "digits"]
