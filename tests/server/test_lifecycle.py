"""The process as Kubernetes sees it: refuses a wrong model, drains on SIGTERM, exits with the right code."""

from __future__ import annotations

import hashlib
import http.client
import signal
import threading
import time
from pathlib import Path

import orjson

from support import server_procs as servers


def test_sha256_mismatch_is_refused_with_a_clear_log_and_exit_1(model_dir: Path) -> None:
    process, _ = servers.start(model_dir / "linear.onnx", env={"TANDEM_MODEL_SHA256": "0" * 64})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"sha256 mismatch" in stderr
    assert b"refusing to serve" in stderr


def test_matching_sha256_becomes_ready(model_dir: Path) -> None:
    digest = hashlib.sha256((model_dir / "linear.onnx").read_bytes()).hexdigest()
    with servers.serving(model_dir / "linear.onnx", env={"TANDEM_MODEL_SHA256": digest}) as (_, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/v2/models/linear")
        assert connection.getresponse().status == 200


def test_unreadable_model_uri_exits_1(tmp_path: Path) -> None:
    process, _ = servers.start(tmp_path / "missing.onnx")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"cannot read model" in stderr


def test_sigterm_finishes_in_flight_requests_then_exits_0(model_dir: Path) -> None:
    process, port = servers.start(model_dir / "slow.onnx", name="slow")
    try:
        servers.wait_ready(process, port)
        body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1024], "datatype": "FP32",
                                         "data": [1.0] * 1024}]})  # fmt: skip
        results: list[int] = []

        def call() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request("POST", "/v2/models/slow/infer", body)
            reply = connection.getresponse()
            reply.read()
            results.append(reply.status)

        callers = [threading.Thread(target=call) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        for caller in callers:
            caller.join(60)
        assert process.wait(60) == 0
        assert results == [200, 200, 200, 200]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def test_metrics_are_served_on_their_own_port(model_dir: Path) -> None:
    metrics_port = servers.free_port()
    with servers.serving(model_dir / "linear.onnx", env={"TANDEM_METRICS_PORT": str(metrics_port)}):
        connection = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        connection.request("GET", "/metrics")
        reply = connection.getresponse()
        assert reply.status == 200
        assert b"tandem_model_ready" in reply.read()


def test_the_serve_command_never_imports_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tandem.cli import main; import tandem.server.app, tandem.server.cli; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "False"
