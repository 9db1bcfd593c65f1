"""The HTTP layer over a real socket: keep-alive, pipelining, size limits and garbage never kill the server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from support import server_procs as servers

BODY = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


@pytest.fixture(scope="module")
def port(model_dir: Path) -> Iterator[int]:
    env = {"TANDEM_MAX_REQUEST_BYTES": "4096", "TANDEM_ACCESS_LOG": "off"}
    with servers.serving(model_dir / "linear.onnx", env=env) as (_, bound):
        yield bound


def post(body: bytes, extra: str = "") -> bytes:
    return (
        f"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def exchange(port: int, data: bytes, responses: int = 1) -> list[bytes]:
    """Send raw bytes, read `responses` HTTP responses (content-length framed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        buffer = b""
        out: list[bytes] = []
        while len(out) < responses:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return out
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            while len(buffer) < length:
                buffer += sock.recv(65536)
            out.append(head + b"\r\n\r\n" + buffer[:length])
            buffer = buffer[length:]
        return out


def test_keep_alive_and_pipelined_requests_are_answered_in_order(port: int) -> None:
    requests = post(BODY) + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n" + post(BODY)
    replies = exchange(port, requests, 3)
    assert [r.split(b" ")[1] for r in replies] == [b"200", b"200", b"200"]
    assert b'"outputs"' in replies[0] and b'"outputs"' in replies[2]


def test_a_body_over_the_limit_is_413_with_a_message(port: int) -> None:
    (reply,) = exchange(port, post(b"x" * 5000))
    assert reply.startswith(b"HTTP/1.1 413")
    assert b"exceeds the limit of 4096 bytes" in reply


def test_a_chunked_body_over_the_limit_is_413(port: int) -> None:
    chunk = b"x" * 3000
    data = (
        b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk) + chunk + b"\r\n" + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n"
    )  # fmt: skip
    (reply,) = exchange(port, data)
    assert reply.startswith(b"HTTP/1.1 413")


def test_malformed_http_is_400_and_the_server_lives_on(port: int) -> None:
    (reply,) = exchange(port, b"THIS IS NOT HTTP\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    (ok,) = exchange(port, post(BODY))
    assert ok.startswith(b"HTTP/1.1 200")


def test_expect_100_continue_is_honoured(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            post(b"", "Expect: 100-continue\r\n").replace(b"Content-Length: 0", b"Content-Length: %d" % len(BODY))
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BODY)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_many_concurrent_connections_all_get_answers(port: int) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: exchange(port, post(BODY) * 5, 5), range(32)))
    assert all(len(r) == 5 and all(x.startswith(b"HTTP/1.1 200") for x in r) for r in replies)
