"""ComputePool: a node pool named by data, so placement never hard-codes node labels."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from tandem.api.base import ApiModel
from tandem.api.common import CONDITIONS_SCHEMA_EXTRA, DNS_SUBDOMAIN, Condition, FreeForm, Toleration


class PoolRole(StrEnum):
    """Which workloads a pool takes when they do not name a pool."""

    TRAINING = "training"
    SERVING = "serving"


class Price(ApiModel):
    """Hourly prices, in one currency of the platform team's choosing; used for cost estimates."""

    node_hour: float = Field(default=0, ge=0)
    """Price of one node for an hour."""
    accelerator_hour: float = Field(default=0, ge=0)
    """Price of one accelerator for an hour."""
    core_hour: float = Field(default=0, ge=0)
    """Price of one CPU core for an hour."""


class Power(ApiModel):
    """Power draw under load, for energy estimates."""

    watts_per_accelerator: float = Field(default=0, ge=0)
    """Watts one busy accelerator draws."""
    watts_per_core: float = Field(default=0, ge=0)
    """Watts one busy CPU core draws."""


class ComputePoolSpec(ApiModel):
    """Which nodes form the pool and how pods get onto them."""

    node_selector: Annotated[dict[str, str], Field(min_length=1)]
    """Node labels that select the pool's nodes; copied into the pods' nodeSelector."""
    accelerator: str = Field(default="", pattern=r"^(|" + DNS_SUBDOMAIN[1:-1] + r"/[-._a-zA-Z0-9]+)$")
    """Extended resource name of the pool's accelerator, such as nvidia.com/gpu; empty for a CPU pool."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the pool's taints; given only to pods that belong there."""
    affinity: FreeForm | None = None
    """Optional core/v1 Affinity added to pods placed on the pool."""
    role: PoolRole | None = None
    """Workloads this pool takes by default: training or serving."""
    price: Price = Field(default_factory=Price)
    """Prices for cost estimates and cost-aware placement."""
    power: Power = Field(default_factory=Power)
    """Power draw for energy estimates."""


class ResourceTotals(ApiModel):
    """Summed node figures, as Kubernetes quantities."""

    cpu: str = "0"
    """CPU cores."""
    memory: str = "0"
    """Memory."""
    accelerators: int = 0
    """Accelerators of the pool's kind."""


class ComputePoolStatus(ApiModel):
    """Observed nodes of the pool."""

    nodes: int = 0
    """Nodes that match the selector."""
    ready_nodes: int = 0
    """Matching nodes whose Ready condition is True."""
    capacity: ResourceTotals = Field(default_factory=ResourceTotals)
    """Summed node capacity."""
    allocatable: ResourceTotals = Field(default_factory=ResourceTotals)
    """Summed node allocatable resources."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=CONDITIONS_SCHEMA_EXTRA)] = Field(
        default_factory=list
    )
    """Ready: the pool has at least one ready node."""
    observed_generation: int | None = None
    """The .metadata.generation this status describes."""

