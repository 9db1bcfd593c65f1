#!/usr/bin/env bash
# The whole check, as CI runs it: environment (cached), lint, types, drift of the generated CRDs and operator
# manifests, then every test on a real local control plane. Extra arguments go to pytest (e.g.
# `hack/test.sh tests/unit -x`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SAY_AS=test SAY_GAP=$'\n'
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

say "python environment"
venv="$(hack/python-env.sh)"
# The cached environment is shared by every clone on the machine and its editable install points at the last
# clone that synced it; this tree's own sources come first, whatever another clone did since.
export PATH="$venv/bin:$PATH" PYTHONPATH="$ROOT/operator${PYTHONPATH:+:$PYTHONPATH}"

# The two cold builds overlap: the Go build is CPU-bound, the image build mostly copies and compresses files.
say "container images, in the background (cold: Debian root filesystem and locked wheels, torch included, ~20 min)"
hack/images.sh build >/dev/null &
images=$!

say "control-plane binaries (cold: builds Kubernetes, kubelet, CoreDNS from Go modules, 30-35 min; warm: seconds)"
TANDEM_BIN_DIR="$(hack/build-tools.sh | tail -n 1)"
export TANDEM_BIN_DIR

say "Kueue manager for the queueing tests (cold: 4-10 min from its Go module; warm: seconds)"
TANDEM_KUEUE_DIR="$(hack/build-kueue.sh | tail -n 1)"
export TANDEM_KUEUE_DIR

say "metrics pipeline for the autoscaling tests: metrics-server, Prometheus, prometheus-adapter (cold: ~11 min from Go modules; warm: seconds)"
TANDEM_METRICS_DIR="$(hack/build-metrics.sh | tail -n 1)"
export TANDEM_METRICS_DIR

say "waiting for the container images"
wait "$images"

say "ruff"
ruff check operator tests benchmarks
say "mypy"
mypy
say "CRDs match the models"
tandem crds --check
say "manifests/operator matches the chart"
hack/manifests.sh --check

say "pytest"
exec pytest "${@:-tests}"
