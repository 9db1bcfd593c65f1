"""The access log never holds up serving: a writer thread does the writing, and when it falls behind, lines
are dropped and counted instead of held. gRPC calls get lines as REST requests do."""

from __future__ import annotations

import asyncio
import fcntl
import io
import socket
import struct
import termios
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import orjson
import pytest

from support import server_procs as servers
from tandem.server import proto
from tandem.server.dataplane import DataPlane
from tandem.server.grpcserver import GrpcFront
from tandem.server.httpserver import HttpServer, Response
from tandem.server.logs import AccessLog
from tandem.server.metrics import ServerMetrics


class BlockingStream(io.BytesIO):
    """A stdout nobody reads: `write` blocks until released, and says when the first write began."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.entered.set()
        self.released.wait(30)
        return super().write(data)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """One GET on an open connection; the status line of its answer."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")
    )
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_writer_that_blocks_neither_stalls_requests_nor_holds_more_than_its_bound() -> None:
    metrics = ServerMetrics()
    stream = BlockingStream()
    access_log = AccessLog(stream, flush_interval_s=0, max_lines=4, on_drop=metrics.access_log_dropped.inc)

    async def ten_requests() -> list[bytes]:
        server = HttpServer(lambda request: Response(200, b"{}"), access_log=access_log)
        port = await server.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses = [await get(reader, writer, "/0")]
        await asyncio.to_thread(stream.entered.wait, 30)  # the writer thread is now stuck on its first line
        statuses += [await get(reader, writer, f"/{i}") for i in range(1, 10)]
        writer.close()
        await server.drain(10)
        return statuses

    assert asyncio.run(ten_requests()) == [b"HTTP/1.1 200 OK"] * 10
    # one line in the blocked write and three waiting for it are held; the six after them are dropped
    assert metrics.registry.get_sample_value("tandem_server_access_log_dropped_total") == 6
    stream.released.set()
    access_log.close(timeout_s=30)
    assert [line["path"] for line in lines(stream)] == ["/0", "/1", "/2", "/3"]


def test_lines_are_written_once_the_writer_catches_up() -> None:
    metrics = ServerMetrics()
    stream = io.BytesIO()
    access_log = AccessLog(stream, flush_interval_s=0, max_lines=4, on_drop=metrics.access_log_dropped.inc)

    async def requests() -> None:
        server = HttpServer(lambda request: Response(200, b"{}"), access_log=access_log)
        port = await server.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):
            await get(reader, writer, f"/{i}")
        writer.close()
        await server.drain(10)

    asyncio.run(requests())
    access_log.close(timeout_s=30)
    assert [(line["method"], line["path"], line["status"]) for line in lines(stream)] == [
        ("GET", "/0", 200),
        ("GET", "/1", 200),
        ("GET", "/2", 200),
    ]
    assert metrics.registry.get_sample_value("tandem_server_access_log_dropped_total") == 0


def test_grpc_calls_get_access_log_lines_with_their_status() -> None:
    stream = io.BytesIO()
    access_log = AccessLog(stream, flush_interval_s=0)

    async def calls() -> None:
        front = GrpcFront(
            DataPlane(ThreadPoolExecutor(1)),
            ServerMetrics(),
            max_message_bytes=1 << 20,
            idle_timeout_s=10,
            access_log=access_log,
        )
        port = await front.listen("127.0.0.1", 0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(f"/{proto.SERVICE}/ServerLive")(b"")
            metadata = proto.ModelMetadataRequest(name="absent").SerializeToString()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary(f"/{proto.SERVICE}/ModelMetadata")(metadata)
            assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        await front.drain(5)

    asyncio.run(calls())
    access_log.close(timeout_s=30)
    assert [(line["protocol"], line["path"], line["status"], line["grpc_status"]) for line in lines(stream)] == [
        ("grpc", f"/{proto.SERVICE}/ServerLive", 200, "OK"),
        ("grpc", f"/{proto.SERVICE}/ModelMetadata", 404, "NOT_FOUND"),
    ]


def test_a_server_whose_stdout_nobody_reads_keeps_answering(model_dir: Path) -> None:
    """`tandem serve` with its access log on a pipe that is never read: once the pipe is full, every write to
    it blocks, and requests must still be answered."""
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with (
        servers.serving(model_dir / "linear.onnx", env={"TANDEM_ACCESS_LOG": "on"}) as (process, port),
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
    ):
        assert process.stdout is not None
        pipe = process.stdout.fileno()
        capacity = fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ)
        stream = sock.makefile("rb")

        def hundred_answered() -> None:
            sock.sendall(request * 100)
            for _ in range(100):
                assert stream.readline().startswith(b"HTTP/1.1 200")
                length = 0
                while (line := stream.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                stream.read(length)

        for _ in range(10_000):  # until the log has filled the pipe: from then on its writer is blocked
            hundred_answered()
            if unread_bytes(pipe) >= capacity:
                break
        assert unread_bytes(pipe) >= capacity
        for _ in range(10):
            hundred_answered()


def unread_bytes(fd: int) -> int:
    count: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    return count
