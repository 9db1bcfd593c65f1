"""The canary scrape reads tenant pods as untrusted: no redirect, a total deadline, a byte cap, a bounded pool.

Each "pod" is a socket server on its own loopback address (127.0.0.x, all on one port, as pods share the
metrics port), answering as a hostile or a healthy canary server would.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from tandem.controller import canary_metrics
from tandem.controller.canary_metrics import MAX_RESPONSE_BYTES, ScrapeFailure, Scraper, parse
from tandem.decide.canary import CanaryMetrics
from tandem.server.metrics import ServerMetrics

Answer = Callable[[socket.socket, threading.Event], None]
"""What a pod sends on a connection, once the request has arrived; it ends when the pod is stopped."""

DRIP_SECONDS = 0.05
"""Well inside the deadlines below: a per-read timeout would never fire on this drip."""
HUGE_BYTES = 1 << 30


class Gauge:
    """Connections open now, and the most ever open at once, over the pods that share it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.open = self.most = self.total = 0

    def opened(self) -> None:
        with self._changed:
            self.open += 1
            self.total += 1
            self.most = max(self.most, self.open)
            self._changed.notify_all()

    def closed(self) -> None:
        with self._changed:
            self.open -= 1
            self._changed.notify_all()

    def wait_open(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.open >= count, timeout=30)


class Pod(socketserver.ThreadingTCPServer):
    """A canary pod's metrics port, answering every connection with `answer`."""

    allow_reuse_address = True

    def __init__(self, answer: Answer, ip: str, port: int, gauge: Gauge) -> None:
        self.answer = answer
        self.gauge = gauge
        self.stopped = threading.Event()
        super().__init__((ip, port), _Connection)
        self.ip, self.port = self.server_address[0], self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.shutdown()
        self.server_close()  # joins the connections' threads, each of which ends on `stopped`
        self._thread.join()


class _Connection(socketserver.BaseRequestHandler):
    server: Pod

    def handle(self) -> None:
        self.server.gauge.opened()
        try:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 8192:
                got = self.request.recv(1024)
                if not got:
                    return
                request += got
            self.server.answer(self.request, self.server.stopped)
        except OSError:
            pass  # the operator hung up: how a refused answer looks from the pod
        finally:
            self.server.gauge.closed()


