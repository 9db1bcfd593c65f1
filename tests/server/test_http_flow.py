"""The HTTP front's flow control, on an in-process server: interim `100 Continue` answers keep the order of
final ones, and a connection whose responses are not being read stops being read (write back-pressure)
while other connections are served. Waits are on the server's own state, never on the clock."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import uvloop

from tandem.server.dataplane import DataPlane
from tandem.server.httpserver import (
    HEAD_PIECE,
    MAX_QUEUED,
    WRITE_HIGH_WATER,
    Handler,
    HttpConnection,
    HttpServer,
    Request,
    Response,
)
from tandem.server.metrics import ServerMetrics
from tandem.server.rest import RestApp

T = TypeVar("T")


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds (each check after the server has had its turn)."""
    while not condition():
        await asyncio.sleep(0)


def only_connection(server: HttpServer) -> HttpConnection:
    (connection,) = server.connections
    return connection


async def read_until(reader: asyncio.StreamReader, marker: bytes, count: int = 1) -> bytes:
    """What the connection sends until `marker` has come `count` times; each byte is searched once."""
    data = bytearray()
    seen = searched = 0
    while seen < count:
        chunk = await reader.read(65536)
        assert chunk, f"connection closed after {bytes(data[-200:])!r}"
        data += chunk
        start = max(0, searched - len(marker) + 1)
        seen += data.count(marker, start)
        searched = len(data)
    return bytes(data)


@asynccontextmanager
async def one_client(handler: Handler) -> AsyncIterator[tuple[HttpServer, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A server on a free loopback port and one connection to it. On the way out the client hangs up and the
    server must drain: an exchange that leaves a request unfinished fails the test rather than leaking it."""
    server = HttpServer(handler)
    port = await server.listen("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    yield server, reader, writer
    writer.close()
    assert await server.drain(10)


def test_100_continue_waits_for_the_response_of_a_pipelined_request_before_it() -> None:
    release = asyncio.Event()

    async def slow_then_echo(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, request.path.encode() + b":" + request.body)

    async def exchange() -> bytes:
        async with one_client(slow_then_echo) as (server, reader, writer):
            writer.write(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            # the second request's headers are parsed (it waits for its body) while the first is still running
            await until(lambda: bool(server.connections) and only_connection(server).waiting_for == "body")
            release.set()
            received = await read_until(reader, b"\r\n\r\n", 2)  # the slow answer's head, then the 100
            writer.write(b"ping")
            received += await read_until(reader, b"/echo:ping")
        return received

    received = asyncio.run(exchange())
    assert received.startswith(b"HTTP/1.1 200")
    assert received.index(b"/slow:") < received.index(b"HTTP/1.1 100 Continue") < received.index(b"/echo:ping")


def test_100_continue_is_sent_at_once_when_nothing_is_owed_before_it() -> None:
    async def exchange() -> bytes:
        async with one_client(lambda request: Response(200, request.body)) as (_, reader, writer):
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            received = await read_until(reader, b"\r\n\r\n")
            writer.write(b"pong")
            received += await read_until(reader, b"pong")
        return received

    received = asyncio.run(exchange())
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")


def test_no_100_continue_once_the_body_has_arrived_without_it() -> None:
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, request.body)

    async def exchange() -> bytes:
        async with one_client(slow) as (server, reader, writer):
            writer.write(
                b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nping"
            )
            await until(lambda: bool(server.connections) and len(only_connection(server).queue) == 1)
            release.set()
            return await read_until(reader, b"ping")

    assert b"100 Continue" not in asyncio.run(exchange())


# write back-pressure

GET_V2 = b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
MAX_READ = 256 * 1024
"""The most one read of asyncio's or uvloop's transports delivers: what a paused connection may keep unparsed."""


def rest_app() -> RestApp:
    """The real V2 routes; server metadata and health need no model."""
    return RestApp(DataPlane(ThreadPoolExecutor(1)), ServerMetrics())


def run(main: Callable[[], Coroutine[Any, Any, T]], loop: str) -> T:
    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


async def open_slow_reader(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is small, so answers it does not read pile up on the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def write_blocked(server: HttpServer) -> HttpConnection:
    """The one connection, once its answers have filled its transport and it is no longer read."""
    await until(lambda: bool(server.connections) and only_connection(server).writing_paused)
    connection = only_connection(server)
    assert connection.paused
    return connection


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_pipelines_and_never_reads_makes_the_server_hold_a_bounded_amount(loop: str) -> None:
    """100,000 `GET /v2` (2.9 MB) would be 17 MB of answers; the server keeps about 64 KiB of them."""

    async def attack() -> tuple[int, int, int, bytes]:
        server = HttpServer(rest_app())
        port = await server.listen("127.0.0.1", 0)
        _, attacker = await open_slow_reader(port)
        attacker.write(GET_V2 * 100_000)
        connection = await write_blocked(server)
        transport = connection.transport
        assert transport is not None
        held = transport.get_write_buffer_size(), len(connection.queue), len(connection.backlog)
        # meanwhile a client that reads its answers is served, and the attacker's connection holds no more
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(LIVE)
        answer = await read_until(reader, b"true}")
        assert (transport.get_write_buffer_size(), len(connection.queue), len(connection.backlog)) == held
        writer.close()
        attacker.transport.abort()
        assert await server.drain(10)
        return *held, answer

    unsent, queued, unparsed, answer = run(attack, loop)
    assert unsent <= WRITE_HIGH_WATER + 1024  # the mark, plus the one answer that crossed it
    assert queued <= MAX_QUEUED + HEAD_PIECE // len(GET_V2)
    assert unparsed <= MAX_READ
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"live":true}')


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_paused_connection_resumes_as_its_client_reads_and_gets_every_answer_in_order(loop: str) -> None:
    count = 100_000  # answers beyond what loopback's kernel buffers take, so the transport itself must fill

    async def pipeline() -> bytes:
        server = HttpServer(rest_app())
        port = await server.listen("127.0.0.1", 0)
        reader, writer = await open_slow_reader(port)
        writer.write(GET_V2 * count + LIVE)
        await write_blocked(server)  # back-pressure engaged before the client reads anything
        received = await read_until(reader, b"HTTP/1.1 200 OK", count + 1)
        received += await read_until(reader, b"true}") if not received.endswith(b"true}") else b""
        writer.close()
        assert await server.drain(10)
        return received

    received = run(pipeline, loop)
    assert received.count(b"HTTP/1.1 200 OK") == count + 1
    assert received.count(b'"name":"tandem"') == count
    assert received.endswith(b'{"live":true}')


def test_a_client_that_never_reads_its_answers_is_cut_off_after_the_idle_timeout() -> None:
    async def attack() -> int:
        server = HttpServer(rest_app(), idle_timeout_s=0.2)
        port = await server.listen("127.0.0.1", 0)
        _, attacker = await open_slow_reader(port)
        attacker.write(GET_V2 * 100_000)
        await write_blocked(server)
        async with asyncio.timeout(30):  # a safety net for a broken server, not the behaviour under test
            await until(lambda: not server.connections)
        attacker.transport.abort()
        assert await server.drain(10)
        return len(server.connections)

    assert asyncio.run(attack()) == 0
