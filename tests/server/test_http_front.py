"""The HTTP front against clients that hold resources without using them: timeouts close them, bounds shed
them with 503 and Retry-After, oversized targets and heads are refused as soon as they cross their limit, and
a normal client is served throughout. Also what the front answers that a client could misread: HEAD, a version
that is not served, the extensions it advertises."""

from __future__ import annotations

import asyncio
import resource
import selectors
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from server_support import InProcessClient

from support import server_procs as servers
from tandem.server.config import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_URL_BYTES
from tandem.server.dataplane import DataPlane
from tandem.server.httpserver import HttpServer, Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel
from tandem.server.rest import RestApp

BODY = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
IDLE_S, HEADER_S, BODY_S = 3.0, 2.0, 2.0
IDLE_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def port(model_dir: Path) -> Iterator[int]:
    env = {
        "TANDEM_ACCESS_LOG": "off",
        "TANDEM_IDLE_TIMEOUT_S": str(IDLE_S),
        "TANDEM_HEADER_TIMEOUT_S": str(HEADER_S),
        "TANDEM_BODY_TIMEOUT_S": str(BODY_S),
    }
    with servers.serving(model_dir / "linear.onnx", env=env) as (_, bound):
        yield bound


def infer_request() -> bytes:
    return f"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY


def read_response(sock: socket.socket) -> bytes:
    """Everything up to the end of one response (content-length framed), or what came before the close."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def normal_client_latency(port: int) -> float:
    """Seconds a fresh client takes to get a 200 for an infer request."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(infer_request())
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    return time.perf_counter() - started


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Wait for the server to close the connection; whether it did in time, and what it sent first."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return False, received
    return True, received


def a_normal_client_is_served(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(infer_request())
        return read_response(sock).startswith(b"HTTP/1.1 200")


def test_head_gets_the_headers_of_get_and_no_body(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        get = read_response(sock)
        # the HEAD's response is followed at once by the next one's: a body in between would show
        sock.sendall(b"HEAD /v2 HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"\r\n\r\n") < 2:
            data += sock.recv(65536)
    head, after = data.split(b"\r\n\r\n", 1)
    assert head == get.split(b"\r\n\r\n", 1)[0]
    assert after.startswith(b"HTTP/1.1 200")  # the live check's answer, right after the HEAD's headers


def test_an_idle_connection_is_closed_after_the_idle_timeout(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(infer_request())
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        closed, received = closed_within(sock, IDLE_S + 3)
    assert closed and received == b""


def test_headers_dribbled_past_the_header_timeout_get_408_and_a_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\n")
        assert normal_client_latency(port) < HEADER_S
        closed, received = closed_within(sock, HEADER_S + 3)
    assert closed
    assert received.startswith(b"HTTP/1.1 408") and b"request headers not received" in received


def test_a_body_that_stops_arriving_gets_408_and_a_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(infer_request()[:-10])
        assert normal_client_latency(port) < BODY_S
        closed, received = closed_within(sock, BODY_S + 3)
    assert closed
    assert received.startswith(b"HTTP/1.1 408") and b"request body not received" in received


def test_a_thousand_idle_connections_neither_block_a_normal_client_nor_outlive_the_idle_timeout(port: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_CONNECTIONS + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * IDLE_CONNECTIONS), hard))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(IDLE_CONNECTIONS)]
    try:
        assert normal_client_latency(port) < IDLE_S  # served while all the idle ones are still open
        selector = selectors.DefaultSelector()
        for sock in idle:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + IDLE_S + 10
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                assert key.fileobj.recv(1) == b""  # type: ignore[union-attr]
                selector.unregister(key.fileobj)
        assert not selector.get_map(), f"{len(selector.get_map())} idle connections still open"
    finally:
        for sock in idle:
            sock.close()
    assert normal_client_latency(port) < IDLE_S


def test_connections_beyond_the_limit_get_503_with_retry_after(model_dir: Path) -> None:
    env = {"TANDEM_ACCESS_LOG": "off", "TANDEM_MAX_CONNECTIONS": "3"}
    with servers.serving(model_dir / "linear.onnx", env=env) as (_, port):
        # wait_ready's connection may still be closing on the server; hold three that are surely counted
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for sock in held:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            closed, received = closed_within(extra, 5)
        assert closed
        assert received.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in received
        held.pop().close()
        for sock in held:
            sock.sendall(infer_request())
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            sock.close()


def test_infer_requests_beyond_the_queue_bound_get_503_with_retry_after(model_dir: Path) -> None:
    loop = asyncio.new_event_loop()
    model = OnnxModel("slow", (model_dir / "slow.onnx").as_uri())
    model.load()
    dataplane = DataPlane(ThreadPoolExecutor(1), max_in_flight=2)
    dataplane.add(model)
    app = RestApp(dataplane, ServerMetrics())
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1024], "datatype": "FP32", "data": [1.0] * 1024}]})

    async def burst() -> list[Response]:
        calls = [app(Request("POST", "/v2/models/slow/infer", {}, body)) for _ in range(4)]
        return list(await asyncio.gather(*calls))

    try:
        replies = loop.run_until_complete(burst())
    finally:
        loop.close()
    assert [reply.status for reply in replies] == [200, 200, 503, 503]
    assert ("retry-after", "1") in replies[2].headers
    assert b"server busy" in replies[2].body


