"""Sample specs and pools for the operator's unit tests: plain dicts as they arrive from the API server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tandem.api.computepool import ComputePoolSpec
from tandem.config import OperatorConfig

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}


def gpu_pool_body() -> dict[str, Any]:
    return {
        "nodeSelector": {"tandem.dev/pool": "gpu"},
        "accelerator": "nvidia.com/gpu",
        "tolerations": [GPU_TOLERATION],
        "role": "training",
        "price": {"acceleratorHour": 2.0, "coreHour": 0.05},
        "power": {"wattsPerAccelerator": 300, "wattsPerCore": 10},
    }


def cpu_pool_body() -> dict[str, Any]:
    return {
        "nodeSelector": {"tandem.dev/pool": "cpu"},
        "role": "serving",
        "price": {"coreHour": 0.04},
        "power": {"wattsPerCore": 8},
    }


@pytest.fixture
def pool_bodies() -> dict[str, dict[str, Any]]:
    """ComputePool specs by name, as reconcile receives them from the pool index."""
    return {"gpu": gpu_pool_body(), "cpu": cpu_pool_body()}


@pytest.fixture
def pools(pool_bodies: dict[str, dict[str, Any]]) -> dict[str, ComputePoolSpec]:
    return {name: ComputePoolSpec.model_validate(body) for name, body in pool_bodies.items()}


@pytest.fixture
def training_spec_body() -> dict[str, Any]:
    return {"model": {"output": "s3://models/digits"}}


@pytest.fixture
def serving_spec_body() -> dict[str, Any]:
    return {"model": {"uri": "s3://models/digits/v1/model.onnx", "sha256": "a" * 64}}


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig(trainer_image="trainer:test", server_image="server:test", server_gpu_image="server-gpu:test")


@pytest.fixture
def now() -> datetime:
    return datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
