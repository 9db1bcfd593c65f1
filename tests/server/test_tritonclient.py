"""A client nobody here wrote: tritonclient[http] against a running server, binary data on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from support import server_procs as servers
from support.server_models import linear_expected

tritonhttp = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[object]:
    with servers.serving(model_dir / "linear.onnx") as (_, port):
        yield tritonhttp.InferenceServerClient(f"127.0.0.1:{port}")


def test_tritonclient_sees_a_live_ready_server_and_the_signature(client: object) -> None:
    assert client.is_server_live()  # type: ignore[attr-defined]
    assert client.is_server_ready()  # type: ignore[attr-defined]
    assert client.is_model_ready("linear")  # type: ignore[attr-defined]
    metadata = client.get_model_metadata("linear")  # type: ignore[attr-defined]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
def test_tritonclient_infers_with_and_without_binary_data(client: object, binary_in: bool, binary_out: bool) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = tritonhttp.InferInput("input", [3, 4], "FP32")
    tensor.set_data_from_numpy(rows, binary_data=binary_in)
    outputs = [
        tritonhttp.InferRequestedOutput("output", binary_data=binary_out),
        tritonhttp.InferRequestedOutput("label", binary_data=binary_out),
    ]
    result = client.infer("linear", [tensor], outputs=outputs, request_id="tc-1")  # type: ignore[attr-defined]
    np.testing.assert_allclose(result.as_numpy("output"), linear_expected(rows), rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), linear_expected(rows).argmax(axis=1))
    assert result.get_response()["id"] == "tc-1"


def test_tritonclient_gets_a_400_message_for_a_wrong_shape(client: object) -> None:
    from tritonclient.utils import InferenceServerException

    tensor = tritonhttp.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"does not match model shape \[-1, 4\]"):
        client.infer("linear", [tensor])  # type: ignore[attr-defined]
