"""Fixtures for the packaging tests: helm and kubectl binaries, skipped with a reason when not built."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.tools import tool


@pytest.fixture(scope="session")
def helm() -> Path:
    path = tool("helm")
    if path is None:
        pytest.skip("helm not found: run hack/build-tools.sh")
    return path


@pytest.fixture(scope="session")
def kubectl() -> Path:
    path = tool("kubectl")
    if path is None:
        pytest.skip("kubectl not found: run hack/build-tools.sh")
    return path
