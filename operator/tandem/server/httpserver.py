"""A lean HTTP/1.1 server on asyncio and httptools: keep-alive, pipelining, limits, timeouts, graceful drain.

Why not a framework: at thousands of small requests per second on one core, ASGI layers (scope dicts,
send/receive coroutines, middleware) cost more than the inference of a small model. This server parses with
httptools (llhttp, the parser of Node.js), hands a complete `Request` to one handler, and writes its
`Response` with a precomputed status line. The handler may answer directly (health, metadata) or return an
awaitable (inference), in which case later pipelined requests on that connection wait their turn, and
other connections go on being served.

Defences against clients that hold resources without using them, each with a default in `config`:
- timeouts: a connection idle between requests is closed; a request whose headers (or body) do not arrive
  in time gets 408 and the connection is closed. One sweep per tick checks every connection's deadline,
  cheaper than a timer per request at thousands of requests per second.
- a bound on open connections: one more is answered 503 with Retry-After and closed at once.
- bounds on what a request may make the server hold before it is parsed: a request target over
  `max_url_bytes` is answered 414, a head (request line and headers) over `max_header_bytes` 431, each as
  soon as the limit is crossed, never echoing the request back. httptools joins the pieces of a header value
  that arrive in separate reads with `+=` (quadratic in the pieces); the bound keeps that join small. After a
  refusal the parser has lost its place: the connection answers what it owes, then closes, reading and
  dropping what the client still sends for a moment (a lingering close, as nginx does), so the client reads
  the answer instead of a reset.
- write back-pressure: a connection whose answers are not being read stops being read. Once the transport
  holds more than `WRITE_HIGH_WATER` unsent bytes (asyncio's `pause_writing`), or `MAX_QUEUED` requests wait
  for their turn, the server stops reading it, stops parsing what it has read (keeping at most the rest of one
  read) and stops answering its queued requests; health, metadata, metrics, 404 and 405 answers count as
  inference answers do. It resumes once the client has read enough (`resume_writing`) and the queue has
  drained. A client that reads nothing for `idle_timeout_s` while answers wait is cut off (nothing more can be
  said to it). So a connection holds at most about: one read, the requests of one `HEAD_PIECE`, and
  `WRITE_HIGH_WATER` plus one answer, however much it pipelines.
- a memory budget (`budget.MemoryBudget`), shared with gRPC. A head still arriving past `HEAD_UNCHARGED`
  bytes is charged what the head limits let a connection hold of one (twice `max_header_bytes`) until it is
  complete, so many connections sending large heads are refused 503 once the budget is spent, while the
  small heads of ordinary requests cost no charge. A request is checked against what its body will
  make the server hold once its headers are read (from Content-Length), holds the body's bytes as they arrive
  and its whole charge once it is complete, before it is parsed (so declared bodies never sent hold nothing);
  a body of unknown length is charged in full chunk by chunk as it streams in. One the budget cannot hold now
  is answered 503 with Retry-After, one it could never hold 413, before its body is read further (or, if the
  budget was taken while it arrived, once complete), never parsed, and without a `100 Continue`; then the
  connection closes as after any refusal. The charge is held while the request waits in the connection's
  queue and runs, and given back when its answer is written or the connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools

from tandem.server import config
from tandem.server.budget import MemoryBudget
from tandem.server.errors import Overloaded, ServerError

log = logging.getLogger("tandem.server.httpserver")

_REASONS = {status.value: status.phrase for status in HTTPStatus}
MAX_QUEUED = 32
"""Pipelined requests waiting per connection (for the one in progress, or for the client to read) before the
server stops reading from it."""
WRITE_HIGH_WATER = 64 * 1024
"""Unsent response bytes a connection's transport may hold before the server stops reading and answering it
(asyncio's and uvloop's default, set explicitly so the bound is ours); reading resumes below a quarter of it."""
HEAD_PIECE = 4096
"""Between requests, reads are parsed this many bytes at a time, so a read full of tiny pipelined requests is
parsed only as far as the connection may queue: the rest waits, unparsed, until its answers are read."""
HEAD_UNCHARGED = 8 * 1024
"""Bytes of an incomplete head a connection holds without a charge to the memory budget: more than the heads of
ordinary requests, proxies' headers included, so only a large or dribbled head pays; what every connection may
hold uncharged is this times `max_connections`, beside the server's baseline."""
_LINGER_S = 2.0
"""After a refusal, how long the connection keeps reading (and dropping) what the client sent before it read
the answer; closing with unread bytes would reset the connection and could destroy the answer in flight."""


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes = b""
    received: float = field(default_factory=time.perf_counter)
    """perf_counter when the request was complete; latency is measured from here."""
    charge: int = 0
    """Bytes of the memory budget the request holds until its answer is written."""


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], "Response | Awaitable[Response]"]
AccessLogger = Callable[[Request, Response, float], None]
Charge = Callable[[int, Mapping[str, str]], int]
"""What a body of so many bytes, with these (lower-case) request headers, is charged to the memory budget."""


