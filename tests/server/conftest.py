"""Fixtures: test models on disk, and an in-process client that calls the REST app without sockets."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models

from tandem.server.dataplane import DataPlane
from tandem.server.httpserver import Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel
from tandem.server.rest import RestApp


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    models.linear_model(folder / "linear.onnx")
    models.identity_model(folder / "identity.onnx")
    models.bf16_model(folder / "bf16.onnx")
    models.slow_model(folder / "slow.onnx")
    return folder


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    content_type: str

    def json(self) -> Any:
        return orjson.loads(self.body)


class InProcessClient:
    """Drives RestApp exactly as the HTTP server does, minus the socket."""

    def __init__(self, app: RestApp, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
        result = self.app(Request(method, path, {k.lower(): v for k, v in (headers or {}).items()}, body))
        if not isinstance(result, Response):
            result = self.loop.run_until_complete(result)
        return Reply(result.status, result.body, dict(result.headers), result.content_type)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, document: Any = None, **kwargs: Any) -> Reply:
        body = kwargs.pop("body", None)
        return self.request("POST", path, body if body is not None else orjson.dumps(document), **kwargs)


def make_client(path: Path, name: str, *, version: str | None = None, batch: int = 0) -> InProcessClient:
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(2)
    metrics = ServerMetrics()
    dataplane = DataPlane(executor, metrics.batch)
    model = OnnxModel(name, path.as_uri(), version=version)
    model.load()
    dataplane.add(model)
    if batch:
        dataplane.enable_batching(model, batch, 0.005)
    return InProcessClient(RestApp(dataplane, metrics), loop)


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