Serve = Callable[..., Pod]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Starts pods (`serve(answer, ip="127.0.0.1", port=0, gauge=None)`) and stops every one at teardown."""
    pods: list[Pod] = []

    def start(answer: Answer, ip: str = "127.0.0.1", port: int = 0, gauge: Gauge | None = None) -> Pod:
        pods.append(Pod(answer, ip, port, gauge or Gauge()))
        return pods[-1]

    yield start
    for pod in pods:
        pod.stop()


@pytest.fixture
def operators() -> Iterator[Scraper]:
    """A scraper as the operator makes one (tandem.controller.controller.Controller.scraper)."""
    made = Scraper()
    yield made
    made.close()


@pytest.fixture
def scraper() -> Iterator[Scraper]:
    """A scraper with a pool of two threads, so a few hostile pods are more than it has."""
    small = Scraper(workers=2)
    yield small
    small.close()


def sends(raw: bytes) -> Answer:
    return lambda conn, stopped: conn.sendall(raw)


def exposition(text: str) -> Answer:
    body = text.encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n\r\n" % len(body)
    return sends(head + body)


def drip(head: bytes) -> Answer:
    """Sends `head`, then one byte every DRIP_SECONDS until the operator hangs up or the pod is stopped."""

    def answer(conn: socket.socket, stopped: threading.Event) -> None:
        conn.sendall(head)
        while not stopped.wait(DRIP_SECONDS):
            conn.sendall(b"#")

    return answer


class Flood:
    """A 1 GiB body, streamed in 64 KiB pieces (nothing that size is ever allocated); counts what got sent."""

    def __init__(self, announce: bool) -> None:
        self.head = b"HTTP/1.1 200 OK\r\n" + (b"Content-Length: %d\r\n" % HUGE_BYTES if announce else b"") + b"\r\n"
        self.sent = 0
        self.done = threading.Event()

    def __call__(self, conn: socket.socket, stopped: threading.Event) -> None:
        piece = b"# " + b"x" * (64 * 1024 - 3) + b"\n"
        try:
            conn.sendall(self.head)
            while self.sent < HUGE_BYTES and not stopped.is_set():
                conn.sendall(piece)
                self.sent += len(piece)
        finally:
            self.done.set()


def served_text(requests: int, failed: int) -> str:
    server = ServerMetrics()
    for request in range(requests):
        server.started("digits")
        server.finished("digits", 500 if request < failed else 200, 0.004 if request < requests - 2 else 0.4)
    return server.exposition().decode()


def failure(outcome: CanaryMetrics | ScrapeFailure) -> ScrapeFailure:
    assert isinstance(outcome, ScrapeFailure), outcome
    return outcome


def test_the_figures_are_summed_over_every_pod_as_parse_sums_them(serve: Serve, operators: Scraper) -> None:
    texts = [served_text(100, 0), served_text(100, 3), served_text(50, 1)]
    first = serve(exposition(texts[0]), "127.0.0.2")
    for index, text in enumerate(texts[1:], start=3):
        serve(exposition(text), f"127.0.0.{index}", first.port)
    outcome = operators.scrape(["127.0.0.2", "127.0.0.3", "127.0.0.4"], port=first.port)
    assert outcome == parse(texts)
    assert isinstance(outcome, CanaryMetrics) and (outcome.requests, outcome.errors) == (250, 4)


def test_a_redirect_is_a_failed_scrape_and_its_target_is_never_contacted(serve: Serve, operators: Scraper) -> None:
    target = serve(exposition(served_text(10, 0)))
    location = f"http://127.0.0.1:{target.port}/metrics"
    pod = serve(sends(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()))
    outcome = failure(operators.scrape([pod.ip], port=pod.port))
    assert outcome.pod_ip == pod.ip and "302" in outcome.reason and "redirect" in outcome.reason
    assert target.gauge.total == 0


@pytest.mark.parametrize(("announce", "says"), [(True, "announced"), (False, "more than")])
def test_a_body_over_the_cap_is_refused_having_held_about_the_cap(
    serve: Serve, announce: bool, says: str, operators: Scraper
) -> None:
    flood = Flood(announce)
    pod = serve(flood)
    tracemalloc.start()
    try:
        outcome = failure(operators.scrape([pod.ip], port=pod.port))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert says in outcome.reason
    assert peak < 3 * MAX_RESPONSE_BYTES
    assert flood.done.wait(30)  # the pod's send failed once the operator hung up: it never sent its GiB
    assert flood.sent < HUGE_BYTES


@pytest.mark.parametrize("head", [b"", b"HTTP/1.1 200 OK\r\n\r\n"], ids=["in-the-status-line", "in-the-body"])
def test_an_answer_dripped_a_byte_at_a_time_is_cut_at_the_pods_deadline(
    serve: Serve, head: bytes, operators: Scraper
) -> None:
    pod = serve(drip(head))
    outcome = failure(operators.scrape([pod.ip], port=pod.port, pod_deadline=0.5, scrape_deadline=60))
    assert outcome.reason == "no complete answer within its 0.5s deadline"


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (sends(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"), "answered HTTP 500"),
        (sends(b"HTTP/1.1 200 OK\r\n\r\ngarbage text\n"), "not Prometheus text"),
        (sends(b"HTTP/1.1 200 OK\r\n\r\n<html>" + b"x" * 5000 + b"</html>\n"), "not Prometheus text"),
        (sends(b"HTTP/1.1 200 OK\r\n\r\n\xff\xfe not utf-8\n"), "not Prometheus text"),
        (sends(b'HTTP/1.1 200 OK\r\n\r\ntandem_inference_requests_total{code="200"} 1e999\n'), "not Prometheus text"),
        (exposition("# TYPE other counter\nother_total 1\n"), "has no tandem_inference_request"),
        (sends(b"SSH-2.0-OpenSSH_9.6\r\n"), "could not be read"),
        (sends(b""), "could not be read"),
    ],
    ids=["server-error", "garbage", "html", "not-utf8", "overflow", "missing-metrics", "not-http", "hang-up"],
)
def test_a_bad_answer_is_a_failure_that_says_why_not_an_exception(
    serve: Serve, answer: Answer, says: str, operators: Scraper
) -> None:
    pod = serve(answer)
    outcome = failure(operators.scrape([pod.ip], port=pod.port))
    assert outcome.pod_ip == pod.ip and says in outcome.reason
    assert len(outcome.reason) <= 203  # a pod's own words are cut short before they reach the log


def test_a_pod_that_refuses_the_connection_is_a_failure(operators: Scraper) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert "could not be read" in failure(operators.scrape(["127.0.0.1"], port=port)).reason


def test_a_pod_address_that_is_not_an_ip_is_refused_without_a_lookup(operators: Scraper) -> None:
    assert "not an IP address" in failure(operators.scrape(["metadata.google.internal"], port=80)).reason


def test_hostile_pods_beyond_the_pool_hold_no_more_than_its_threads_and_a_good_pod_is_still_read(
    serve: Serve, scraper: Scraper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted where the operator reads, not where the pods answer: a pod notices a hang-up only at its next send.
    reading = Gauge()
    fetch = canary_metrics._fetch

    def counted_fetch(ip: str, port: int, deadline: float) -> str:
        reading.opened()
        try:
            return fetch(ip, port, deadline)
        finally:
            reading.closed()

    monkeypatch.setattr(canary_metrics, "_fetch", counted_fetch)
    hostile = Gauge()
    first = serve(drip(b""), "127.0.0.10", gauge=hostile)
    hostile_ips = [first.ip] + [serve(drip(b""), f"127.0.0.{n}", first.port, hostile).ip for n in (11, 12, 13)]
    good = serve(exposition(served_text(100, 1)), "127.0.0.20", first.port)
    outcomes: list[CanaryMetrics | ScrapeFailure] = []
    attack = threading.Thread(target=lambda: outcomes.append(scraper.scrape(hostile_ips, first.port, 0.5, 60)))
    attack.start()
    assert hostile.wait_open(2)  # both threads of the pool are held by hostile pods
    read = scraper.scrape([good.ip], first.port, pod_deadline=5, scrape_deadline=60)
    attack.join()
    assert read == parse([served_text(100, 1)])
    assert reading.most <= 2
    assert isinstance(outcomes[0], ScrapeFailure) and outcomes[0].pod_ip in hostile_ips


def test_the_scrape_deadline_counts_the_wait_for_a_free_thread(serve: Serve) -> None:
    single = Scraper(workers=1)
    try:
        hostile = Gauge()
        slow = serve(drip(b""), gauge=hostile)
        good = serve(exposition(served_text(10, 0)), "127.0.0.2", slow.port)
        attack = threading.Thread(target=single.scrape, args=([slow.ip], slow.port, 1.0, 60))
        attack.start()
        assert hostile.wait_open(1)
        outcome = failure(single.scrape([good.ip], good.port, pod_deadline=5, scrape_deadline=0.1))
        attack.join()
    finally:
        single.close()
    assert outcome.pod_ip == good.ip and "scrape's 0.1s deadline" in outcome.reason
