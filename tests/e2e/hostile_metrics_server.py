#!/usr/bin/python3
"""A model server image gone bad, for tests/e2e/test_hostile_canary.py: installed as the image's `tandem`, so
the replica's `tandem serve` runs it; healthy on its HTTP port, so its pods become Ready, and hostile on its
metrics port, where the operator reads a canary's figures.

Each connection to the metrics port gets the next answer of four, in turn: a redirect to HOSTILE_REDIRECT
(host:port, where the test counts connections), a 200 claiming 1 GiB and streaming it, a 200 that drips one
byte a second, and garbage. Standard library only: it runs on the images' Debian base with no wheels.
"""

from __future__ import annotations

import asyncio
import itertools
import os

HTTP_PORT = 8080
METRICS_PORT = 9090
GiB = 1 << 30
CHUNK = b"tandem_server_requests_total{code=\"200\"} 1\n" * 1024


async def healthy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Every request on the HTTP port answered 200: readiness and liveness probes pass."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def redirect(writer: asyncio.StreamWriter) -> None:
    target = os.environ["HOSTILE_REDIRECT"]
    writer.write(f"HTTP/1.1 302 Found\r\nLocation: http://{target}/metrics\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()


async def huge(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % GiB)
    for _ in range(GiB // len(CHUNK)):
        writer.write(CHUNK)
        await writer.drain()


async def drip(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
    for byte in itertools.cycle(b"tandem_server_requests_total 1\n"):
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(1)


async def garbage(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + os.urandom(4096) + b"\xff\xfe{{{\n" * 64)
    await writer.drain()


ANSWERS = itertools.cycle((redirect, huge, drip, garbage))


async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    answer = next(ANSWERS)
    try:
        await reader.readuntil(b"\r\n\r\n")
        await answer(writer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    servers = [
        await asyncio.start_server(healthy, port=HTTP_PORT),
        await asyncio.start_server(hostile, port=METRICS_PORT),
    ]
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main())
