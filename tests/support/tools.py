"""The Go-built command-line tools (helm, kubectl) as the tests find and run them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CACHE_BIN = Path.home() / ".cache" / "tandem" / "bin"


def tool(name: str) -> Path | None:
    """A binary from TANDEM_BIN_DIR, the build cache (hack/build-tools.sh) or PATH."""
    candidates = [Path(os.environ["TANDEM_BIN_DIR"]) / name] if os.environ.get("TANDEM_BIN_DIR") else []
    candidates += sorted(CACHE_BIN.glob(f"*/{name}"), reverse=True)
    found = shutil.which(name)
    candidates += [Path(found)] if found else []
    return next((path for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)


def run(args: Iterable[str | Path], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(arg) for arg in args], capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc
