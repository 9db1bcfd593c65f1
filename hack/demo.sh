#!/usr/bin/env bash
# `make demo`: the digits example end to end on a local cluster with real nodes, in real containers.
#
#   hack/demo.sh [--keep]
#
# Builds what is missing (Go binaries, container images; cached after the first run), starts the local
# cluster with its two real nodes (hack/cluster.sh, hack/nodes.sh) or reuses a running one, installs Tandem
# with its Helm chart (hack/node/tandem-values.yaml), trains the digits example with two workers on the GPU
# node, serves it on the CPU node, and prints a summary measured through the Service. Cleans up everything
# it started; with --keep the cluster and the release keep running and it says how to reach them.
# Environment: TANDEM_CLUSTER_DIR (default <repo>/.tandem/cluster), TANDEM_DEMO_REQUESTS (latency sample,
# default 500). See docs/demo.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=demo SAY_T0=$SECONDS
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

say "python environment"
VENV="${TANDEM_VENV:-$("$ROOT/hack/python-env.sh")}"
export TANDEM_CLUSTER_DIR="$(realpath -m "${TANDEM_CLUSTER_DIR:-$ROOT/.tandem/cluster}")"
NAMESPACE=tandem-demo
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
STARTED_CLUSTER=0
INSTALLED=0

cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
    say "kept running (--keep):"
    say "  export KUBECONFIG=$TANDEM_CLUSTER_DIR/kubeconfig; kubectl get tj,infsvc,pods -n $NAMESPACE -o wide"
    say "  stop: $BIN/helm uninstall tandem -n tandem-system; hack/cluster.sh down"
    return
  fi
  say "cleaning up"
  if [ "$STARTED_CLUSTER" = 1 ]; then
    "$ROOT/hack/cluster.sh" down >/dev/null 2>&1 || true
  elif [ -n "${BIN:-}" ] && [ -f "$TANDEM_CLUSTER_DIR/kubeconfig" ]; then
    "$BIN/kubectl" delete namespace "$NAMESPACE" --wait=true --timeout=120s >/dev/null 2>&1 || true
    [ "$INSTALLED" = 1 ] && "$BIN/helm" uninstall tandem -n tandem-system --wait >/dev/null 2>&1 || true
  fi
  [ "$rc" = 0 ] || say "failed (exit $rc); cluster logs in $TANDEM_CLUSTER_DIR/logs and $TANDEM_CLUSTER_DIR/nodes/logs"
}
trap cleanup EXIT

# The two cold builds overlap (as in hack/test.sh): the Go build is CPU-bound, the image build mostly copies
# and compresses files.
say "container images, in the background (cold: ~20 min; warm: seconds)"
"$ROOT/hack/images.sh" build >/dev/null &
IMAGES=$!
say "Kubernetes binaries (cold: built from Go modules, 30-35 min; warm: seconds)"
BIN="$("$ROOT/hack/build-tools.sh" | tail -n1)"
export TANDEM_BIN_DIR="$BIN" KUBECONFIG="$TANDEM_CLUSTER_DIR/kubeconfig"
say "waiting for the container images"
wait "$IMAGES"

say "cluster: $TANDEM_CLUSTER_DIR"
if "$ROOT/hack/cluster.sh" status >/dev/null 2>&1; then
  "$BIN/kubectl" get node real-gpu-0 real-cpu-0 >/dev/null 2>&1 \
    || { say "the running cluster has no real nodes: stop it (hack/cluster.sh down) and run again"; exit 1; }
  say "  reusing the running cluster"
else
  STARTED_CLUSTER=1
  TANDEM_GPU_NODES="${TANDEM_GPU_NODES:-0}" TANDEM_CPU_NODES="${TANDEM_CPU_NODES:-0}" \
    "$ROOT/hack/cluster.sh" up 2>&1 | sed 's/^/  /' >&2
fi

say "helm install tandem (charts/tandem, values hack/node/tandem-values.yaml)"
# A re-run starts from a clean slate.
"$BIN/kubectl" delete namespace "$NAMESPACE" --ignore-not-found --wait=true --timeout=120s >/dev/null
"$BIN/helm" upgrade --install tandem "$ROOT/charts/tandem" --namespace tandem-system --create-namespace \
  --values "$ROOT/hack/node/tandem-values.yaml" --wait --timeout 5m >/dev/null
INSTALLED=1
"$BIN/kubectl" -n tandem-system get pods -o wide | sed 's/^/  /' >&2

PYTHONPATH="$ROOT/tests:$ROOT/operator" "$VENV/bin/python" -m support.walkthrough \
  --namespace "$NAMESPACE" --requests "${TANDEM_DEMO_REQUESTS:-500}"
say "done in $((SECONDS - SAY_T0))s"
