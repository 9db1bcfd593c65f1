"""The Open Inference Protocol V2 gRPC service (`inference.GRPCInferenceService`) on grpcio's asyncio server.

It runs in the same event loop as the HTTP front and calls the same data plane, so a request decodes,
validates and runs exactly as its REST twin does. Requests arrive as bytes and are parsed here, not by grpcio:
grpcio answers a request it cannot deserialize with INTERNAL, and a malformed request is the client's fault
(INVALID_ARGUMENT). Every error the data plane raises maps to the gRPC code of its V2 status; the repository
calls are not served, and grpcio answers them UNIMPLEMENTED. Infer requests are counted in the same metrics
as REST, under the HTTP status their V2 error carries, and every call gets a line in the access log as a
REST request does.

What a client can make it hold is bounded before anything is decoded. grpcio reads a unary call's whole
message before its handler runs, so the server could not charge a message to its memory budget until after
it was held. So every method is served as grpcio's stream-unary (the wire is the same; a client sees a unary
call), and its one message is read only once one of `readers` reading slots is free: a message is held, at
most `max_message_bytes` (grpcio refuses a larger one, RESOURCE_EXHAUSTED), by at most `readers` calls at a
time, and the budget keeps room for them (`budget.grpc_message_bytes`). A call waiting for a slot holds no
more than its HTTP/2 stream window: the window does not grow with bandwidth estimates (BDP probing is off),
and only a read asks the client for the rest. A message not read within `read_timeout_s` ends its call with
DEADLINE_EXCEEDED, so slow senders do not keep the slots. Calls in progress are bounded by
`max_concurrent_rpcs` (grpcio answers one more RESOURCE_EXHAUSTED before its message is read). Once read, a
message is charged to the memory budget the HTTP front also uses (`budget.grpc_charge`) before it is parsed:
one the budget cannot hold now is answered RESOURCE_EXHAUSTED with a `grpc-retry-pushback-ms` hint, and its
bytes come back when the call ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError

from tandem.server import grpccodec, proto, serverinfo
from tandem.server.budget import MemoryBudget, grpc_charge
from tandem.server.dataplane import DataPlane
from tandem.server.errors import MemoryExhausted, Overloaded, ServerError
from tandem.server.logs import AccessLog
from tandem.server.metrics import ServerMetrics

log = logging.getLogger("tandem.server.grpc")

STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""V2 error status -> gRPC code. 503 (not ready, or overloaded) is UNAVAILABLE, which clients retry."""

Method = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]


