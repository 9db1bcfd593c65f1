"""Artifact storage by URI, shared by the trainer and the server.

fsspec handles file://, s3:// and gs:// (with s3fs or gcsfs installed). `pvc://claim/path` is Tandem's own
scheme: the workload's pod mounts the claim at `$TANDEM_PVC_ROOT/<claim>` (default /mnt/pvc), so the URI
names storage the same way in the resource, in status and inside the pod.
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any
from urllib.parse import urlparse

PVC_ROOT_ENV = "TANDEM_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


class StorageError(RuntimeError):
    """A URI that cannot be parsed, reached, read or written; the message names the URI."""


def pvc_root() -> str:
    return os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)


def pvc_claim(uri: str) -> str | None:
    """The claim name of a pvc:// URI, or None for any other scheme."""
    parsed = urlparse(uri)
    return parsed.netloc if parsed.scheme == "pvc" else None


def resolve(uri: str) -> str:
    """The fsspec URL or local path for a URI; pvc:// becomes a path under the pod's mount root."""
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        if not parsed.netloc:
            raise StorageError(f"{uri}: a pvc:// URI needs a claim name, as in pvc://claim/path")
        return os.path.join(pvc_root(), parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme in ("", "file"):
        if not parsed.path:
            raise StorageError(f"{uri}: empty path")
        return parsed.path
    return uri


def join(base: str, name: str) -> str:
    """`name` inside the folder that URI `base` names."""
    return base.rstrip("/") + "/" + name


def open_uri(uri: str, mode: str = "rb", **storage_options: Any) -> IO[Any]:
    """Open a URI for reading or writing; parent folders are created for local writes."""
    import fsspec

    target = resolve(uri)
    try:
        if "w" in mode and "://" not in target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        handle: IO[Any] = fsspec.open(target, mode, **storage_options).open()
    except (OSError, ValueError, ImportError) as exc:
        raise StorageError(f"{uri}: {exc}") from exc
    return handle


def read_bytes(uri: str, **storage_options: Any) -> bytes:
    with open_uri(uri, "rb", **storage_options) as handle:
        data: bytes = handle.read()
    return data


def write_bytes(uri: str, data: bytes, **storage_options: Any) -> None:
    with open_uri(uri, "wb", **storage_options) as handle:
        handle.write(data)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
