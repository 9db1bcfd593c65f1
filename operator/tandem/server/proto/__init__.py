"""The V2 gRPC messages (`inference.*`), built at import from the checked-in descriptor set.

Why not protoc's generated `_pb2` module: it registers `inference.ModelInferRequest` and the rest in
protobuf's process-wide default pool, and so do tritonclient's and KServe's own modules; a process that
imports two of them fails with "duplicate symbol". These classes live in a private pool instead, so the
server module can share a process with any V2 client. The wire format is the same either way.

`grpc_predict_v2.binpb` is generated from `grpc_predict_v2.proto` (see that file for the command);
tests/server/test_grpc_proto.py fails when the two drift apart.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
"""The service's full name: gRPC method paths are /inference.GRPCInferenceService/<Method>."""

_files = descriptor_pb2.FileDescriptorSet.FromString(files(__package__).joinpath("grpc_predict_v2.binpb").read_bytes())
_pool = descriptor_pool.DescriptorPool()
for _file in _files.file:
    _pool.Add(_file)
_classes: dict[str, Any] = message_factory.GetMessages(list(_files.file), pool=_pool)

ServerLiveResponse: Any = _classes["inference.ServerLiveResponse"]
ServerReadyResponse: Any = _classes["inference.ServerReadyResponse"]
ModelReadyRequest: Any = _classes["inference.ModelReadyRequest"]
ModelReadyResponse: Any = _classes["inference.ModelReadyResponse"]
ServerMetadataResponse: Any = _classes["inference.ServerMetadataResponse"]
ModelMetadataRequest: Any = _classes["inference.ModelMetadataRequest"]
ModelMetadataResponse: Any = _classes["inference.ModelMetadataResponse"]
ModelInferRequest: Any = _classes["inference.ModelInferRequest"]
ModelInferResponse: Any = _classes["inference.ModelInferResponse"]
InferTensorContents: Any = _classes["inference.InferTensorContents"]
