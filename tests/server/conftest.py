"""Fixtures: test models on disk and in-process clients (tests/server/server_support.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from server_support import InProcessClient, make_client

from support import server_models


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    server_models.linear_model(folder / "linear.onnx")
    server_models.identity_model(folder / "identity.onnx")
    server_models.bf16_model(folder / "bf16.onnx")
    server_models.slow_model(folder / "slow.onnx")
    server_models.lookup_model(folder / "lookup.onnx")
    return folder


@pytest.fixture
def linear(model_dir: Path) -> Iterator[InProcessClient]:
    client = make_client(model_dir / "linear.onnx", "linear", version="3")
    yield client
    client.loop.close()


@pytest.fixture
def identity(model_dir: Path) -> Iterator[InProcessClient]:
    client = make_client(model_dir / "identity.onnx", "identity")
    yield client
    client.loop.close()