def error_response(status: int, message: str) -> Response:
    """A JSON `{"error": message}` response without going through the JSON library's numpy options."""
    import orjson

    return Response(status, orjson.dumps({"error": message}))


def _head(response: Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"
        f"content-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\n"
    ]
    lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class HttpServer:
    """Listens on one or more sockets and serves every connection with the same handler."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_request_bytes: int = config.DEFAULT_MAX_REQUEST_BYTES,
        access_log: AccessLogger | None = None,
        idle_timeout_s: float = config.DEFAULT_IDLE_TIMEOUT_S,
        header_timeout_s: float = config.DEFAULT_HEADER_TIMEOUT_S,
        body_timeout_s: float = config.DEFAULT_BODY_TIMEOUT_S,
        max_connections: int = config.DEFAULT_MAX_CONNECTIONS,
        max_url_bytes: int = config.DEFAULT_MAX_URL_BYTES,
        max_header_bytes: int = config.DEFAULT_MAX_HEADER_BYTES,
        budget: MemoryBudget | None = None,
        charge: Charge = lambda length, headers: length,
    ) -> None:
        self.handler = handler
        self.max_request_bytes = max_request_bytes
        self.max_url_bytes = max_url_bytes
        """Bytes of a request target; more is answered 414."""
        self.max_header_bytes = max_header_bytes
        """Bytes of a request head (request line and headers); more is answered 431."""
        self.budget = budget
        """Request bodies are charged to it before they are read; None: no budget."""
        self.charge = charge
        self.access_log = access_log
        self.idle_timeout_s = idle_timeout_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_connections = max_connections
        self.connections: set[HttpConnection] = set()
        self.draining = False
        self.refused = 0
        """Connections turned away with 503 because `max_connections` were open."""
        self._servers: list[asyncio.AbstractServer] = []
        self._idle = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick = min(1.0, max(0.05, min(idle_timeout_s, header_timeout_s, body_timeout_s) / 4))

    async def listen(self, host: str, port: int, handler: Handler | None = None) -> int:
        """Start accepting on host:port (0 picks a free port); returns the bound port."""
        loop = asyncio.get_running_loop()
        chosen = handler or self.handler
        server = await loop.create_server(
            lambda: HttpConnection(self, chosen), host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick, self._sweep)
        sockets: tuple[Any, ...] = tuple(server.sockets or ())
        bound: int = sockets[0].getsockname()[1] if sockets else port
        return bound

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let in-flight requests finish, close idle connections; False on timeout."""
        self.draining = True
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            connection.close_if_idle()
        try:
            async with asyncio.timeout(timeout):
                while self.connections:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            log.warning("drain timed out", extra={"open_connections": len(self.connections)})
            for connection in list(self.connections):
                connection.abort()
            return False
        return True

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for connection in list(self.connections):
            connection.check_deadline(now)
        self._sweeper = loop.call_later(self._tick, self._sweep)

    def release(self, charge: int) -> None:
        if charge and self.budget is not None:
            self.budget.release(charge)

    def _forget(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._idle.set()


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing a request the server refuses to read further."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


def _refusal(error: ServerError) -> _Refusal:
    """The refusal of a request the memory budget cannot hold (503 with Retry-After) or could never hold (413)."""
    return _Refusal(error.status, error.message, error.retry_after_s if isinstance(error, Overloaded) else None)


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and writes responses in order."""

    def __init__(self, server: HttpServer, handler: Handler) -> None:
        self.server = server
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bool, Response | None]] = deque()
        self.busy = False
        self.closing = False
        self.paused = False
        """Reading is paused: the client has not read its answers, or too many of its requests wait."""
        self.writing_paused = False
        """The transport holds more than WRITE_HIGH_WATER unsent bytes: queued requests wait to be answered."""
        self.backlog = b""
        """Bytes read before reading was paused but not yet parsed; parsed first when reading resumes."""
        self._consuming = False
        self._write_deadline: float | None = None
        """loop.time() by which a client whose answers pile up must have read some; then it is cut off."""
        self.in_message = False
        self._url: list[bytes] = []
        """The pieces of the request target, joined once it is complete (linear, where `+=` is quadratic)."""
        self._url_size = 0
        self._in_head = True
        """The head of the next or current request is not complete yet (bytes received now count toward it)."""
        self._head_size = 0
        """Bytes of the current head counted so far (those of pieces of reads that held nothing else)."""
        self._heads = 0
        """Heads completed on this connection: tells whether a piece held nothing but the open head."""
        self._refused = False
        """A request was refused unread: nothing more is parsed; the connection answers what it owes, then closes."""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._charge = 0
        """Bytes of the memory budget held for the request being read."""
        self._declared = 0
        """The Content-Length of the body being read (0: none)."""
        self._whole = 0
        """The whole charge of a body with a Content-Length, held once it has all arrived."""
        self._streamed = False
        """The body being read has no Content-Length: it is charged as it arrives."""
        self._keep_alive = True
        self._continue_owed = False
        """The request being read asked for `100 Continue`, not yet sent: responses owed before it come first."""
        self._loop = asyncio.get_running_loop()
        self.deadline: float | None = self._loop.time() + server.idle_timeout_s
        """loop.time() by which the connection must make progress: the next request, its headers, its body."""
        self.waiting_for = "idle"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if len(self.server.connections) >= self.server.max_connections:
            self.server.refused += 1
            response = error_response(503, f"server at its limit of {self.server.max_connections} connections")
            response.headers.append(("retry-after", "1"))
            self.closing = True
            self.transport.write(_head(response, False) + response.body)
            self.transport.close()
            return
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self._drop_owed()
        self.server._forget(self)

    def data_received(self, data: bytes) -> None:
        if self.backlog:  # a read that was under way as reading paused: it goes after what was held back
            self.backlog += data
            return
        if not self._holding() and (
            len(data) <= HEAD_PIECE or (len(data) <= self.server.max_header_bytes and data.count(b"\r\n\r\n") <= 1)
        ):
            # At most one head ends in this read, so at most one request is queued by parsing it whole, and a
            # head that begins in it stays within the head limit: as safe as parsing it in pieces, and cheaper.
            self._receive(data)
            if self._holding():
                self._pause()
            return
        self._consume(data)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._write_deadline = self._loop.time() + self.server.idle_timeout_s
        self._pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._write_deadline = None
        if not self.busy:
            self._dispatch()  # answers what waited, then resumes reading

    # flow control

    def _holding(self) -> bool:
        """Whether the connection owes as much as it may: read, parse and answer no more until the client reads."""
        return self.writing_paused or len(self.queue) >= MAX_QUEUED

    def _pause(self) -> None:
        if self.paused or self._refused or self.transport is None:
            return  # after a refusal the connection reads on, dropping what comes, until it closes
        self.paused = True
        self.transport.pause_reading()

    def _resume(self) -> None:
        """Parse what was held back, then read again, unless that fills the connection up again."""
        if not self.paused or self._consuming or self.closing or self.transport is None or self._holding():
            return
        backlog, self.backlog = self.backlog, b""
        if backlog:
            self._consume(backlog)
            if self._holding() or self.closing or self.transport is None:
                return
        self.paused = False
        self.transport.resume_reading()

    def _consume(self, data: bytes) -> None:
        """Parse `data` in pieces, keeping what is left in `backlog` as soon as the connection holds enough.

        Pieces are no larger than the head limit: a head that begins inside a piece, after the end of the
        request before it, is counted from the next piece on, so none grows past twice the limit unrefused.
        Between requests they are HEAD_PIECE bytes, so a read of tiny pipelined requests stops being parsed
        within a piece of the queue's bound."""
        view = memoryview(data)
        start, total = 0, len(data)
        self._consuming = True
        try:
            while start < total:
                if self._holding() and not self._refused:
                    self.backlog = bytes(view[start:])
                    break
                step = HEAD_PIECE if self._in_head else self.server.max_header_bytes
                if not self._receive(view[start : start + step]):
                    return
                start += step
        finally:
            self._consuming = False
        if self._holding():
            self._pause()

    def _receive(self, data: bytes | memoryview) -> bool:
        """Parse one piece of a read, counting it toward the open head; False once the connection reads no more."""
        if self._refused:
            return False  # lingering after a refusal: what the client still sends is read and dropped
        if not self._in_head:
            return self._feed(data)
        heads, room = self._heads, self.server.max_header_bytes - self._head_size
        if len(data) <= room:
            if self._feed(data) and heads == self._heads:
                self._head_size += len(data)  # all of it was head (a piece that also ends one is not counted)
                if self._head_size > HEAD_UNCHARGED and not self._charge:
                    self._charge_head()
            return not self._refused
        # Feed only what the head may still take: if it is still open after that, the next byte crosses the limit.
        view = memoryview(data)
        if not self._feed(view[:room]):
            return False
        if heads == self._heads:
            self._refuse(431, f"request headers exceed the limit of {self.server.max_header_bytes} bytes")
            return False
        return self._feed(view[room:])

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse `data`; False if the connection answered an error and reads nothing more."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
            return False
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refusal):
                self._refuse(refusal.status, refusal.message, refusal.retry_after_s)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")
            return False
        return not self._refused

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.in_message = True
        self.deadline = self._loop.time() + self.server.header_timeout_s
        self.waiting_for = "headers"
        self._url = []
        self._url_size = 0
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False
        self._streamed = False
        self._continue_owed = False

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self.server.max_url_bytes:
            raise _Refusal(414, f"request target exceeds the limit of {self.server.max_url_bytes} bytes")
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._charge:  # a large head's: what the body holds is charged from here on
            self.server.release(self._charge)
            self._charge = 0
        self._in_head = False
        self._head_size = 0
        self._heads += 1
        self.deadline = self._loop.time() + self.server.body_timeout_s
        self.waiting_for = "body"
        self._keep_alive = self.parser.should_keep_alive()
        length = self._headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.server.max_request_bytes:
            self._too_large = True
            return
        self._streamed = declared is None  # a chunked body, if any: charged chunk by chunk in on_body
        self._declared = declared or 0
        if declared and self.server.budget is not None:
            # Refused now if the whole body could not be held now; but held only as it arrives (its bytes), and
            # its whole charge once complete: a client that declares a body and never sends it holds nothing.
            self._whole = self.server.charge(declared, self._headers)
            try:
                self.server.budget.check(self._whole)
            except ServerError as exc:
                raise _refusal(exc) from None
        if self._headers.get("expect", "").lower() == "100-continue":
            # Interim answers keep the order of final ones: behind a pipelined request still running, the 100
            # waits until that request's response is written (`_dispatch`).
            self._continue_owed = True
            if not self.busy and not self.queue:
                self._send_continue()

    def _charge_head(self) -> None:
        """Hold a large head's charge, what the head limits let it grow to; refuse the request (503) when the
        budget cannot. Called between parser calls, so the refusal is answered here rather than raised."""
        try:
            self._hold(2 * self.server.max_header_bytes)
        except _Refusal as refusal:
            self._refuse(refusal.status, refusal.message, refusal.retry_after_s)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._size += len(body)
        if self._size > self.server.max_request_bytes:
            self._too_large = True
            self._body = []
            self.server.release(self._charge)
            self._charge = 0
            return
        if self._streamed:
            self._hold(self.server.charge(self._size, self._headers))
        elif self._size < self._declared:
            self._hold(self._size)  # the bytes of a body still arriving (it is not parsed before it is complete)
        self._body.append(body)

    def _hold(self, charge: int) -> None:
        """Hold `charge` bytes of the budget for the request being read, counting what it holds already; raise
        _Refusal (503 or 413) when the budget cannot."""
        budget = self.server.budget
        if budget is None or charge <= self._charge:
            return
        try:
            budget.take(charge - self._charge, total=charge)
        except ServerError as exc:
            raise _refusal(exc) from None
        self._charge = charge

    def on_message_complete(self) -> None:
        if not self._too_large and not self._streamed and self._size:
            self._hold(self._whole)  # the whole charge of a body that has all arrived, before it is parsed
        self.in_message = False
        self._continue_owed = False  # the body came without it: a 100 now would be taken for the answer's start
        self._in_head = True
        self.deadline = None
        method = self.parser.get_method().decode("latin-1")
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        path = url.split(b"?", 1)[0].decode("latin-1")
        if self._too_large:
            canned: Response | None = error_response(
                413, f"request body exceeds the limit of {self.server.max_request_bytes} bytes"
            )
            request = Request(method, path, self._headers)
            self.queue.append((request, False, canned))
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            request = Request(method, path, self._headers, body, charge=self._charge)
            self.queue.append((request, self._keep_alive, None))
        self._charge = 0
        if not self.busy:
            self._dispatch()

    # dispatch

    def _dispatch(self) -> None:
        while self.queue and not self.closing and not self.writing_paused:
            request, keep_alive, canned = self.queue.popleft()
            if canned is not None:
                self._write(request, canned, keep_alive)
                continue
            try:
                result = self.handler(request)
            except Exception:
                log.exception("handler failed", extra={"path": request.path})
                result = error_response(500, "internal server error")
            if isinstance(result, Response):
                self._write(request, result, keep_alive)
                continue
            self.busy = True
            asyncio.get_running_loop().create_task(self._finish(request, result, keep_alive))
            return
        if self._continue_owed and not self.queue and not self.closing:
            self._send_continue()
        self._resume()
        if not self.in_message and not self.queue and not self.closing:
            self.deadline = self._loop.time() + self.server.idle_timeout_s
            self.waiting_for = "idle"

    def _send_continue(self) -> None:
        self._continue_owed = False
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _finish(self, request: Request, pending: Awaitable[Response], keep_alive: bool) -> None:
        try:
            response = await pending
        except Exception:
            log.exception("handler failed", extra={"path": request.path})
            response = error_response(500, "internal server error")
        self.busy = False
        self._write(request, response, keep_alive)
        self._dispatch()

    def _write(self, request: Request, response: Response, keep_alive: bool) -> None:
        self.server.release(request.charge)
        request.charge = 0
        transport = self.transport
        if transport is None:
            return
        keep_alive = keep_alive and not self.server.draining
        head = _head(response, keep_alive)
        if request.method == "HEAD":
            transport.write(head)  # the headers a GET would get, content-length included; no body
        elif len(response.body) < 16384:
            transport.write(head + response.body)
        else:
            transport.writelines([head, response.body])
        if self.server.access_log is not None:
            self.server.access_log(request, response, time.perf_counter() - request.received)
        if not keep_alive or (self.server.draining and not self.queue and not self.in_message):
            self.closing = True
            if self._refused and transport.can_write_eof():
                transport.write_eof()  # the answer, then end of stream; read (and drop) until the client closes
                self.deadline = self._loop.time() + _LINGER_S
                self.waiting_for = "linger"
                self.backlog = b""
                if self.paused:
                    self.paused = False
                    transport.resume_reading()
            else:
                transport.close()

    def _refuse(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        """Answer the request being read with `status` once the responses owed before it are written, read no
        more of it, then close. Its target is not echoed: neither the answer nor the access log repeats it."""
        method = self.parser.get_method().decode("latin-1") if self._url_size else ""
        self._refused = True
        self._continue_owed = False
        self.in_message = False
        self.deadline = None
        self._url, self._headers, self._body = [], {}, []
        self.server.release(self._charge)
        self._charge = 0
        response = error_response(status, message)
        if retry_after_s is not None:
            response.headers.append(("retry-after", str(retry_after_s)))
        self.queue.append((Request(method, "", {}), False, response))
        if not self.busy:
            self._dispatch()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed and close: the stream position is lost."""
        self._drop_owed()
        if self.transport is not None:
            response = error_response(status, message)
            self.transport.write(_head(response, False) + response.body)
            self.closing = True
            self.transport.close()

    def _drop_owed(self) -> None:
        """Forget the requests not answered yet and the one being read, giving their charges back to the budget
        (the one a handler is running keeps its charge until its answer is written)."""
        for request, _, _ in self.queue:
            self.server.release(request.charge)
        self.queue.clear()
        self.server.release(self._charge)
        self._charge = 0

    def check_deadline(self, now: float) -> None:
        """Close the connection if it missed its deadline: quietly when idle, with 408 mid-request."""
        if self._write_deadline is not None and now >= self._write_deadline:
            self.abort()  # its answers have waited unread for the idle timeout: nothing more can be said to it
            return
        if self.deadline is None or now < self.deadline or self.transport is None:
            return
        if self.waiting_for in ("idle", "linger"):
            self.closing = True
            self.transport.close()
        elif self.busy or self.queue:
            self.abort()  # a stalled pipelined request behind one in progress: no clean place for a 408
        else:
            self._fail(408, f"request {self.waiting_for} not received within the timeout")

    def close_if_idle(self) -> None:
        if not self.busy and not self.queue and not self.in_message and self.transport is not None:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
