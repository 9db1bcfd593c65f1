"""Datasets shipped inside the package, so the built-in example trains with no network access.

Loading goes through `tandem.storage`, so the same loader also reads a user-supplied copy from file://,
pvc:// or s3://. Nothing here imports torch: the arrays are plain numpy, and the trainer decides devices.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import numpy.typing as npt

from tandem import storage

DIGITS_FEATURES = 64
"""Pixels per digit image (8x8)."""
DIGITS_CLASSES = 10
DIGITS_MAX_PIXEL = 16.0
"""Pixels count 'on' bits in 4x4 blocks of a 32x32 bitmap, so each lies in 0..16."""


class DatasetError(RuntimeError):
    """A dataset that cannot be found or parsed; `missing` separates the two, the message names the source."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Dataset:
    """Features as float32 rows and integer class labels."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def digits_uri() -> str:
    """The file:// URI of the shipped UCI digits CSV (see README.md beside this module)."""
    path = resources.files(__name__).joinpath("digits.csv")
    return "file://" + str(path)


def load_digits(uri: str | None = None) -> Dataset:
    """The digits as 64 raw pixel counts (0..16, as float32) and labels 0..9, from `uri` or the shipped copy.

    Features stay unscaled so a served model takes the same values a client reads off the dataset; models
    that want scaling carry it inside (and so inside their ONNX graph).

    Values are not checked for being finite: a corrupt feature should surface as a NaN loss with the step
    that met it, which is what the trainer reports.
    """
    source = uri or digits_uri()
    try:
        raw = storage.read_bytes(source)
    except (storage.StorageError, FileNotFoundError) as exc:
        raise DatasetError(f"digits dataset not found at {source}: {exc}", missing=True) from exc
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"digits dataset at {source} is not a numeric CSV: {exc}", missing=False) from exc
    if table.shape[0] == 0 or table.shape[1] != DIGITS_FEATURES + 1:
        raise DatasetError(
            f"digits dataset at {source} has shape {table.shape}; expected rows of "
            f"{DIGITS_FEATURES} pixels and a label",
            missing=False,
        )
    labels = table[:, -1]
    if not np.all((labels >= 0) & (labels < DIGITS_CLASSES) & (labels == np.round(labels))):
        raise DatasetError(f"digits dataset at {source} has labels outside 0..9", missing=False)
    features = table[:, :DIGITS_FEATURES].astype(np.float32)
    return Dataset(features=features, labels=labels.astype(np.int64), source=source)
