"""A small HTTP/1.1 load generator for one V2 inference request, closed loop or at a fixed rate.

The profile measures a replica the way its clients reach it: requests over TCP to the real server, every
answer read and checked. It sends one prebuilt request on keep-alive connections and reads answers by their
Content-Length, so the client side costs a few microseconds a request and the server, not the generator, is
what saturates. Standard library only (asyncio streams), so it runs in the server image beside `tandem serve`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class LoadError(Exception):
    """The server refused a connection or answered something other than 200."""


@dataclass
class LoadResult:
    """What one load phase saw: each answered request's seconds, and how long the phase ran."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    late: int = 0
    """Fixed rate only: requests that could not be sent on time because every connection was busy."""

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0


def infer_request(url: str, model: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, the raw HTTP request) for POST {url}/v2/models/{model}/infer with a JSON body."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadError(f"the load generator speaks plain http://host:port, not {url!r}")
    port = parts.port or 80
    head = (
        f"POST {parts.path.rstrip('/')}/v2/models/{model}/infer HTTP/1.1\r\n"
        f"Host: {parts.hostname}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return parts.hostname, port, head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> None:
    """Read one response; LoadError unless it is a 200 with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if status != b"200":
        raise LoadError(f"the server answered {status.decode(errors='replace')}: {body[:300].decode(errors='replace')}")


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_connection(host, port)
    except OSError as exc:
        raise LoadError(f"cannot connect to {host}:{port}: {exc}") from exc


async def _closed_loop(host: str, port: int, request: bytes, concurrency: int, seconds: float) -> LoadResult:
    connections = [await _connect(host, port) for _ in range(concurrency)]
    result = LoadResult()
    deadline = time.perf_counter() + seconds

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (began := time.perf_counter()) < deadline:
            writer.write(request)
            await _answer(reader)
            result.latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    try:
        await asyncio.gather(*(client(reader, writer) for reader, writer in connections))
    finally:
        result.seconds = time.perf_counter() - began
        for _, writer in connections:
            writer.close()
    return result


async def _fixed_rate(
    host: str, port: int, request: bytes, rate: float, seconds: float, connections: int
) -> LoadResult:
    """Send at `rate` requests/s whatever the answers take (open loop), on up to `connections` connections.

    A connection whose request failed comes back as None with the failure recorded, so the sender stops at
    once instead of waiting for a connection that will never be free again.
    """
    idle: asyncio.Queue[_Pair | None] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await _connect(host, port))
    result = LoadResult()
    failures: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    async def send(scheduled: float, pair: _Pair) -> None:
        reader, writer = pair
        try:
            writer.write(request)
            await _answer(reader)
        except (LoadError, OSError, asyncio.IncompleteReadError) as exc:
            failures.append(exc)
            writer.close()
            idle.put_nowait(None)
            return
        result.latencies.append(time.perf_counter() - scheduled)
        idle.put_nowait(pair)

    began = time.perf_counter()
    try:
        for index in range(int(rate * seconds)):
            scheduled = began + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if idle.empty():
                result.late += 1
            pair = await idle.get()
            if pair is None:
                raise LoadError(f"a request failed: {failures[0]}")
            tasks.append(asyncio.create_task(send(scheduled, pair)))
        await asyncio.gather(*tasks)
        if failures:
            raise LoadError(f"a request failed: {failures[0]}")
    finally:
        result.seconds = time.perf_counter() - began
        for task in tasks:
            task.cancel()
        while not idle.empty():
            pair = idle.get_nowait()
            if pair is not None:
                pair[1].close()
    return result


def closed_loop(url: str, model: str, body: bytes, concurrency: int, seconds: float) -> LoadResult:
    """`concurrency` clients, each sending the request again as soon as its answer arrives, for `seconds`."""
    host, port, request = infer_request(url, model, body)
    try:
        return asyncio.run(_closed_loop(host, port, request, max(1, concurrency), seconds))
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise LoadError(f"the connection to {host}:{port} broke: {exc}") from exc


def fixed_rate(url: str, model: str, body: bytes, rate: float, seconds: float, connections: int = 64) -> LoadResult:
    """Requests at `rate` per second for `seconds`; latency counts from when each request was due."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    host, port, request = infer_request(url, model, body)
    try:
        return asyncio.run(_fixed_rate(host, port, request, rate, seconds, max(1, connections)))
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise LoadError(f"the connection to {host}:{port} broke: {exc}") from exc
