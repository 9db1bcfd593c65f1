"""Structured logs: one JSON object per line on stderr, and a fast access log on stdout written off the loop.

The access log bypasses `logging`: a LogRecord per request costs tens of microseconds, a noticeable share of
a sub-millisecond request. The event loop only formats a line and buffers it; every half second the buffer
goes to a thread of its own that writes it. A write to stdout blocks when nobody reads the pipe (a stalled
log shipper, a full terminal): on the loop, that would stall every connection, REST and gRPC alike; on the
writer thread it stalls only the log. Lines held and not yet written are bounded; beyond the bound a line is
dropped and counted (tandem_server_access_log_dropped_total), so a log nobody reads costs lines, never
memory or latency.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import orjson

from tandem.server.httpserver import Request, Response

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


DEFAULT_MAX_LINES = 16384
"""Access-log lines held (buffered on the loop or waiting for the writer) before new ones are dropped: a few
seconds of lines at thousands of requests per second, about 3 MiB."""


class AccessLog:
    """JSON access-log lines: time, method, path, status, duration_ms, bytes_in, bytes_out.

    gRPC calls get the same fields (method POST, path /<service>/<method>, the HTTP status of their V2 error)
    plus protocol "grpc" and grpc_status. Call `close` at shutdown to write what is left.
    """

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        *,
        flush_interval_s: float = 0.5,
        max_lines: int = DEFAULT_MAX_LINES,
        on_drop: Callable[[], None] = lambda: None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.flush_interval_s = flush_interval_s
        self.max_lines = max_lines
        self.on_drop = on_drop
        """Called for every line dropped because `max_lines` are held; metrics hook."""
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._accepted = 0
        """Lines buffered since the start; only the loop changes it."""
        self._written = 0
        """Lines the writer has written (or failed to) since the start; only the writer thread changes it."""
        self._batches: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    def __call__(self, request: Request, response: Response, seconds: float) -> None:
        """The line for one HTTP request (the signature `httpserver.AccessLogger` calls)."""
        if self._accepted - self._written >= self.max_lines:
            self.on_drop()
            return
        self._add(
            {
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes_in": len(request.body),
                "bytes_out": len(response.body),
            }
        )

    def grpc(self, path: str, status: int, grpc_status: str, bytes_in: int, bytes_out: int, seconds: float) -> None:
        """The line for one gRPC call: `status` is the HTTP status its V2 error carries (200 when it succeeded)."""
        if self._accepted - self._written >= self.max_lines:
            self.on_drop()
            return
        self._add(
            {
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "protocol": "grpc",
                "method": "POST",
                "path": path,
                "status": status,
                "grpc_status": grpc_status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
            }
        )

    def _add(self, document: dict[str, Any]) -> None:
        self._accepted += 1
        self._lines.append(orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval_s, self.flush)

    def flush(self) -> None:
        """Hand the buffered lines to the writer thread (started on first use); never blocks."""
        self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_batches, name="tandem-access-log", daemon=True)
            self._writer.start()
        self._batches.put(lines)

    def close(self, timeout_s: float = 1.0) -> None:
        """Write what is buffered and stop the writer, waiting at most `timeout_s` for a blocked stream (the
        thread is a daemon: one that stays blocked does not keep the process alive)."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._writer is not None:
            self._batches.put(None)
            self._writer.join(timeout_s)
            self._writer = None

    def _write_batches(self) -> None:
        while (lines := self._batches.get()) is not None:
            try:
                self.stream.write(b"".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._written += len(lines)