def test_a_version_of_a_model_served_without_one_is_404(identity: InProcessClient) -> None:
    for path in ("/v2/models/identity/versions/1", "/v2/models/identity/versions/1/ready"):
        reply = identity.get(path)
        assert reply.status == 404, path
        assert "is served with no version" in reply.json()["error"]
    assert identity.get("/v2/models/identity").status == 200


def test_only_implemented_extensions_are_advertised(identity: InProcessClient) -> None:
    assert identity.get("/v2").json()["extensions"] == ["binary_tensor_data"]


# bounded heads: 414 and 431


def long_target() -> bytes:
    return b"/v2/models/" + b"x" * DEFAULT_MAX_URL_BYTES


def test_a_request_target_over_the_limit_gets_414_and_a_close(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET " + long_target() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, received = closed_within(sock, 10)
    assert closed
    assert received.startswith(b"HTTP/1.1 414") and b"connection: close" in received
    assert b"xxxxxxxx" not in received
    assert a_normal_client_is_served(port)


def test_a_huge_header_sent_in_pieces_gets_431_before_it_ends(port: int) -> None:
    """The head never ends: only a refusal on its size, not the header deadline's 408, can answer it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
        piece = b"y" * 16384
        for _ in range(4 * DEFAULT_MAX_HEADER_BYTES // len(piece)):
            sock.sendall(piece)
        closed, received = closed_within(sock, 10)
    assert closed
    assert received.startswith(b"HTTP/1.1 431") and b"request headers exceed the limit" in received
    assert a_normal_client_is_served(port)


def test_a_huge_header_pipelined_behind_a_request_in_one_write_gets_431(port: int) -> None:
    """Its head begins in the middle of a read, after the request before it: it is refused all the same."""
    big = b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * (4 * DEFAULT_MAX_HEADER_BYTES)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + big)
        closed, received = closed_within(sock, 10)
    assert closed
    assert received.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 431" in received


def test_a_head_just_under_the_limit_is_served(port: int) -> None:
    filler = b"z" * (DEFAULT_MAX_HEADER_BYTES - 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Filler: " + filler + b"\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_large_body_that_arrives_with_its_head_is_not_counted_as_head(port: int) -> None:
    body = BODY + b" " * (4 * DEFAULT_MAX_HEADER_BYTES)  # JSON allows trailing whitespace
    head = f"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_a_refusal_comes_after_the_answers_owed_before_it(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(infer_request() + b"GET " + long_target() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, received = closed_within(sock, 10)
    assert closed
    assert received.startswith(b"HTTP/1.1 200")
    assert received.index(b"HTTP/1.1 414") > received.index(b"outputs")  # after the whole infer answer


def test_a_refused_target_is_echoed_neither_in_the_answer_nor_in_the_access_log() -> None:
    logged: list[tuple[str, str, int]] = []

    def log(request: Request, response: Response, seconds: float) -> None:
        logged.append((request.method, request.path, response.status))

    async def refused() -> bytes:
        server = HttpServer(lambda request: Response(200, b"{}"), access_log=log)
        port = await server.listen("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET " + long_target() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()  # to the end of the stream: the server closes after the answer
        writer.close()
        assert await server.drain(10)
        return answer

    answer = asyncio.run(refused())
    assert answer.startswith(b"HTTP/1.1 414") and b"request target exceeds the limit of 8192 bytes" in answer
    assert b"xxxxxxxx" not in answer
    assert logged == [("GET", "", 414)]
