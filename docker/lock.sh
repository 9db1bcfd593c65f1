#!/usr/bin/env bash
# Refreshes every lock together: uv.lock (the development environment and CI) and, exported from it,
# docker/requirements-{operator,serve,serve-gpu,train}.txt (each image's dependencies pinned with hashes). Because the
# image locks are cut from uv.lock, the tests, the images and the Dockerfiles install the same versions.
# `docker/lock.sh` keeps what still resolves; `docker/lock.sh --upgrade` moves everything to the newest release.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
uv="${UV:-$(command -v uv || echo "${TANDEM_CACHE:-$HOME/.cache/tandem}/uv/bin/uv")}"
"$uv" lock "$@"
export_lock() {  # image name, the extra it runs
  "$uv" export --frozen --no-dev --no-emit-project --no-header --no-annotate --format requirements-txt \
    --extra "$2" -o "docker/requirements-$1.txt" >/dev/null
}
export_lock operator operator
export_lock serve serve
export_lock serve-gpu serve-gpu
export_lock train train
echo "locked: uv.lock and docker/requirements-{operator,serve,serve-gpu,train}.txt"
