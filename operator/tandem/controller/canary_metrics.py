"""The canary's request figures, read from its servers' own /metrics (tandem.server.metrics).

Each canary pod counts from its start, so the sum over the canary's pods is what the canary has served;
no Prometheus is needed. p99 comes from the summed latency histogram, interpolated within its bucket as
PromQL's histogram_quantile does.

A canary pod runs a tenant's image, so what it answers is untrusted input, read the way Prometheus reads a
scrape target: bounded by construction, whatever the pod does.

* No redirect is followed: a 3xx is a failed scrape. Otherwise a pod could make the operator fetch any URL
  from the operator's own network position (cloud metadata, the API server, internal Services).
* Each pod's read has a total deadline, from connect to the last byte, checked before every read of the
  status line, headers and body. A per-read timeout is not one: a server that drips a byte a second never
  trips it. Each scrape has a total deadline too, over all its pods, waiting for a free thread included.
* At most MAX_RESPONSE_BYTES are read from a pod, headers included, and nothing is allocated for bytes that
  have not arrived (a Content-Length is a claim, not a size to reserve).
* Pods are read on one pool of SCRAPE_WORKERS threads shared by the whole operator, so however many hostile
  pods there are, at most that many connections are open, each for at most its deadline, and a reconcile
  worker waits at most SCRAPE_DEADLINE_SECONDS.
* A bad answer (refused, non-200, redirect, too big, too slow, not Prometheus text, our metrics missing) is a
  ScrapeFailure naming the pod and why, never an exception: the caller treats it as metrics not read.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import math
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from tandem.decide.canary import CanaryMetrics
from tandem.render.serving import METRICS_PORT

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

REQUESTS = "tandem_inference_requests"
LATENCY = "tandem_inference_request_duration_seconds"

MAX_RESPONSE_BYTES = 1 << 20
"""A server's exposition is a few KiB per model it has served (its histograms dominate); 1 MiB leaves room
for hundreds of models and bounds what one pod can make the operator hold to that, SCRAPE_WORKERS times in
all."""
POD_DEADLINE_SECONDS = 2.0
"""From connect to the last byte of one pod's answer: a server on the pod network answers in milliseconds."""
SCRAPE_DEADLINE_SECONDS = 5.0
"""The longest a reconcile waits for all of a canary's pods, including any wait for a free scrape thread."""
SCRAPE_WORKERS = 4
"""Pod reads in flight at once in the whole operator: well under its 16 reconcile workers (TANDEM_WORKERS), so
hostile pods can hold at most these threads, each for at most POD_DEADLINE_SECONDS."""
READ_BYTES = 64 * 1024
"""One read of the body: never more than this is asked of the socket before the byte cap is checked."""
REASON_CHARS = 200
"""A failure's reason is logged; the pod chose part of it (a status line, a parser's quote of a bad line)."""


@dataclass(frozen=True)
class ScrapeFailure:
    """Why a canary's metrics could not be read: the first of its pods that failed, and how."""

    pod_ip: str
    reason: str


