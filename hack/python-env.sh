#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in a cache outside the clone, installed exactly from
# uv.lock: a new release of any dependency cannot change what the tests run against. torch from PyPI is a
# multi-GB CUDA build; uv's cache keeps the wheels, so only the first run downloads them and a lock change
# installs just the difference. Prints the environment's path on stdout; progress goes to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
UV_VERSION=0.13.9
venv="$CACHE/venv"
SAY_AS=python-env
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"
# uv lives apart from the environment it manages, so syncing the environment never removes uv itself.
uv="$CACHE/uv/bin/uv"
if [[ "$("$uv" --version 2>/dev/null)" != "uv $UV_VERSION "* ]]; then
  say "installing uv $UV_VERSION into $CACHE/uv"
  python3 -m venv "$CACHE/uv"
  "$CACHE/uv/bin/pip" install -q "uv==$UV_VERSION" >&2
fi
key=$(cat "$ROOT/uv.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-12)
stamp="$key with bytecode"
fresh=""
if [ "$(cat "$venv/.tandem-lock" 2>/dev/null)" != "$stamp" ]; then
  say "installing uv.lock into $venv (first time: torch is a large download, several minutes)"
  fresh=1
fi
# --frozen: install the lock as it is, never re-resolve. The project itself is installed editable, pointing
# at this clone (a no-op when it already does).
UV_PROJECT_ENVIRONMENT="$venv" "$uv" sync --frozen --quiet --python "$(command -v python3)" \
  --extra operator --extra train --extra serve --extra dev --directory "$ROOT" >&2
# Every module's bytecode, written once per install (about 2 minutes): the operators, servers and trainers the
# tests start then import the Kubernetes client, torch and onnxruntime from .pyc files instead of compiling them
# again in each process, as they would where PYTHONDONTWRITEBYTECODE is set. Some packages ship files that are
# not Python (templates, Python 2 samples): compileall fails on those and nothing imports them.
if [ -n "$fresh" ]; then
  say "compiling the environment's bytecode"
  "$venv/bin/python" -m compileall -q -j 0 "$venv/lib" >/dev/null || true
fi
echo "$stamp" > "$venv/.tandem-lock"
say "environment ready: $venv"
echo "$venv"
