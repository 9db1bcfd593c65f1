"""Fuzzing the V2 REST endpoints of a real `tandem serve` process with hypothesis.

Expected outcome: whatever arrives (arbitrary JSON, wrong shapes and datatypes, lying binary headers, odd
paths and methods), the server answers with a status below 500 and keeps answering /v2/health/live; the
process never exits. Bounded: a few hundred examples over loopback, a few seconds each run.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import server_models, server_procs

DATATYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "fp32", "", "X"]
FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    """`tandem serve` with its log in a file: a pipe nobody reads fills up and blocks the server."""
    folder = tmp_path_factory.mktemp("fuzz")
    model = server_models.linear_model(folder / "linear.onnx")
    with (folder / "server.log").open("wb") as log:
        process, port = server_procs.start(model, output=log)
        try:
            server_procs.wait_ready(process, port)
            yield process, port
            assert process.poll() is None, "the server exited during fuzzing"
        finally:
            process.kill()
            process.wait(timeout=30)


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def assert_survived(server: tuple[Any, int], status: int, what: object) -> None:
    process, port = server
    assert status < 500, f"{status} for {what!r}"
    assert process.poll() is None, f"server exited after {what!r}"
    assert send(port, "GET", "/v2/health/live") == 200, f"not live after {what!r}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
shapes = st.lists(st.integers(min_value=-3, max_value=9) | st.text(max_size=3) | st.none(), max_size=4) | json_values
datas = st.lists(st.floats(allow_nan=True) | st.integers() | st.text(max_size=5) | st.booleans(), max_size=40)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "output", "label", "", "x"]) | st.text(max_size=8)},
    optional={
        "shape": shapes,
        "datatype": st.sampled_from(DATATYPES) | json_values,
        "data": datas | json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "content_type", "x"]),
            st.integers(min_value=-5, max_value=1 << 40) | json_values,
            max_size=3,
        ),
    },
)
infer_bodies = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.lists(tensors, max_size=3) | json_values,
        "outputs": st.lists(
            st.fixed_dictionaries({"name": st.text(max_size=8)}, optional={"parameters": json_values}), max_size=3
        )
        | json_values,
        "parameters": json_values,
    },
)


@FUZZ
@given(document=infer_bodies)
def test_arbitrary_infer_requests_never_get_a_5xx(server: tuple[Any, int], document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    status = send(server[1], "POST", "/v2/models/linear/infer", payload, {"Content-Type": "application/json"})
    assert_survived(server, status, document)


@FUZZ
@given(
    document=infer_bodies,
    tail=st.binary(max_size=256),
    header_length=st.integers(min_value=-10, max_value=10_000) | st.text(alphabet="0123456789-+. xe", max_size=6),
)
def test_binary_requests_with_lying_headers_never_get_a_5xx(
    server: tuple[Any, int], document: dict[str, Any], tail: bytes, header_length: int | str
) -> None:
    head = json.dumps(document).encode()
    length = str(len(head) if header_length == 0 else header_length)
    headers = {"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"}
    status = send(server[1], "POST", "/v2/models/linear/infer", head + tail, headers)
    assert_survived(server, status, (document, tail, length))


@FUZZ
@given(raw=st.binary(max_size=512))
def test_bodies_that_are_not_json_never_get_a_5xx(server: tuple[Any, int], raw: bytes) -> None:
    status = send(server[1], "POST", "/v2/models/linear/infer", raw, {"Content-Type": "application/json"})
    assert_survived(server, status, raw)


path_segments = st.sampled_from(
    ["v2", "models", "linear", "versions", "1", "ready", "infer", "health", "live", "metrics", "", "..", "%00", "%ff"]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"), max_size=8)


@FUZZ
@given(
    segments=st.lists(path_segments, max_size=6),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]),
    body=st.binary(max_size=64),
)
def test_any_path_and_method_gets_a_4xx_or_success(
    server: tuple[Any, int], segments: list[str], method: str, body: bytes
) -> None:
    path = "/" + "/".join(segments)
    status = send(server[1], method, path, body if method not in ("GET", "HEAD") else b"")
    assert_survived(server, status, (method, path))
