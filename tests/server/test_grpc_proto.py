"""The checked-in V2 gRPC descriptor set is what protoc makes of the checked-in .proto, and it speaks the wire
format of a client nobody here wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

import tandem.server.proto

PROTO_DIR = Path(tandem.server.proto.__file__).parent


def test_the_descriptor_set_is_generated_from_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    operator_root = PROTO_DIR.parents[2]
    fresh = tmp_path / "fresh.binpb"
    status = protoc.main(
        ["protoc", f"-I{operator_root}", f"--descriptor_set_out={fresh}", str(PROTO_DIR / "grpc_predict_v2.proto")]
    )
    assert status == 0
    assert fresh.read_bytes() == (PROTO_DIR / "grpc_predict_v2.binpb").read_bytes(), (
        "grpc_predict_v2.binpb is stale: regenerate it with the command in grpc_predict_v2.proto"
    )


def test_messages_share_a_process_with_tritonclients_and_read_its_bytes() -> None:
    triton = pytest.importorskip("tritonclient.grpc.service_pb2")
    from tandem.server import proto

    sent = triton.ModelInferRequest(model_name="m", id="7", raw_input_contents=[b"\x01\x02"])
    sent.inputs.add(name="x", datatype="UINT8", shape=[1, 2])
    received = proto.ModelInferRequest.FromString(sent.SerializeToString())
    assert (received.model_name, received.id, list(received.inputs[0].shape)) == ("m", "7", [1, 2])
    assert received.raw_input_contents == [b"\x01\x02"]
