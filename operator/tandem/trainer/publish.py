"""Publishing: model.onnx and metadata.json at the output URI, then the termination message.

The order matters. The model goes first and metadata.json last, so a reader that finds metadata.json finds
the model it describes; the termination message comes after both, because it is how the operator learns
that the artifact exists and may be served.

A published version is written once: services may be serving its file, and status must name one model per
version. The same run started again (its first completion went unrecorded, say) finds its own metadata.json
and announces the model already there; another run (a TrainingJob deleted and made again with the same name
and output) is refused before it writes anything.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from importlib import metadata as importlib_metadata

import numpy as np
import numpy.typing as npt
import onnx
import torch

from tandem import storage
from tandem.api.artifact import TERMINATION_MESSAGE_LIMIT, ModelArtifact
from tandem.trainer import export
from tandem.trainer.distributed import DistContext, run_on_main
from tandem.trainer.failures import InvalidConfiguration, OutputUnwritable, write_termination_message

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
VERSIONED_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "tandem")

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that produced (and checked) the model, for reproducing it later."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def check_output_writable(*uris: str | None) -> None:
    """Fail before training, not after it, when the model or checkpoints could not be stored."""
    for uri in uris:
        if not uri:
            continue
        try:
            storage.check_writable(uri)
        except storage.StorageError as exc:
            raise OutputUnwritable(f"cannot write to {uri}: {exc}") from exc
        _published_by(uri, os.environ.get("TANDEM_RUN"))


def fit_termination_message(artifact: ModelArtifact) -> dict[str, object]:
    """The artifact JSON, with metrics dropped from the end until it fits Kubernetes' 4096-byte limit.

    metadata.json keeps everything; the message only has to tell the operator where the model is.
    """
    metrics = dict(artifact.metrics)
    while True:
        wire = artifact.model_copy(update={"metrics": metrics}).to_wire()
        if len(json.dumps(wire, separators=(",", ":")).encode()) <= TERMINATION_MESSAGE_LIMIT or not metrics:
            return wire
        metrics.popitem()


def write_artifact(output_uri: str, proto: onnx.ModelProto, artifact_fields: dict[str, object]) -> ModelArtifact:
    """Store the model and its metadata, then announce them in the termination message."""
    model_bytes = proto.SerializeToString()
    model_uri = storage.join(output_uri, MODEL_FILE)
    artifact = ModelArtifact.model_validate(
        {
            "uri": model_uri,
            "sha256": storage.sha256_hex(model_bytes),
            "size_bytes": len(model_bytes),
            "format": "onnx",
            "run": os.environ.get("TANDEM_RUN"),
            **artifact_fields,
        }
    )
    published = _published_by(output_uri, artifact.run)
    if published is not None:
        if published.sha256 != artifact.sha256:
            log.warning(
                "%s was already published by this run (sha256 %s); the model trained again (sha256 %s) is not"
                " written over it", published.uri, published.sha256, artifact.sha256,
            )
        write_termination_message(fit_termination_message(published))
        return published
    try:
        storage.write_bytes_atomic(model_uri, model_bytes)
        storage.write_bytes_atomic(
            storage.join(output_uri, METADATA_FILE), json.dumps(artifact.to_wire(), indent=2).encode()
        )
    except storage.StorageError as exc:
        raise OutputUnwritable(f"cannot write the model to {output_uri}: {exc}") from exc
    write_termination_message(fit_termination_message(artifact))
    log.info("published %s (%d bytes, sha256 %s)", model_uri, len(model_bytes), artifact.sha256)
    return artifact


def _published_by(output_uri: str, run: str | None) -> ModelArtifact | None:
    """The artifact this run already published at `output_uri`, if any; OutputUnwritable if another run did."""
    metadata_uri = storage.join(output_uri, METADATA_FILE)
    try:
        published = ModelArtifact.model_validate_json(storage.read_bytes(metadata_uri))
    except storage.StorageNotFound:
        return None
    except (storage.StorageError, ValueError) as exc:  # unreadable, or not an artifact: replace nothing
        raise OutputUnwritable(f"cannot tell whether {metadata_uri} was published: {exc}") from exc
    if published.run != run:
        raise OutputUnwritable(
            f"{output_uri} holds a model another run published ({published.run or 'outside Tandem'}), which is"
            " never replaced: remove it, or set another spec.model.output"
        )
    return published


def _samples(
    sample: torch.Tensor | None, parity_batches: Sequence[npt.NDArray[np.float32]] | None
) -> tuple[torch.Tensor, Sequence[npt.NDArray[np.float32]]]:
    """The trace sample and parity batches: the script's own, or random ones of the declared shape."""
    declared = export.declared_sample_shape()
    if sample is None:
        if declared is None:
            raise InvalidConfiguration(
                "no export sample: pass sample= to export_and_publish or set spec.model.export.sampleInputShape"
            )
        sample, generated = export.random_samples(declared)
        return sample, parity_batches or generated
    export.check_sample_shape(sample, declared)
    if parity_batches is None:
        batch = sample.detach().to("cpu", torch.float32).numpy()
        parity_batches = [batch[:1], batch]
    return sample, parity_batches


def export_and_publish(
    ctx: DistContext,
    model: torch.nn.Module,
    sample: torch.Tensor | None = None,
    parity_batches: Sequence[npt.NDArray[np.float32]] | None = None,
    *,
    output_uri: str,
    metrics: dict[str, float],
    opset: int | None = None,
    input_name: str = "input",
    output_name: str = "output",
    tolerance: float = export.PARITY_TOLERANCE,
) -> ModelArtifact | None:
    """Export, check and publish on rank 0; every rank raises if that fails. Returns the artifact on rank 0.

    `sample` (a batch of at least 2) is traced; `parity_batches` are compared between torch and onnxruntime.
    Without a sample, random inputs of spec.model.export.sampleInputShape stand in; without parity batches,
    the sample's first row and the whole sample are compared.
    """

    def publish() -> ModelArtifact:
        traced, batches = _samples(sample, parity_batches)
        proto = export.export_onnx(model, traced, input_name=input_name, output_name=output_name, opset=opset)
        diff = export.parity_max_abs_diff(model, proto.SerializeToString(), batches, tolerance)
        inputs, outputs = export.signature(proto)
        fields: dict[str, object] = {
            "opset": export.opset_of(proto),
            "inputs": inputs,
            "outputs": outputs,
            "metrics": metrics,
            "parity_max_abs_diff": diff,
            "versions": library_versions(),
        }
        return write_artifact(output_uri, proto, fields)

    return run_on_main(ctx, publish)
