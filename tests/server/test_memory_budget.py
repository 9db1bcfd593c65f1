"""The memory budget: what clients' requests make the server hold is charged before anything is parsed.

A request the budget cannot hold now gets 503 with Retry-After (gRPC RESOURCE_EXHAUSTED) before its body is
read, one it could never hold 413; small requests are served through a flood of large ones; every byte comes
back when the request is answered or its connection is lost. Servers run in process; waits are on the
server's own state, never on the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest

from tandem.server import proto
from tandem.server.budget import (
    BINARY_EXPANSION,
    GRPC_EXPANSION,
    GRPC_READ_COPIES,
    GRPC_READERS,
    JSON_EXPANSION,
    KEPT_FOR_SMALL,
    MemoryBudget,
    body_charge,
    grpc_message_bytes,
    rest_charge,
)
from tandem.server.config import DEFAULT_MAX_REQUEST_BYTES
from tandem.server.dataplane import DataPlane
from tandem.server.errors import MemoryExhausted, PayloadTooLarge
from tandem.server.grpcserver import GrpcFront
from tandem.server.httpserver import HEAD_UNCHARGED, HttpServer, Request, Response
from tandem.server.metrics import ServerMetrics
from tandem.server.model import OnnxModel, SessionSettings
from tandem.server.rest import RestApp
from tandem.server.wire import InferRequest, InferResponse

MiB = 1 << 20


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds (each check after the server has had its turn)."""
    while not condition():
        await asyncio.sleep(0)


async def read_all(reader: asyncio.StreamReader, end: bytes | None = None) -> bytes:
    """What the server sends until it closes the connection, or until it has sent what ends with `end`."""
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if end is not None and data.endswith(end):
            break
    return bytes(data)


def infer_body(rows: int) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": [0.5] * rows * 4}]}
    )


def post(body: bytes, *extra: bytes) -> bytes:
    head = b"POST /v2/models/linear/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
    return head + b"".join(extra) + b"\r\n" + body


# the budget itself


def test_a_request_is_charged_its_body_times_what_decoding_may_make_of_it() -> None:
    assert body_charge(1000, None) == 1000 * JSON_EXPANSION
    assert body_charge(1000, 100) == 100 * JSON_EXPANSION + 900 * BINARY_EXPANSION
    assert body_charge(1000, 5000) == 1000 * JSON_EXPANSION  # a header length outside the body is no help
    assert rest_charge(1000, {"inference-header-content-length": "100"}) == body_charge(1000, 100)
    assert rest_charge(1000, {"inference-header-content-length": "x"}) == body_charge(1000, None)


def test_the_budget_refuses_what_it_cannot_hold_now_and_what_it_could_never_hold() -> None:
    budget = MemoryBudget(64 * MiB)
    budget.take(40 * MiB)
    with pytest.raises(MemoryExhausted):
        budget.take(20 * MiB)  # fits the budget, not what is left of it
    with pytest.raises(PayloadTooLarge):
        budget.take(60 * MiB)  # beyond what large requests may ever hold together
    budget.release(40 * MiB)
    assert budget.held == 0
    budget.take(20 * MiB)
    assert budget.held == 20 * MiB


