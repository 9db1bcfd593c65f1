"""Tandem's public API: the custom resources' models, from which the CRDs are generated."""

from tandem.api.artifact import ModelArtifact, TensorDatatype, TensorSpec, TrainingFailure
from tandem.api.base import ApiModel

GROUP = "tandem.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "VERSION", "ApiModel", "ModelArtifact", "TensorDatatype", "TensorSpec", "TrainingFailure"]
