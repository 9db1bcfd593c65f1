#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in a cache outside the clone. torch from PyPI is a
# multi-GB CUDA build, so the environment is keyed by a hash of pyproject.toml and only rebuilt when the
# dependencies change. Prints the environment's path on stdout; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
key=$(sha256sum "$root/pyproject.toml" | cut -c1-12)
venv="$CACHE/venv"
say() { printf '[python-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip uv >&2
fi
[ -x "$venv/bin/uv" ] || "$venv/bin/pip" install -q uv >&2
# uv resolves the s3fs/aiobotocore/boto3 pins in seconds where pip backtracks for many minutes.
uv() { VIRTUAL_ENV="$venv" "$venv/bin/uv" "$@"; }
if [ "$(cat "$venv/.tandem-key" 2>/dev/null)" != "$key" ]; then
  say "installing tandem[train,serve,dev] (first time: torch is a large download, several minutes)"
  uv pip install --python "$venv/bin/python" -e "$root[train,serve,dev]" >&2
  echo "$key" > "$venv/.tandem-key"
else
  # The editable install points at whichever clone installed it; point it at this one.
  uv pip install -q --python "$venv/bin/python" --no-deps -e "$root" >&2
fi
say "environment ready: $venv"
echo "$venv"
