"""Types that several resources share: conditions, quantities, tolerations, env, pricing."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, cast

from pydantic import AfterValidator, ConfigDict, Field, JsonValue, WithJsonSchema

from tandem.api.base import ApiModel

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

def _quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return value


Quantity = Annotated[
    str | int,
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity such as 500m, 2 or 4Gi; checked by the schema and again when parsed."""

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes object passed through unchanged (such as an affinity), validated by the API server later."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STORAGE_URI = r"^(s3|pvc|file)://.+"
"""Artifact storage the images can reach: s3:// (and S3-compatible stores), pvc://claim/path and file://."""
MODEL_SOURCE_URI = r"^(s3|pvc|file|https?)://.+"
"""Where a served model may come from: artifact storage, or any HTTP(S) URL (read once, sha256-checked)."""
NO_GCS_RULE: dict[str, str] = {
    "rule": "!self.startsWith('gs://')",
    "message": "gs:// is not supported: no Tandem image installs a GCS client (gcsfs); use s3://, pvc:// or file://",
}
"""gs:// used to be advertised; a URI that still uses it is refused with the reason, not just a pattern."""


def _uri(pattern: str, max_length: int = 2048) -> Any:
    return Field(
        pattern=pattern,
        max_length=max_length,
        json_schema_extra={"x-kubernetes-validations": cast(JsonValue, [NO_GCS_RULE])},
    )


StorageUri = Annotated[str, _uri(STORAGE_URI)]
"""A URI of artifact storage (STORAGE_URI), with gs:// refused by name."""
ModelSourceUri = Annotated[str, _uri(MODEL_SOURCE_URI)]
"""A URI a server can load a model from (MODEL_SOURCE_URI), with gs:// refused by name."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A metav1.Condition: the observed state of one aspect, as `kubectl wait` and Argo CD read it."""

    type: str = Field(min_length=1, max_length=316)
    """Aspect this condition describes, in CamelCase (Ready, ModelResolved, ...)."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """CamelCase cause of the last transition, for machines."""
    message: str = Field(default="", max_length=32768)
    """Explanation of the last transition, for people."""
    last_transition_time: datetime
    """When status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set against."""


CONDITIONS_SCHEMA_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A core/v1 Toleration, copied onto the pods placed on a pool."""

    key: str | None = None
    """Taint key to tolerate; empty with operator Exists tolerates every taint."""
    operator: TolerationOperator = TolerationOperator.EQUAL
    """Exists or Equal."""
    value: str | None = None
    """Taint value, with operator Equal."""
    effect: TaintEffect | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace: how storage credentials reach a workload."""

    name: str = Field(pattern=DNS_SUBDOMAIN)
    """Secret name."""
    key: str = Field(min_length=1)
    """Key within the Secret."""
    optional: bool | None = None
    """Whether the pod may start without it."""


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the resource's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN)
    """ConfigMap name."""
    key: str = Field(min_length=1)
    """Key within the ConfigMap."""
    optional: bool | None = None
    """Whether the pod may start without it."""


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from, by reference only, so no secret is copied."""

    secret_key_ref: SecretKeyRef | None = None
    """A key of a Secret."""
    config_map_key_ref: ConfigMapKeyRef | None = None
    """A key of a ConfigMap."""


ENV_RULES: list[dict[str, str]] = [
    {
        "rule": "!(has(self.value) && has(self.valueFrom))",
        "message": "env: set either value or valueFrom, not both",
    }
]


class EnvVar(ApiModel):
    """An environment variable for the workload's containers."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": cast(JsonValue, ENV_RULES)})

    name: str = Field(min_length=1, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = None
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value from a Secret or ConfigMap key instead of a literal."""


class PodMetadata(ApiModel):
    """Labels and annotations added to the workload's pods (sidecar injection, cost allocation, policies)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Extra pod labels; Tandem's own labels win on conflict."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra pod annotations."""


class Usage(ApiModel):
    """Resources used so far and what they cost, from the pool's prices and power figures."""

    gpu_seconds: float = Field(default=0, ge=0)
    """Accelerator-seconds requested by running pods."""
    core_seconds: float = Field(default=0, ge=0)
    """CPU core-seconds requested by running pods."""
    estimated_cost: float = Field(default=0, ge=0)
    """Estimated cost in the pool's price currency."""
    energy_wh: float = Field(default=0, ge=0)
    """Estimated energy in watt-hours."""
