#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in a cache outside the clone, installed exactly from
# uv.lock: a new release of any dependency cannot change what the tests run against. torch from PyPI is a
# multi-GB CUDA build; uv's cache keeps the wheels, so only the first run downloads them and a lock change
# installs just the difference. Prints the environment's path on stdout; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
UV_VERSION=0.13.9
venv="$CACHE/venv"
say() { printf '[python-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# uv lives apart from the environment it manages, so syncing the environment never removes uv itself.
uv="$CACHE/uv/bin/uv"
if [[ "$("$uv" --version 2>/dev/null)" != "uv $UV_VERSION "* ]]; then
  say "installing uv $UV_VERSION into $CACHE/uv"
  python3 -m venv "$CACHE/uv"
  "$CACHE/uv/bin/pip" install -q "uv==$UV_VERSION" >&2
fi
key=$(cat "$root/uv.lock" "$root/pyproject.toml" | sha256sum | cut -c1-12)
if [ "$(cat "$venv/.tandem-lock" 2>/dev/null)" != "$key" ]; then
  say "installing uv.lock into $venv (first time: torch is a large download, several minutes)"
fi
# --frozen: install the lock as it is, never re-resolve. The project itself is installed editable, pointing
# at this clone (a no-op when it already does).
UV_PROJECT_ENVIRONMENT="$venv" "$uv" sync --frozen --quiet --python "$(command -v python3)" \
  --extra operator --extra train --extra serve --extra dev --directory "$root" >&2
echo "$key" > "$venv/.tandem-lock"
say "environment ready: $venv"
echo "$venv"
