#!/usr/bin/env bash
# Writes docker/requirements-{operator,serve,train}.txt: every dependency of each image pinned with hashes,
# resolved for CPython 3.11 on x86_64 Linux from pyproject.toml. Run after changing dependencies.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
uv="${UV:-$(command -v uv || echo "$HOME/.cache/tandem/venv/bin/uv")}"
lock() {  # name, extra args
  local name=$1; shift
  "$uv" pip compile "$root/pyproject.toml" "$@" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --no-header --no-annotate --quiet -o "$root/docker/requirements-$name.txt"
}
lock operator
lock serve --extra serve
lock train --extra train
