"""Artifact storage by URI, shared by the trainer and the server.

fsspec handles file://, s3:// (s3fs) and, for reading a served model, http(s):// (aiohttp, which s3fs
brings). gs:// is not offered: no image installs gcsfs. `pvc://claim/path` is Tandem's own
scheme: the workload's pod mounts the claim at `$TANDEM_PVC_ROOT/<claim>` (default /mnt/pvc), so the URI
names storage the same way in the resource, in status and inside the pod.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import IO, Any
from urllib.parse import urlparse

PVC_ROOT_ENV = "TANDEM_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Standard AWS variables naming an S3-compatible endpoint (MinIO, Ceph, moto), most specific first."""


class StorageError(RuntimeError):
    """A URI that cannot be parsed, reached, read or written; the message names the URI."""


class StorageNotFound(StorageError):
    """A URI that parses and whose storage answers, but which names no file or object."""


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


def default_storage_options(uri: str) -> dict[str, Any]:
    """fsspec options taken from the environment, used when a caller passes none.

    s3fs does not read `AWS_ENDPOINT_URL*` on every version, so an S3-compatible endpoint set the standard
    way is passed on explicitly; credentials stay with the usual AWS variables and instance roles.
    """
    if urlparse(uri).scheme not in ("s3", "s3a"):
        return {}
    for name in S3_ENDPOINT_ENVS:
        endpoint = os.environ.get(name)
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def _options(uri: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    return storage_options or default_storage_options(uri)


def open_uri(uri: str, mode: str = "rb", **storage_options: Any) -> IO[Any]:
    """Open a URI for reading or writing; parent folders are created for local writes."""
    import fsspec

    target = resolve(uri)
    try:
        if "w" in mode and "://" not in target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        # auto_mkdir=False: fsspec's default "creates parent folders", which on s3fs creates a missing bucket;
        # a mistyped bucket must fail here, not appear in the account.
        handle: IO[Any] = fsspec.open(target, mode, auto_mkdir=False, **_options(uri, storage_options)).open()
    except FileNotFoundError as exc:
        raise StorageNotFound(f"{uri}: no such file or object") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise StorageError(f"{uri}: {exc}") from exc
    return handle


def read_bytes(uri: str, **storage_options: Any) -> bytes:
    try:
        with open_uri(uri, "rb", **storage_options) as handle:
            data: bytes = handle.read()
    except FileNotFoundError as exc:
        raise StorageNotFound(f"{uri}: no such file or object") from exc
    except OSError as exc:
        raise StorageError(f"{uri}: {exc}") from exc
    return data


def write_bytes(uri: str, data: bytes, **storage_options: Any) -> None:
    # Remote filesystems upload on close, so errors can surface after open_uri returns.
    try:
        with open_uri(uri, "wb", **storage_options) as handle:
            handle.write(data)
    except OSError as exc:
        raise StorageError(f"{uri}: {exc}") from exc


def write_bytes_atomic(uri: str, data: bytes, **storage_options: Any) -> None:
    """Write so that a reader sees the old content or the new, never a torn file.

    A local path is written beside its target, flushed to disk and renamed over it; an object store PUT
    is already all-or-nothing, so remote URIs are written directly.
    """
    target = resolve(uri)
    if "://" in target:
        write_bytes(uri, data, **storage_options)
        return
    folder = os.path.dirname(target) or "."
    temporary = os.path.join(folder, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        raise StorageError(f"{uri}: {exc}") from exc
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def remove(uri: str, missing_ok: bool = True, **storage_options: Any) -> None:
    """Delete the file or object a URI names."""
    from fsspec.core import url_to_fs

    target = resolve(uri)
    try:
        fs, path = url_to_fs(target, **_options(uri, storage_options))
        fs.rm(path)
    except FileNotFoundError:
        if not missing_ok:
            raise StorageError(f"{uri}: no such file or object") from None
    except (OSError, ValueError, ImportError) as exc:
        raise StorageError(f"{uri}: {exc}") from exc


def check_writable(folder_uri: str, **storage_options: Any) -> None:
    """Prove that objects can be created and deleted in a folder URI by doing it, or raise StorageError.

    Permissions, credentials, bucket existence and endpoint reachability all show up only on a real write,
    so a probe is the one check that answers them before hours of training rather than after.
    """
    probe = join(folder_uri, f".tandem-write-probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"probe", **storage_options)
        remove(probe, **storage_options)
    except StorageError:
        raise
    except Exception as exc:  # network clients raise their own types (botocore, aiohttp)
        raise StorageError(f"{folder_uri}: {type(exc).__name__}: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
