"""The three custom resources: names, scope, models, cross-field rules and printer columns in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.api.base import ApiModel
from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus
from tandem.api.inferenceservice import (
    INFERENCE_SERVICE_RULES,
    InferenceServiceSpec,
    InferenceServiceStatus,
)
from tandem.api.trainingjob import TRAINING_JOB_RULES, TrainingJobSpec, TrainingJobStatus

GROUP = "tandem.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tandem"


@dataclass(frozen=True)
class Resource:
    """One custom resource kind, as its CRD declares it."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    spec: type[ApiModel]
    status: type[ApiModel]
    description: str
    spec_rules: list[dict[str, str]] = field(default_factory=list)
    root_rules: list[dict[str, str]] = field(default_factory=list)
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


SERVICE_NAME_RULE = {
    "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63",
    "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
    "letter, at most 63 characters): it also names a Service",
}
"""Kubernetes Services need DNS-1035 names; refusing others up front beats a child that can never be made."""


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


COMPUTE_POOL = Resource(
    kind="ComputePool",
    plural="computepools",
    short_names=("cpool",),
    namespaced=False,
    spec=ComputePoolSpec,
    status=ComputePoolStatus,
    description="A node pool (GPU or CPU) named by node selector, tolerations, accelerator and price.",
    printer_columns=[
        {"name": "Accelerator", "type": "string", "jsonPath": ".spec.accelerator"},
        {"name": "Role", "type": "string", "jsonPath": ".spec.role"},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyNodes"},
        {"name": "Accelerators", "type": "integer", "jsonPath": ".status.allocatable.accelerators", "priority": 1},
        {"name": "CPU", "type": "string", "jsonPath": ".status.allocatable.cpu", "priority": 1},
        _age(),
    ],
)

TRAINING_JOB = Resource(
    kind="TrainingJob",
    plural="trainingjobs",
    short_names=("tj",),
    namespaced=True,
    spec=TrainingJobSpec,
    status=TrainingJobStatus,
    description="PyTorch training on a ComputePool that exports, checks and publishes an ONNX model.",
    spec_rules=TRAINING_JOB_RULES,
    root_rules=[SERVICE_NAME_RULE],
    printer_columns=[
        {"name": "Pool", "type": "string", "jsonPath": ".status.pool"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.workers"},
        {"name": "Model", "type": "string", "jsonPath": ".status.model.uri"},
        {"name": "SHA256", "type": "string", "jsonPath": ".status.model.sha256", "priority": 1},
        {"name": "GPU-Seconds", "type": "number", "jsonPath": ".status.usage.gpuSeconds", "priority": 1},
        {"name": "Cost", "type": "number", "jsonPath": ".status.usage.estimatedCost", "priority": 1},
        _age(),
    ],
)

INFERENCE_SERVICE = Resource(
    kind="InferenceService",
    plural="inferenceservices",
    short_names=("infsvc",),
    namespaced=True,
    spec=InferenceServiceSpec,
    status=InferenceServiceStatus,
    description="An ONNX model served over Open Inference Protocol V2, placed on CPU, GPU or by measured cost.",
    spec_rules=INFERENCE_SERVICE_RULES,
    root_rules=[SERVICE_NAME_RULE],
    printer_columns=[
        {"name": "Pool", "type": "string", "jsonPath": ".status.placement.pool"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Model", "type": "string", "jsonPath": ".status.model.version"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        {"name": "Cost/h", "type": "number", "jsonPath": ".status.placement.costPerHour", "priority": 1},
        {"name": "Cost/1M", "type": "number", "jsonPath": ".status.placement.costPerMillionInferences", "priority": 1},
        {"name": "J/Req", "type": "number", "jsonPath": ".status.placement.joulesPerInference", "priority": 1},
        {"name": "Cost", "type": "number", "jsonPath": ".status.usage.estimatedCost", "priority": 1},
        {"name": "Energy-Wh", "type": "number", "jsonPath": ".status.usage.energyWh", "priority": 1},
        _age(),
    ],
)

RESOURCES: tuple[Resource, ...] = (COMPUTE_POOL, TRAINING_JOB, INFERENCE_SERVICE)
