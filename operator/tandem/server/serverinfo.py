"""What the server says about itself over V2 (GET /v2 and gRPC ServerMetadata): name, version, extensions.

Only extensions that are implemented are advertised: a client that sees `model_repository` will try to load
and unload models, which a Tandem pod (one model, fixed by its InferenceService) does not do.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

NAME = "tandem"
try:
    VERSION = _package_version("tandem")
except PackageNotFoundError:  # running from a source tree without an install
    VERSION = "0+unknown"
EXTENSIONS = ["binary_tensor_data"]
"""Triton's binary tensor data extension (REST); raw tensor contents are part of the gRPC protocol itself."""
