"""Tandem's trainer runtime: what runs inside a TrainingJob's pods.

A user's script calls the SDK modules directly; `tandem train digits` is the ready-made entrypoint:

- `distributed`: torch.distributed from the environment the operator (or torchrun) sets;
- `checkpoint`: save and resume training state at a URI;
- `export`: ONNX export with a dynamic batch, checked by onnx.checker and onnxruntime parity;
- `publish`: model.onnx and metadata.json at the output URI, then the termination message;
- `failures`: the failure contract, one clear reason, message and exit code per cause.
"""
