"""Operator configuration from the environment (the chart sets it; `tandem operator --help` documents it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class OperatorConfig:
    """Settings that shape every object the operator builds."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty watches the whole cluster."""
    trainer_image: str = "localhost/tandem-trainer:0.1.0"
    """Image for TrainingJob workers that name none."""
    server_image: str = "localhost/tandem-server:0.1.0"
    """Image for InferenceService replicas on CPU pools that name none (onnxruntime without CUDA)."""
    server_gpu_image: str = "localhost/tandem-server-gpu:0.1.0"
    """Image for InferenceService replicas on accelerator pools that name none (onnxruntime with CUDA)."""
    cluster_domain: str = "cluster.local"
    """DNS domain of the cluster, for status.url."""
    extra_pod_labels: dict[str, str] = field(default_factory=dict)
    """Labels added to every workload pod (for network policies or cost allocation)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorConfig:
        env = os.environ if environ is None else environ
        defaults = cls()
        labels = dict(
            pair.split("=", 1) for pair in _split(env.get("TANDEM_POD_LABELS", "")) if "=" in pair
        )
        return cls(
            namespaces=_split(env.get("TANDEM_NAMESPACES", "")),
            trainer_image=env.get("TANDEM_TRAINER_IMAGE", defaults.trainer_image),
            server_image=env.get("TANDEM_SERVER_IMAGE", defaults.server_image),
            server_gpu_image=env.get("TANDEM_SERVER_GPU_IMAGE", defaults.server_gpu_image),
            cluster_domain=env.get("TANDEM_CLUSTER_DOMAIN", defaults.cluster_domain),
            extra_pod_labels=labels,
        )
