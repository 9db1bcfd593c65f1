"""KServe's own Python client (kserve.InferenceRESTClient and InferenceGRPCClient, Open Inference Protocol
V2) against a running `tandem serve`: health, inference of several datatypes, and refusals it can act on.

The client runs in a process of its own (kserve_probe.py): its generated protos and tritonclient's cannot
share one process's protobuf descriptor pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from support import server_models
from support import server_procs as servers
from support.cluster import free_port
from support.server_models import linear_expected

PROBE = Path(__file__).with_name("kserve_probe.py")


@dataclass(frozen=True)
class Server:
    rest: str
    """Base URL of the REST endpoint."""
    grpc: str
    """host:port of the gRPC endpoint."""
    model: str

    def probe(self, case: str) -> Any:
        """What KServe's clients saw for `case` (kserve_probe.py)."""
        done = subprocess.run(
            [sys.executable, str(PROBE), self.rest, self.grpc, self.model, case],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)


def serve(model: Path, name: str) -> Iterator[Server]:
    grpc_port = free_port()
    env = {"TANDEM_GRPC_PORT": str(grpc_port), "TANDEM_ACCESS_LOG": "off"}
    with servers.serving(model, name=name, env=env) as (_, port):
        yield Server(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", name)


@pytest.fixture(scope="module")
def linear(model_dir: Path) -> Iterator[Server]:
    yield from serve(model_dir / "linear.onnx", "linear")


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    names = ["FP32", "FP64", "INT32", "INT64", "UINT8", "BOOL"]
    path = server_models.identity_model(tmp_path_factory.mktemp("kserve") / "few.onnx", names)
    yield from serve(path, "identity")


def test_kserve_clients_see_a_live_ready_server_and_model(linear: Server) -> None:
    assert linear.probe("health") == {"rest": [True, True, True], "grpc": [True, True, True]}


def test_kserve_clients_infer_and_read_every_output(linear: Server) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    seen = linear.probe("infer")
    for transport in ("rest", "grpc"):
        answer = seen[transport]
        np.testing.assert_allclose(answer["outputs"]["output"], linear_expected(rows), rtol=1e-6)
        np.testing.assert_array_equal(answer["outputs"]["label"], linear_expected(rows).argmax(axis=1))
        assert answer["id"] == "ks-1"


def test_kserve_clients_round_trip_several_datatypes(identity: Server) -> None:
    seen = identity.probe("datatypes")
    for transport in ("rest", "grpc"):
        assert {name: seen[transport]["outputs"][f"out_{name}"] for name in seen["sent"]} == seen["sent"]


def test_a_wrong_shape_is_a_400_over_rest_and_invalid_argument_over_grpc_naming_the_tensor(linear: Server) -> None:
    seen = linear.probe("wrong-shape")
    assert seen["rest"]["status"] == 400 and "input" in seen["rest"]["error"]
    assert seen["grpc"]["code"] == "INVALID_ARGUMENT" and "input" in seen["grpc"]["details"]


def test_an_unknown_model_is_a_404_over_rest_and_not_found_over_grpc(linear: Server) -> None:
    seen = linear.probe("unknown-model")
    assert seen["rest"]["status"] == 404 and seen["grpc"]["code"] == "NOT_FOUND"
