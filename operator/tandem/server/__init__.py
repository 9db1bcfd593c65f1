"""Tandem's inference server: the Open Inference Protocol (KServe V2) over REST and gRPC on onnxruntime.

Three layers, as KServe splits them, so each can be tested and swapped alone:

- `model`: one ONNX model with a lifecycle (fetch from its URI, verify sha256, open a session, warm up,
  ready) and its V2 signature.
- `dataplane`: protocol-free inference: validates decoded tensors against the signature before
  onnxruntime sees them, selects outputs, runs (optionally through the dynamic `batching` queue).
- `httpserver` + `rest`: a lean asyncio/httptools HTTP/1.1 server and the V2 REST routes on it; `codec`
  turns wire bytes (JSON or Triton's binary tensor extension) into tensors and back. `grpcserver` +
  `grpccodec`: the V2 gRPC service on the same event loop and data plane.
- `budget`: the memory budget every request's bytes are charged to before they are parsed, REST and gRPC.

Nothing here imports torch: the `serve` extra installs onnxruntime, numpy and the HTTP stack only.
"""
