"""Tandem's public API: the custom resources' models, from which the CRDs are generated."""

from tandem.api.artifact import ModelArtifact, TensorDatatype, TensorSpec, TrainingFailure
from tandem.api.base import ApiModel
from tandem.api.computepool import ComputePoolSpec, ComputePoolStatus, PoolRole
from tandem.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus, Placement
from tandem.api.resources import (
    API_VERSION,
    COMPUTE_POOL,
    GROUP,
    INFERENCE_SERVICE,
    RESOURCES,
    TRAINING_JOB,
    VERSION,
    Resource,
)
from tandem.api.trainingjob import TrainingJobSpec, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "COMPUTE_POOL",
    "GROUP",
    "INFERENCE_SERVICE",
    "RESOURCES",
    "TRAINING_JOB",
    "VERSION",
    "ApiModel",
    "ComputePoolSpec",
    "ComputePoolStatus",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "ModelArtifact",
    "Placement",
    "PoolRole",
    "Resource",
    "TensorDatatype",
    "TensorSpec",
    "TrainingFailure",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
