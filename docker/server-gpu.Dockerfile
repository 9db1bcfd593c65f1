# syntax=docker/dockerfile:1
# The model server for GPU nodes: `tandem serve` with tandem[serve-gpu]: onnxruntime-gpu (CUDA 13) and the NVIDIA
# runtime wheels it loads (cudart, cuBLAS, cuDNN 9, ...), no CUDA toolkit and no driver: the NVIDIA container runtime
# mounts the driver (libcuda) into a pod that requests nvidia.com/gpu. Without a GPU it serves on CPU.
# Build from the repository root:  docker build -f docker/server-gpu.Dockerfile -t tandem-server-gpu:0.1.0 .
# The same image that `hack/images.sh build server-gpu` assembles without Docker: Debian bookworm's python3 with the
# packages below, the hash-locked docker/requirements-serve-gpu.txt (cut from uv.lock) less docker/prune.txt, and the
# project, all in /usr/local/lib/python3.11/dist-packages. tests/packaging checks that the two paths agree.
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
# Debian's packages follow its security updates; pinning their versions would stop that.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first, so a code change reuses this (large) layer.
COPY docker/requirements-serve-gpu.txt docker/prune.txt /tmp/
RUN python3 -m pip install --require-hashes --no-deps --target /site -r /tmp/requirements-serve-gpu.txt \
 && sed 's/#.*//; /^ *$/d' /tmp/prune.txt | xargs -I{} rm -rf /site/{}
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# Bytecode now (the root filesystem is read-only at run time); files only newer Pythons parse stay source.
RUN python3 -m pip install --no-deps --target /site /src && rm -rf /site/bin \
 && { python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash -s /site \
        -p /usr/local/lib/python3.11/dist-packages /site || true; }

FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 libstdc++6 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && echo "nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin" >> /etc/passwd \
 && echo "nonroot:x:65532:" >> /etc/group
COPY --from=build /site /usr/local/lib/python3.11/dist-packages
COPY docker/tandem-entrypoint /usr/local/bin/tandem
LABEL org.opencontainers.image.title="tandem-server-gpu" \
      org.opencontainers.image.description="Tandem model server for GPU nodes: onnxruntime with CUDA 13 and cuDNN 9 (NVIDIA's wheels); CPU without a GPU" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# Read-only root filesystem: no bytecode written at run time; HOME and caches on the pod's /tmp emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp LANG=C.UTF-8
# The driver libraries for compute; which GPUs the container sees (NVIDIA_VISIBLE_DEVICES) the device plugin sets.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 9090
ENTRYPOINT ["tandem"]
CMD ["serve"]
