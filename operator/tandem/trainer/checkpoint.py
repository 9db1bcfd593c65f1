"""Checkpoints at a folder URI that survive a kill at any instant.

Each save writes a new `step-NNNNNNNNN.pt` and only then moves the `latest.json` pointer to it, each write
atomic (rename on local and PVC paths, a single PUT on object stores). A run killed mid-save therefore
leaves the pointer on the previous complete checkpoint. The newest `keep` files are retained, so an
operator can still go back one step by hand.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from tandem import storage
from tandem.trainer.failures import CheckpointUnreadable, OutputUnwritable, note_checkpoint, stops_held

POINTER_FILE = "latest.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """A saved training state and the global optimizer step it was taken after."""

    step: int
    state: dict[str, Any]
    uri: str


class CheckpointStore:
    """Saves and finds checkpoints under one folder URI; only rank 0 should call `save`."""

    def __init__(self, uri: str, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.uri = uri
        self.keep = keep

    def _pointer(self) -> dict[str, Any] | None:
        pointer_uri = storage.join(self.uri, POINTER_FILE)
        try:
            raw = storage.read_bytes(pointer_uri)
        except storage.StorageNotFound:
            return None
        except storage.StorageError as exc:
            raise CheckpointUnreadable(f"cannot read checkpoint pointer {pointer_uri}: {exc}") from exc
        try:
            pointer: dict[str, Any] = json.loads(raw)
            int(pointer["step"])
            str(pointer["file"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointUnreadable(f"checkpoint pointer {pointer_uri} is malformed: {exc}") from exc
        return pointer

    def save(self, step: int, state: dict[str, Any]) -> str:
        """Write `state` as the checkpoint after `step` and make it the latest; returns its URI."""
        buffer = io.BytesIO()
        torch.save({"step": step, "state": state}, buffer)
        name = f"step-{step:09d}.pt"
        file_uri = storage.join(self.uri, name)
        previous = self._pointer()
        retained = [f for f in (previous or {}).get("files", []) if f != name] + [name]
        dropped, retained = retained[: -self.keep], retained[-self.keep :]
        try:
            storage.write_bytes_atomic(file_uri, buffer.getvalue())
            pointer = {"step": step, "file": name, "files": retained}
            with stops_held():
                storage.write_bytes_atomic(storage.join(self.uri, POINTER_FILE), json.dumps(pointer).encode())
                note_checkpoint(step, file_uri)
        except storage.StorageError as exc:
            raise OutputUnwritable(f"cannot write checkpoint {file_uri}: {exc}") from exc
        for old in dropped:
            try:
                storage.remove(storage.join(self.uri, old))
            except storage.StorageError as exc:
                log.warning("could not delete old checkpoint %s: %s", old, exc)
        log.info("checkpoint saved at step %d: %s", step, file_uri)
        return file_uri

    def load_latest(self) -> Checkpoint | None:
        """The checkpoint the pointer names, or None when this folder has none yet."""
        pointer = self._pointer()
        if pointer is None:
            return None
        file_uri = storage.join(self.uri, str(pointer["file"]))
        try:
            raw = storage.read_bytes(file_uri)
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            step = int(payload["step"])
            state: dict[str, Any] = payload["state"]
        except (storage.StorageError, RuntimeError, KeyError, TypeError, ValueError, EOFError) as exc:
            raise CheckpointUnreadable(f"checkpoint {file_uri} named by {POINTER_FILE} is unreadable: {exc}") from exc
        note_checkpoint(step, file_uri)
        return Checkpoint(step=step, state=state, uri=file_uri)
