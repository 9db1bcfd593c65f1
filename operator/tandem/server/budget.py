"""The memory budget: bytes that clients' requests may make the server hold, counted before anything is parsed.

Bounds on request counts do not bound memory: one 64 MiB JSON body decodes into a gigabyte of Python lists.
So every request is charged, before its body is read (from Content-Length) or as it streams in, what it will
make the server hold: its body, the lists and arrays decoded from it, the work queued on them. A request the
budget cannot hold now is refused with 503 and Retry-After (gRPC RESOURCE_EXHAUSTED) without being parsed; one
it could never hold gets 413. Its bytes come back when its response has been written.

The charge is the body's size times the most that decoding was measured to multiply it by (the EXPANSION
constants below), a bound, not an estimate: the server holds at most its budget, never more, at the cost of
refusing some requests it could have served. Decoding is synchronous on the one event loop, so the peak of
one decode is never held twice at once, while each request is charged for it; the overcharge is the margin
that keeps the bound true for the worst body.

gRPC messages are the exception: grpcio holds a message before the server sees its size. So a share of the
budget (GRPC_READING_SHARE) is kept for the few messages read at once (GRPC_READERS, each held twice while it
is read: grpcio's buffer and the bytes made of it), which bounds the size of a gRPC message
(`grpc_message_bytes`); requests are charged to the rest (`requests_share`), gRPC messages included once read.

A flood of large bodies must not starve the small requests most clients send: the last `KEPT_FOR_SMALL` of
the budget is only for requests charged at most `SMALL` of it. Used from the event loop only (the HTTP and
gRPC fronts share it), so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tandem.server.errors import MemoryExhausted, PayloadTooLarge

JSON_EXPANSION = 40
"""Bytes held per byte of a JSON body: the body plus what orjson and numpy make of it. Measured peaks: 14x the
body for random floats, 20x for short floats, 36x for a list of empty objects (the worst found)."""
BINARY_EXPANSION = 6
"""Bytes held per byte of binary tensor data (after the JSON header): the body plus up to 4x measured for BYTES
elements (a Python object per element); numeric data is a view of the body."""
GRPC_EXPANSION = 24
"""Bytes held per byte of a gRPC message: the message plus up to 20x measured for typed INT32 contents (one
varint byte becomes a Python int in a list); 9x for FP32 contents, 1x for raw contents."""
GRPC_READERS = 4
"""gRPC messages read at once; more calls wait for a slot, each holding no more than its stream window."""
GRPC_READING_SHARE = 1 / 4
"""Share of the budget kept for the gRPC messages being read."""
GRPC_READ_COPIES = 2
"""Copies of a gRPC message alive as its read completes: grpcio's receive buffer and the bytes made of it."""
SMALL = 1 / 64
"""Requests charged at most this share of the budget are small: they may use the share kept for them."""
KEPT_FOR_SMALL = 1 / 8
"""Share of the budget that larger requests may not take, so small ones are served through a flood of large ones."""
WIDE_SESSION_SHARE = 1 / 4
"""Share of the budget the second, wide onnxruntime session (`lonerun`) may cost, at twice the model's bytes."""
WIDE_SESSION_COST = 2
"""The wide session's memory per byte of the model: its copy of the weights and their prepacked form (+11 MiB
measured for a 7 MiB MLP, +4 MiB for a 2 MiB CNN)."""


class MemoryBudget:
    """Bytes the server's requests may hold; `take` a request's charge before parsing it, `release` it after."""

    def __init__(self, limit: int, on_refuse: Callable[[], None] = lambda: None) -> None:
        self.limit = limit
        self.held = 0
        """Bytes charged to requests not yet answered."""
        self.on_refuse = on_refuse
        """Called for every request refused (now or ever); metrics hook."""
        self.small = int(limit * SMALL)
        self.large_limit = limit - int(limit * KEPT_FOR_SMALL)
        """What requests charged more than `small` may hold together."""

    def take(self, charge: int, *, total: int | None = None) -> None:
        """Hold `charge` bytes more for a request whose whole charge is then `total` (default: `charge`).

        PayloadTooLarge when the request could never be held, MemoryExhausted when it cannot be now."""
        self._admit(charge, charge if total is None else total)
        self.held += charge

    def check(self, whole: int) -> None:
        """Refuse as `take` would a request whose whole charge is `whole`, holding nothing: for a body
        declared but not arrived yet."""
        self._admit(whole, whole)

    def _admit(self, charge: int, whole: int) -> None:
        ceiling = self.limit if whole <= self.small else self.large_limit
        if whole > ceiling:
            self.on_refuse()
            raise PayloadTooLarge(
                f"request would hold {whole} bytes in memory, more than the server's budget of {ceiling} bytes"
            )
        if self.held + charge > ceiling:
            self.on_refuse()
            raise MemoryExhausted(
                f"server memory budget spent ({self.held} of {self.limit} bytes held by requests); retry shortly"
            )

    def release(self, charge: int) -> None:
        self.held -= charge


def wide_session_max_model_bytes(budget: int) -> int:
    """The largest model whose second, wide session (`lonerun`) fits the share of a budget of `budget` bytes
    it may cost."""
    return int(budget * WIDE_SESSION_SHARE) // WIDE_SESSION_COST


def grpc_message_bytes(budget: int, max_request_bytes: int) -> int:
    """The largest gRPC message a server with a memory budget of `budget` bytes reads: GRPC_READERS of them,
    GRPC_READ_COPIES times each, fill GRPC_READING_SHARE of the budget."""
    return min(max_request_bytes, int(budget * GRPC_READING_SHARE) // (GRPC_READERS * GRPC_READ_COPIES))


def requests_share(budget: int, max_request_bytes: int) -> int:
    """What requests may be charged under a memory budget of `budget` bytes: all but the gRPC reading room."""
    return budget - GRPC_READERS * GRPC_READ_COPIES * grpc_message_bytes(budget, max_request_bytes)


def body_charge(length: int, json_length: int | None) -> int:
    """What a REST body of `length` bytes is charged: its JSON part (all of it, or the Inference-Header-Content-
    Length header of the binary extension) at JSON_EXPANSION, the binary data after it at BINARY_EXPANSION."""
    if json_length is None or not 0 <= json_length <= length:
        return length * JSON_EXPANSION
    return json_length * JSON_EXPANSION + (length - json_length) * BINARY_EXPANSION


def rest_charge(length: int, headers: Mapping[str, str]) -> int:
    """`body_charge` for an HTTP request of `length` body bytes, from its (lower-case) headers."""
    value = headers.get("inference-header-content-length", "")
    return body_charge(length, int(value) if value.isdigit() else None)


def grpc_charge(length: int) -> int:
    return length * GRPC_EXPANSION