def test_small_requests_keep_a_share_that_large_ones_may_not_take() -> None:
    budget = MemoryBudget(64 * MiB)
    while True:
        try:
            budget.take(budget.small + 1)  # large, each just above the line
        except MemoryExhausted:
            break
    assert budget.held <= budget.large_limit
    kept = int(budget.limit * KEPT_FOR_SMALL)
    for _ in range(kept // budget.small):
        budget.take(budget.small)
    assert budget.held <= budget.limit


# HTTP


@dataclass
class Gate:
    """Holds the requests that carry an `x-hold` header until opened: a request held keeps its charge."""

    handler: Callable[[Request], Response | Awaitable[Response]]
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    handled: list[str] = field(default_factory=list)

    async def __call__(self, request: Request) -> Response:
        self.handled.append(request.path)
        if "x-hold" in request.headers:
            self.held += 1
            await self.opened.wait()
        result = self.handler(request)
        return result if isinstance(result, Response) else await result


@asynccontextmanager
async def http_server(gate: Gate, budget: MemoryBudget) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(gate, budget=budget, charge=rest_charge)
    port = await server.listen("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        gate.opened.set()
        assert await server.drain(30)


def echo(request: Request) -> Response:
    return Response(200, b"%d" % len(request.body))


def test_large_heads_still_arriving_are_charged_and_refused_503_once_the_budget_is_spent() -> None:
    async def exchange() -> tuple[int, int, list[bytes], int, bytes, int]:
        gate, budget = Gate(echo), MemoryBudget(2 * MiB)
        server = HttpServer(gate, budget=budget, max_header_bytes=64 * 1024)
        port = await server.listen("127.0.0.1", 0)
        per_head = 2 * server.max_header_bytes
        fits = budget.large_limit // per_head  # each charge is a large request's at this budget
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(fits + 4)]
        large_head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Large: " + b"a" * (HEAD_UNCHARGED + 1)
        for _, writer in connections[:fits]:
            writer.write(large_head)  # never completed
        await until(lambda: budget.held == fits * per_head)
        held = budget.held
        for _, writer in connections[fits:]:
            writer.write(large_head)
        refused = [await connection[0].readuntil(b"}") for connection in connections[fits:]]
        reader, writer = connections[0]
        writer.write(b"\r\n\r\n")  # the first head completes: its charge comes back, the request is served
        served = await reader.readuntil(b"\r\n\r\n0")
        after_one = budget.held
        for _, writer in connections:
            writer.close()
        await until(lambda: budget.held == 0)
        await server.drain(30)
        return fits, held, refused, after_one, served, budget.held

    fits, held, refused, after_one, served, after = asyncio.run(exchange())
    assert fits > 0 and held == fits * 2 * 64 * 1024
    assert all(answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1\r\n" in answer for answer in refused)
    assert served.startswith(b"HTTP/1.1 200 ") and after_one == held - 2 * 64 * 1024
    assert after == 0


def test_with_the_budget_spent_an_ordinary_head_arriving_a_piece_at_a_time_is_still_served() -> None:
    async def exchange() -> bytes:
        gate, budget = Gate(echo), MemoryBudget(2 * MiB)
        async with http_server(gate, budget) as (_, port):
            budget.take(budget.large_limit)
            while budget.held + budget.small <= budget.limit:
                budget.take(budget.small)  # the small requests' share too
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Trace: " + b"t" * 4000 + b"\r\n\r\n"
            for start in range(0, len(head), 500):
                writer.write(head[start : start + 500])
                await writer.drain()
            answer = await reader.readuntil(b"\r\n\r\n0")
            writer.close()
            budget.release(budget.held)
        return answer

    assert asyncio.run(exchange()).startswith(b"HTTP/1.1 200 ")


def test_a_body_the_budget_cannot_hold_now_is_refused_with_503_and_retry_after_before_it_is_sent() -> None:
    async def exchange() -> tuple[bytes, bytes, Gate, MemoryBudget]:
        gate, budget = Gate(echo), MemoryBudget(64 * MiB)
        async with http_server(gate, budget) as (_, port):
            holder_reader, holder = await asyncio.open_connection("127.0.0.1", port)
            holder.write(post(b"x" * 1000, b"x-hold: 1\r\n"))
            await until(lambda: gate.held == 1)
            others = budget.large_limit - budget.held
            budget.take(others)  # what other requests hold: the large requests' share is spent
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # only the head: the answer must come without the body, so the body was never read, let alone parsed
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % MiB)
            refused = await read_all(reader)
            writer.close()
            budget.release(others)
            gate.opened.set()
            served = await holder_reader.readuntil(b"1000")
            holder.close()
        return refused, served, gate, budget

    refused, served, gate, budget = asyncio.run(exchange())
    assert refused.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1\r\n" in refused and b"connection: close\r\n" in refused
    assert b"memory budget" in refused
    assert served.startswith(b"HTTP/1.1 200 ")
    assert gate.handled == ["/v2/models/linear/infer"]  # the refused request never reached the handler
    assert budget.held == 0


def test_a_client_that_expects_100_continue_gets_503_instead_and_never_sends_its_body() -> None:
    async def exchange() -> bytes:
        gate, budget = Gate(echo), MemoryBudget(64 * MiB)
        async with http_server(gate, budget) as (_, port):
            budget.take(budget.large_limit)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n" % MiB)
            answer = await read_all(reader)
            writer.close()
            budget.release(budget.large_limit)
        return answer

    answer = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 503 ") and b"100 Continue" not in answer


def test_a_body_the_budget_could_never_hold_is_413() -> None:
    async def exchange() -> tuple[bytes, int]:
        gate, budget = Gate(echo), MemoryBudget(64 * MiB)
        async with http_server(gate, budget) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (2 * MiB))  # 80 MiB charged
            answer = await read_all(reader)
            writer.close()
        return answer, budget.held

    answer, held = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"retry-after" not in answer
    assert held == 0