class GrpcFront:
    """Serves V2 gRPC for a data plane; `listen` starts it, `drain` stops it after in-flight calls finish."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        *,
        max_message_bytes: int,
        idle_timeout_s: float,
        access_log: AccessLog | None = None,
        max_concurrent_rpcs: int | None = None,
        budget: MemoryBudget | None = None,
        readers: int | None = None,
        read_timeout_s: float = 60.0,
    ) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.idle_timeout_s = idle_timeout_s
        self.access_log = access_log
        self.max_concurrent_rpcs = max_concurrent_rpcs
        """Calls in progress at once; None: no bound."""
        self.budget = budget
        self.read_timeout_s = read_timeout_s
        self.reading = asyncio.Semaphore(readers) if readers is not None else None
        """Slots for reading messages; None: every call in progress reads at once (there is no memory budget)."""
        self.draining = False
        """Set on SIGTERM: ServerReady answers false; in-flight calls complete."""
        self._server: grpc.aio.Server | None = None

    async def listen(self, host: str, port: int) -> int:
        """Start serving on host:port (0 picks a free port); returns the bound port."""
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # A second server on the same port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout_s * 1000)),
            # A call's stream window stays at its initial size until its message is read, whatever the link.
            ("grpc.http2.bdp_probe", 0),
        ]
        server = grpc.aio.server(options=options, maximum_concurrent_rpcs=self.max_concurrent_rpcs)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(proto.SERVICE, self._handlers())])
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        await server.start()
        self._server = server
        return bound

    async def drain(self, timeout: float) -> None:
        """Refuse new calls, give in-flight ones `timeout` seconds, then cancel what is left."""
        self.draining = True
        if self._server is not None:
            await self._server.stop(timeout)

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        methods: dict[str, Method] = {
            "ServerLive": self._server_live,
            "ServerReady": self._server_ready,
            "ModelReady": self._model_ready,
            "ServerMetadata": self._server_metadata,
            "ModelMetadata": self._model_metadata,
            "ModelInfer": self._model_infer,
        }
        return {
            name: grpc.stream_unary_rpc_method_handler(self._guarded(name, method)) for name, method in methods.items()
        }

    def _guarded(self, name: str, method: Method) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Any]:
        """The method answering the call's one message, read in a reading slot; every ServerError answered by
        its gRPC code and message, bugs by INTERNAL; each call gets an access-log line, written before an error
        aborts it."""
        path = f"/{proto.SERVICE}/{name}"

        async def call(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            data = await self._read(context)
            charge = 0
            try:
                charge = self._charge(data)
                reply = _serialize(await method(data, context))
            except ServerError as exc:
                error: ServerError | None = exc
            except Exception:
                log.exception("gRPC call failed", extra={"method": name})
                error = None
            else:
                if self.access_log is not None:
                    self.access_log.grpc(path, 200, "OK", len(data), len(reply), time.perf_counter() - started)
                return reply
            finally:
                if charge and self.budget is not None:
                    self.budget.release(charge)
            status, message = (error.status, error.message) if error is not None else (500, "internal server error")
            code = _code(error)
            if self.access_log is not None:
                self.access_log.grpc(path, status, code.name, len(data), 0, time.perf_counter() - started)
            await context.abort(code, message, _trailers(error))

        return call

    async def _read(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one message, read once a slot is free; the call is aborted if it sends none in time."""
        try:
            async with self.reading or nullcontext(), asyncio.timeout(self.read_timeout_s):
                message = await context.read()
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"request message not received within {self.read_timeout_s:g} s"
            )
        if message is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")
        return cast(bytes, message)

    def _charge(self, data: bytes) -> int:
        """Charge the call's message to the memory budget before it is parsed; the bytes charged."""
        if self.budget is None:
            return 0
        charge = grpc_charge(len(data))
        self.budget.take(charge)
        return charge

    async def _server_live(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        return proto.ServerLiveResponse(live=True)

    async def _server_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        return proto.ServerReadyResponse(ready=self.dataplane.ready() and not self.draining)

    async def _model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = _parse(proto.ModelReadyRequest, data)
        model = self.dataplane.model(request.name, request.version or None)
        return proto.ModelReadyResponse(ready=model.ready)

    async def _server_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        return proto.ServerMetadataResponse(
            name=serverinfo.NAME, version=serverinfo.VERSION, extensions=serverinfo.EXTENSIONS
        )

    async def _model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = _parse(proto.ModelMetadataRequest, data)
        return grpccodec.metadata_response(self.dataplane.metadata(request.name, request.version or None))

    async def _model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        message = _parse(proto.ModelInferRequest, data)
        name = message.model_name
        label = name if name in {model.name for model in self.dataplane.models} else "_unknown"
        self.metrics.started(label)
        status = 500
        try:
            response = grpccodec.encode_response(await self.dataplane.infer(grpccodec.decode_request(message)))
            status = 200
            return response
        except ServerError as exc:
            status = exc.status
            raise
        finally:
            self.metrics.finished(label, status, time.perf_counter() - started)


def _code(error: ServerError | None) -> grpc.StatusCode:
    """The gRPC code of a V2 error: a spent memory budget is RESOURCE_EXHAUSTED, not UNAVAILABLE (the client
    asked for more than the server can hold now); None, a bug, is INTERNAL."""
    if error is None:
        return grpc.StatusCode.INTERNAL
    if isinstance(error, MemoryExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


def _trailers(error: ServerError | None) -> tuple[tuple[str, str], ...]:
    """gRPC's retry pushback for an error that says when to retry (gRFC A6), as REST's Retry-After."""
    if isinstance(error, Overloaded):
        return (("grpc-retry-pushback-ms", str(error.retry_after_s * 1000)),)
    return ()


class _BadMessage(ServerError):
    status = 400


def _parse(message_type: Any, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise _BadMessage(f"request is not a valid {message_type.DESCRIPTOR.name}: {exc}") from None


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
