"""Fixtures for the packaging tests: helm and kubectl binaries, skipped with a reason when not built."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tools import tool


def built(name: str) -> Path:
    """The binary hack/build-tools.sh builds; without it the test is skipped, not failed, since a checkout that
    has not built the Go tools can still run every other packaging test."""
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} not found: run hack/build-tools.sh")
    return path


@pytest.fixture(scope="session")
def helm() -> Path:
    return built("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return built("kubectl")