class RecordingBudget(MemoryBudget):
    """A budget that records the whole charge of every request it is asked to hold more for."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.totals: list[int] = []

    def take(self, charge: int, *, total: int | None = None) -> None:
        self.totals.append(charge if total is None else total)
        super().take(charge, total=total)


def test_a_chunked_body_is_charged_as_it_streams_in_and_refused_once_the_budget_could_never_hold_it() -> None:
    async def exchange() -> tuple[bytes, RecordingBudget]:
        gate, budget = Gate(echo), RecordingBudget(64 * MiB)
        async with http_server(gate, budget) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
            # 2 MiB in all, 80 MiB charged: refused part way, once what has come would be more than the budget
            writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 32)
            answer = await read_all(reader)
            writer.close()
        return answer, budget

    answer, budget = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert len(budget.totals) > 1 and budget.totals == sorted(budget.totals)
    assert budget.totals[-1] > budget.large_limit >= budget.totals[-2]
    assert budget.held == 0


def test_the_charges_of_a_request_cut_off_mid_body_and_of_queued_pipelined_ones_come_back() -> None:
    async def exchange() -> tuple[int, int]:
        gate, budget = Gate(echo), MemoryBudget(64 * MiB)
        async with http_server(gate, budget) as (server, port):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            body = b"x" * 1000
            # one held by the handler, two waiting behind it in the connection's queue, one half sent: the three
            # complete ones hold their whole charge, the half-sent one only the 500 bytes that have come
            writer.write(post(body, b"x-hold: 1\r\n") + post(body) * 2 + post(body)[:-500])
            await until(lambda: budget.held == 3 * 1000 * JSON_EXPANSION + 500)
            during = budget.held
            writer.transport.abort()
            await until(lambda: not server.connections)
            gate.opened.set()
            await until(lambda: budget.held == 0)  # the held request's charge comes back once it is answered
        return during, budget.held

    during, after = asyncio.run(exchange())
    assert during == 3 * 1000 * JSON_EXPANSION + 500 and after == 0


def test_many_connections_sending_large_bodies_fast_are_refused_while_a_small_client_keeps_being_served(
    model_dir: Path,
) -> None:
    """16 clients each send a 210 KB JSON body (8 MiB charged) at a 32 MiB budget: the three that the large
    requests' share holds are kept by the handler, the rest get 503 + Retry-After; a client sending small infer
    requests is served throughout, and once everything is answered the budget holds nothing."""
    attackers, small_requests = 16, 20

    async def attack() -> tuple[list[bytes], list[bytes], int, int, int]:
        dataplane = DataPlane(ThreadPoolExecutor(2))
        model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
        model.load()
        dataplane.add(model)
        gate, budget = Gate(RestApp(dataplane, ServerMetrics())), MemoryBudget(32 * MiB)
        large = infer_body(13_000)  # 210 KB
        assert body_charge(len(large), None) > budget.small
        async with http_server(gate, budget) as (_, port):
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(attackers)]
            for _, writer in connections:
                writer.write(post(large, b"x-hold: 1\r\n"))
            fits = budget.large_limit // body_charge(len(large), None)
            answers = [asyncio.ensure_future(read_all(reader, b"}]}")) for reader, _ in connections]
            await until(lambda: gate.held == fits and sum(answer.done() for answer in answers) == attackers - fits)
            assert budget.held >= fits * body_charge(len(large), None)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            served = []
            for _ in range(small_requests):  # while the large requests hold all they may of the budget
                writer.write(post(infer_body(1)))
                served.append(await reader.readuntil(b"}]}"))
            writer.close()
            held_during = budget.held
            gate.opened.set()
            refused = await asyncio.gather(*answers)
            for _, attacker in connections:
                attacker.close()
            await until(lambda: budget.held == 0)
        return refused, served, fits, held_during, budget.held

    answers, served, fits, held_during, held_after = asyncio.run(attack())
    refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503 ")]
    assert fits > 0 and len(refused) == attackers - fits
    assert all(b"retry-after: 1\r\n" in answer for answer in refused)
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers if answer not in refused)
    assert len(served) == small_requests and all(answer.startswith(b"HTTP/1.1 200 ") for answer in served)
    assert held_during <= 32 * MiB and held_after == 0


# gRPC


def gate_infer(dataplane: DataPlane, opened: asyncio.Event, entered: list[int]) -> None:
    """Make the data plane's infer wait for `opened`, counting the calls that reached it."""
    original = dataplane.infer

    async def infer(request: InferRequest) -> InferResponse:
        entered.append(1)
        await opened.wait()
        return await original(request)

    dataplane.infer = infer  # type: ignore[method-assign]