class Scraper:
    """Reads canary pods on a bounded pool of threads; the operator's Controller keeps one for all its reconciles."""

    def __init__(self, workers: int = SCRAPE_WORKERS) -> None:
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="canary-scrape")

    def scrape(
        self,
        pod_ips: Iterable[str],
        port: int = METRICS_PORT,
        pod_deadline: float = POD_DEADLINE_SECONDS,
        scrape_deadline: float = SCRAPE_DEADLINE_SECONDS,
    ) -> CanaryMetrics | ScrapeFailure:
        """The canary's figures summed over its pods, or why they could not be read.

        Returns at the first pod that fails, or when `scrape_deadline` seconds have passed; reads not yet
        started are then cancelled, and those running end by their own deadline, which the scrape's caps."""
        ips = list(pod_ips)
        end = time.monotonic() + scrape_deadline
        reads = [self._pool.submit(_read_pod, ip, port, pod_deadline, end) for ip in ips]
        figures = []
        try:
            for read in as_completed(reads, timeout=scrape_deadline):
                outcome = read.result()
                if isinstance(outcome, ScrapeFailure):
                    return outcome
                figures.append(outcome)
        except TimeoutError:
            waiting = next(ip for ip, read in zip(ips, reads, strict=True) if not read.done())
            return ScrapeFailure(waiting, f"not read within the scrape's {scrape_deadline:g}s deadline")
        finally:
            for read in reads:
                read.cancel()
        return _total(figures)

    def close(self) -> None:
        """Cancels reads not started and waits for those running (each ends by its deadline)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def parse(texts: Iterable[str]) -> CanaryMetrics:
    """Requests, server errors (5xx) and p99 latency summed over the expositions of several servers."""
    return _total(_figures(text) for text in texts)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile, in milliseconds, of cumulative buckets {upper bound in seconds: count}; None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower * 1000  # above the highest finite bucket: its bound, as histogram_quantile does
            share = (rank - below) / (count - below) if count > below else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, count
    return lower * 1000


@dataclass(frozen=True)
class _Figures:
    """One server's counts, to be summed with its fellow servers'; `declared` is which of ours it exposes."""

    requests: int
    errors: int
    buckets: Mapping[float, float]
    declared: frozenset[str]


def _figures(text: str) -> _Figures:
    requests = errors = 0
    buckets: dict[float, float] = defaultdict(float)
    declared = set()
    for family in text_string_to_metric_families(text):
        if family.name in (REQUESTS, LATENCY):
            declared.add(family.name)
        for sample in family.samples:
            if sample.name == f"{REQUESTS}_total":
                requests += int(sample.value)
                if sample.labels.get("code", "").startswith("5"):
                    errors += int(sample.value)
            elif sample.name == f"{LATENCY}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    return _Figures(requests, errors, buckets, frozenset(declared))


def _total(figures: Iterable[_Figures]) -> CanaryMetrics:
    requests = errors = 0
    buckets: dict[float, float] = defaultdict(float)
    for one in figures:
        requests += one.requests
        errors += one.errors
        for bound, count in one.buckets.items():
            buckets[bound] += count
    return CanaryMetrics(requests=requests, errors=errors, p99_latency_ms=quantile(0.99, buckets))


class _Refused(Exception):
    """An answer the scrape stops reading; the message says why."""


def _read_pod(ip: str, port: int, pod_deadline: float, scrape_end: float) -> _Figures | ScrapeFailure:
    """One pod's figures, or why not: every way a pod can fail is mapped to a reason here, in one place."""
    start = time.monotonic()
    deadline = min(start + pod_deadline, scrape_end)
    try:
        figures = _figures(_fetch(ip, port, deadline))
        missing = sorted({REQUESTS, LATENCY} - figures.declared)
        if missing:
            raise _Refused(f"its exposition has no {' or '.join(missing)}")
        return figures
    except _Refused as exc:
        reason = str(exc)
    except TimeoutError:
        reason = f"no complete answer within its {deadline - start:.1f}s deadline"
    except (OSError, http.client.HTTPException) as exc:
        reason = f"could not be read: {exc!r}"
    except (ValueError, LookupError, ArithmeticError) as exc:
        reason = f"not Prometheus text of counts: {exc}"
    if len(reason) > REASON_CHARS:
        reason = reason[:REASON_CHARS] + "..."
    return ScrapeFailure(ip, reason)


def _fetch(ip: str, port: int, deadline: float) -> str:
    """GET /metrics from `ip`: one request, no redirect, at most MAX_RESPONSE_BYTES, done by `deadline`."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise _Refused(f"{ip!r} is not an IP address") from None  # a name would need DNS, which no deadline bounds
    host = f"[{address}]" if address.version == 6 else str(address)
    with socket.create_connection((str(address), port), timeout=_left(deadline)) as sock:
        request = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        # http.client parses the answer (status, headers, chunked or not); _Bounded gives it only what may be read.
        response = http.client.HTTPResponse(_Bounded(sock, deadline), method="GET")  # type: ignore[arg-type]
        response.begin()
        if 300 <= response.status < 400:
            raise _Refused(f"answered HTTP {response.status}, a redirect, which is never followed")
        if response.status != 200:
            raise _Refused(f"answered HTTP {response.status}")
        if response.length is not None and response.length > MAX_RESPONSE_BYTES:
            raise _Refused(f"announced {response.length} bytes, over the {MAX_RESPONSE_BYTES} byte cap")
        body = bytearray()
        while chunk := response.read(READ_BYTES):  # never read(): it reserves a Content-Length's worth at once
            body += chunk
    return body.decode()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class _Bounded(io.RawIOBase):
    """A socket's bytes as http.client reads a response: each read waits at most until the deadline, and
    more than MAX_RESPONSE_BYTES in all is refused after reading one byte past it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._budget = MAX_RESPONSE_BYTES

    def makefile(self, mode: str) -> io.BufferedReader:
        """What http.client.HTTPResponse reads from (it calls sock.makefile("rb"))."""
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._sock.settimeout(_left(self._deadline))
        count = self._sock.recv_into(memoryview(buffer)[: self._budget + 1])
        self._budget -= count
        if self._budget < 0:
            raise _Refused(f"answered more than {MAX_RESPONSE_BYTES} bytes")
        return count
