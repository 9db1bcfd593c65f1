#!/usr/bin/env python3
"""Tandem's REST routes and data plane behind uvicorn (httptools parser, uvloop) instead of Tandem's own HTTP
front: serve_bench's `tandem-uvicorn` server, which answers "would a well-kept HTTP server cost little?".

Everything behind the HTTP layer is the product's own code (RestApp, DataPlane, OnnxModel with the same
session settings); only the parsing, framing and connection handling differ. Not part of the product. Runs in
the KServe bench venv, which has uvicorn; settings come from BENCH_* variables like the peers'.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn

from tandem.server.dataplane import DataPlane
from tandem.server.httpserver import Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel, SessionSettings
from tandem.server.rest import RestApp

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class AsgiFront:
    """A raw ASGI app (no framework) that hands each request to RestApp exactly as Tandem's front does."""

    def __init__(self) -> None:
        workers = int(os.environ.get("BENCH_WORKERS", "2"))
        executor = ThreadPoolExecutor(workers)
        metrics = ServerMetrics()
        self.dataplane = DataPlane(executor, metrics.batch)
        settings = SessionSettings(intra_op_threads=int(os.environ["BENCH_THREADS"]))
        self.model = OnnxModel(os.environ["BENCH_NAME"], "file://" + os.environ["BENCH_MODEL"], session=settings)
        self.dataplane.add(self.model)
        self.rest = RestApp(self.dataplane, metrics)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    self.model.load()
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        result = self.rest(Request(scope["method"], scope["path"], headers, b"".join(chunks)))
        response: Response = result if isinstance(result, Response) else await result
        head = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        head += [(name.encode(), value.encode()) for name, value in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        await send({"type": "http.response.body", "body": response.body})


if __name__ == "__main__":
    uvicorn.run(
        AsgiFront(), host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), loop="uvloop", http="httptools",
        lifespan="on", access_log=False, log_level="warning",
    )  # fmt: skip