def model_infer_request(rows: int) -> bytes:
    message = proto.ModelInferRequest(model_name="linear")
    message.inputs.add(name="input", datatype="FP32", shape=[rows, 4])
    message.raw_input_contents.append(np.zeros((rows, 4), np.float32).tobytes())
    data: bytes = message.SerializeToString()
    return data


@dataclass
class ServedGrpc:
    """A gRPC front serving the linear model, and a client channel to it."""

    infer: Any
    """ModelInfer as a client calls it (unary)."""
    opened: asyncio.Event
    """Set: the data plane answers infer calls."""
    entered: list[int]
    """One item per infer call that reached the data plane."""
    channel: grpc.aio.Channel
    front: GrpcFront


@asynccontextmanager
async def grpc_front(
    model_dir: Path,
    *,
    max_concurrent_rpcs: int | None = None,
    budget: MemoryBudget | None = None,
    max_message_bytes: int = 64 * MiB,
    readers: int | None = None,
    read_timeout_s: float = 60,
) -> AsyncIterator[ServedGrpc]:
    """A gRPC front whose infer calls wait for `opened`."""
    dataplane = DataPlane(ThreadPoolExecutor(2))
    model = OnnxModel("linear", (model_dir / "linear.onnx").as_uri())
    model.load()
    dataplane.add(model)
    opened, entered = asyncio.Event(), list[int]()
    gate_infer(dataplane, opened, entered)
    front = GrpcFront(
        dataplane, ServerMetrics(), max_message_bytes=max_message_bytes, idle_timeout_s=60,
        max_concurrent_rpcs=max_concurrent_rpcs, budget=budget, readers=readers, read_timeout_s=read_timeout_s,
    )  # fmt: skip
    port = await front.listen("127.0.0.1", 0)
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        infer = channel.unary_unary(f"/{proto.SERVICE}/ModelInfer")
        try:
            yield ServedGrpc(infer, opened, entered, channel, front)
        finally:
            opened.set()
            await front.drain(10)


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_a_flood_of_rpcs_beyond_the_bound_gets_resource_exhausted_and_the_server_serves_on(model_dir: Path) -> None:
    async def flood() -> tuple[list[grpc.StatusCode], list[grpc.StatusCode], grpc.StatusCode]:
        async with grpc_front(model_dir, max_concurrent_rpcs=4) as served:
            infer, opened, entered = served.infer, served.opened, served.entered
            held = [asyncio.ensure_future(code_of(infer(model_infer_request(1)))) for _ in range(4)]
            await until(lambda: len(entered) == 4)
            beyond = await asyncio.gather(*(code_of(infer(model_infer_request(1))) for _ in range(16)))
            opened.set()
            first = await asyncio.gather(*held)
            after = await code_of(infer(model_infer_request(1)))
        return list(beyond), list(first), after

    beyond, first, after = asyncio.run(flood())
    assert beyond == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 16
    assert first == [grpc.StatusCode.OK] * 4 and after == grpc.StatusCode.OK


