"""An in-process client for the V2 REST app: calls it exactly as the HTTP server does, minus the socket."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tandem.server.dataplane import DataPlane
from tandem.server.httpserver import Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel
from tandem.server.rest import RestApp


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
