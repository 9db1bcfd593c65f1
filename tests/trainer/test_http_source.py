"""A served model may come from an http(s):// URL: read through fsspec's HTTP filesystem, as the server does."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem import storage


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server (the standard library's) on a free port, serving tmp_path."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_is_read_from_an_http_url(web_root: tuple[Path, str]) -> None:
    folder, base = web_root
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx-bytes")
    assert storage.read_bytes(f"{base}/model.onnx") == b"\x08\x07onnx-bytes"


def test_a_missing_http_model_is_not_found_rather_than_unreachable(web_root: tuple[Path, str]) -> None:
    _, base = web_root
    with pytest.raises(storage.StorageNotFound, match="no such file"):
        storage.read_bytes(f"{base}/missing.onnx")


def test_an_unreachable_http_host_is_a_storage_error() -> None:
    with pytest.raises(storage.StorageError, match=r"http://127\.0\.0\.1:9/"):
        storage.read_bytes("http://127.0.0.1:9/model.onnx")