def test_a_message_the_budget_cannot_hold_now_gets_resource_exhausted_with_retry_pushback(model_dir: Path) -> None:
    async def exchange() -> tuple[grpc.aio.AioRpcError, grpc.StatusCode, int, int]:
        budget = MemoryBudget(64 * MiB)
        message = model_infer_request(4096)  # 64 KiB: 1.5 MiB charged, a large request at this budget
        async with grpc_front(model_dir, budget=budget) as served:
            infer, opened, entered = served.infer, served.opened, served.entered
            held = asyncio.ensure_future(code_of(infer(message)))
            await until(lambda: len(entered) == 1)
            others = budget.large_limit - budget.held
            budget.take(others)  # what other requests hold
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                await infer(message)
            budget.release(others)
            during = budget.held
            opened.set()
            first = await held
        return refusal.value, first, during, budget.held

    refused, first, during, after = asyncio.run(exchange())
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "memory budget" in (refused.details() or "")
    assert ("grpc-retry-pushback-ms", "1000") in tuple(refused.trailing_metadata() or ())
    assert first == grpc.StatusCode.OK
    assert during == len(model_infer_request(4096)) * GRPC_EXPANSION and after == 0


def test_a_message_the_budget_could_never_hold_gets_resource_exhausted_without_being_parsed(model_dir: Path) -> None:
    async def exchange() -> tuple[grpc.StatusCode, list[int], int]:
        budget = MemoryBudget(16 * MiB)
        async with grpc_front(model_dir, budget=budget) as served:
            code = await code_of(served.infer(model_infer_request(64 * 1024)))  # 1 MiB, 24 MiB charged
        return code, served.entered, budget.held

    code, entered, held = asyncio.run(exchange())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and entered == [] and held == 0


def test_a_message_over_the_largest_the_server_reads_gets_resource_exhausted_unread(model_dir: Path) -> None:
    async def exchange() -> tuple[grpc.StatusCode, list[int], grpc.StatusCode]:
        async with grpc_front(model_dir, max_message_bytes=64 * 1024, readers=1) as served:
            served.opened.set()
            code = await code_of(served.infer(model_infer_request(8192)))  # 128 KiB
            after = await code_of(served.infer(model_infer_request(1)))
        return code, served.entered, after

    code, entered, after = asyncio.run(exchange())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and entered == [1]  # only the call after it
    assert after == grpc.StatusCode.OK


def test_a_call_whose_message_never_comes_gives_its_reading_slot_back_and_the_calls_behind_it_are_served(
    model_dir: Path,
) -> None:
    async def exchange() -> tuple[grpc.StatusCode, str, list[grpc.StatusCode]]:
        never = asyncio.Event()

        async def no_message() -> AsyncIterator[bytes]:
            await never.wait()  # headers sent, the message never
            yield b""

        async with grpc_front(model_dir, readers=1, read_timeout_s=1) as served:
            served.opened.set()
            reading = served.front.reading
            assert reading is not None
            silent = served.channel.stream_unary(f"/{proto.SERVICE}/ModelInfer")(no_message())
            await until(reading.locked)  # the silent call holds the only slot
            behind = [asyncio.ensure_future(code_of(served.infer(model_infer_request(1)))) for _ in range(3)]
            with pytest.raises(grpc.aio.AioRpcError) as timed_out:
                await silent
            codes = await asyncio.gather(*behind)
            never.set()
        return timed_out.value.code(), timed_out.value.details() or "", list(codes)

    code, details, behind = asyncio.run(exchange())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "not received within 1 s" in details
    assert behind == [grpc.StatusCode.OK] * 3


