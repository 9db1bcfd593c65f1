# syntax=docker/dockerfile:1
# The operator: `tandem operator` (base package: kopf, kubernetes client; no torch, no onnxruntime). ~200 MB.
# Build from the repository root:  docker build -f docker/operator.Dockerfile -t tandem-operator:0.1.0 .
# Dependencies are pinned with hashes in docker/requirements-operator.txt (docker/lock.sh writes them).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tandem
# Dependencies first, so a code change reuses this (large) layer.
COPY docker/requirements-operator.txt /tmp/requirements.txt
RUN /opt/tandem/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/tandem/bin/pip install --no-cache-dir --no-deps . \
 && /opt/tandem/bin/python -m compileall -q /opt/tandem/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tandem-operator" \
      org.opencontainers.image.source="https://github.com/tandem-dev/tandem" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/tandem /opt/tandem
# Read-only root filesystem: no bytecode written at run time; HOME and caches on the pod's /tmp emptyDir.
ENV PATH=/opt/tandem/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
EXPOSE 8000 8080
ENTRYPOINT ["tandem"]
CMD ["operator"]