def test_the_server_keeps_room_for_reading_grpc_messages_out_of_what_requests_may_hold() -> None:
    from tandem.server.app import InferenceServer
    from tandem.server.config import ServerConfig

    budget = 64 * MiB
    server = InferenceServer(ServerConfig("m", "file:///m.onnx", memory_budget_bytes=budget))
    assert server.grpc.max_message_bytes == grpc_message_bytes(budget, DEFAULT_MAX_REQUEST_BYTES) == 2 * MiB
    assert server.grpc.reading is not None
    readers_room = GRPC_READERS * GRPC_READ_COPIES * server.grpc.max_message_bytes
    assert server.budget is not None and server.budget.limit + readers_room == budget
    unbounded = InferenceServer(ServerConfig("m", "file:///m.onnx"))
    assert unbounded.grpc.reading is None and unbounded.grpc.max_message_bytes == DEFAULT_MAX_REQUEST_BYTES


# the wide session


def test_the_wide_session_is_opened_only_where_the_budget_holds_a_second_copy_of_the_model(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = (model_dir / "linear.onnx").as_uri()
    size = (model_dir / "linear.onnx").stat().st_size
    roomy = OnnxModel("linear", uri, session=SessionSettings(1, 2, wide_session_max_model_bytes=size))
    roomy.load()
    tight = OnnxModel("linear", uri, session=SessionSettings(1, 2, wide_session_max_model_bytes=size - 1))
    with caplog.at_level("WARNING", logger="tandem.server.model"):
        tight.load()
    assert roomy.sessions is not None and roomy.sessions.wide is not None
    assert tight.sessions is not None and tight.sessions.wide is None
    assert any(record.getMessage().startswith("wide session not opened") for record in caplog.records)
    assert tight.predict({"input": np.zeros((1, 4), np.float32)}, ["output"])[0].shape == (1, 2)


def test_the_server_bounds_the_wide_session_by_its_memory_budget() -> None:
    from tandem.server.app import InferenceServer
    from tandem.server.config import ServerConfig

    budget = 64 * MiB
    config = ServerConfig("m", "file:///m.onnx", threads=1, workers=2, lone_run_threads=2, memory_budget_bytes=budget)
    server = InferenceServer(config)
    assert server.model.settings.wide_session_max_model_bytes == budget // 8  # weights x 2 within a quarter
    assert server.http.budget is server.budget and server.grpc.budget is server.budget
    assert server.grpc.max_concurrent_rpcs == 2 + config.max_queued_requests // 2 + 32  # REST keeps half the queue
    unbounded = InferenceServer(ServerConfig("m", "file:///m.onnx", threads=1, workers=2, lone_run_threads=2))
    assert unbounded.budget is None and unbounded.model.settings.wide_session_max_model_bytes is None


# the command


def test_tandem_serve_takes_its_budget_from_the_flag_and_publishes_what_it_holds(model_dir: Path) -> None:
    import urllib.error
    import urllib.request

    from support import server_procs

    budget = 8 * MiB
    metrics_port = server_procs.free_port()
    env = {"TANDEM_MEMORY_BUDGET_BYTES": str(budget), "TANDEM_METRICS_PORT": str(metrics_port)}
    with server_procs.serving(model_dir / "linear.onnx", env=env) as (_, port):
        url = f"http://127.0.0.1:{port}/v2/models/linear/infer"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=infer_body(16 * 1024)), timeout=30)
        with urllib.request.urlopen(urllib.request.Request(url, data=infer_body(1)), timeout=30) as served:
            assert served.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as reply:
            metrics = reply.read().decode()
    assert refused.value.code == 413  # 256 KiB of JSON: 10 MiB charged, more than an 8 MiB budget ever holds
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("tandem_server_memory"))
    assert float(samples["tandem_server_memory_budget_bytes"]) == budget
    assert float(samples["tandem_server_memory_held_bytes"]) == 0
    assert float(samples["tandem_server_memory_refused_total"]) == 1
