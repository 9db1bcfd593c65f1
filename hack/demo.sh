#!/usr/bin/env bash
# `make demo`: the digits example end to end on a local cluster, for real.
#
#   hack/demo.sh [--keep]
#
# Builds or reuses the local control plane (hack/cluster.sh), installs Tandem's CRDs and two ComputePools on
# the local executor's nodes (local-gpu, local-cpu), starts the executor (pods run as local processes) and
# the operator, trains the digits example with two workers, serves it, and prints a summary. Cleans up
# everything it started; with --keep the cluster, executor and operator keep running and it says how to
# reach them. Environment: TANDEM_CLUSTER_DIR (default <repo>/.tandem/cluster), TANDEM_DEMO_DIR
# (default <repo>/.tandem/demo), TANDEM_DEMO_REQUESTS (latency sample, default 500). See docs/demo.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A fresh machine gets its environment here (cached after the first run, like the control plane below).
VENV="${TANDEM_VENV:-$("$ROOT/hack/python-env.sh")}"
PY="$VENV/bin/python"
DEMO="$(realpath -m "${TANDEM_DEMO_DIR:-$ROOT/.tandem/demo}")"
export TANDEM_CLUSTER_DIR="$(realpath -m "${TANDEM_CLUSTER_DIR:-$ROOT/.tandem/cluster}")"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
STARTED_CLUSTER=0
PIDS=()
T0=$SECONDS

say() { printf '[demo %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }

cleanup() {
  local rc=$?
  if [ "$KEEP" = 1 ] && [ "$rc" = 0 ]; then
    say "kept running (--keep):"
    say "  export KUBECONFIG=$TANDEM_CLUSTER_DIR/kubeconfig; kubectl get tj,infsvc -n tandem-demo"
    say "  executor pid ${PIDS[0]:-?} (log $DEMO/executor.log), operator pid ${PIDS[1]:-?} (log $DEMO/operator.log)"
    say "  stop: kill ${PIDS[*]:-}; hack/cluster.sh down"
    return
  fi
  say "cleaning up"
  if [ -f "$TANDEM_CLUSTER_DIR/kubeconfig" ] && [ "$STARTED_CLUSTER" = 0 ]; then
    "$KUBECTL" --kubeconfig "$TANDEM_CLUSTER_DIR/kubeconfig" delete namespace tandem-demo --wait=false >/dev/null 2>&1 || true
    "$KUBECTL" --kubeconfig "$TANDEM_CLUSTER_DIR/kubeconfig" delete computepools local-gpu local-cpu >/dev/null 2>&1 || true
  fi
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "$STARTED_CLUSTER" = 1 ]; then "$ROOT/hack/cluster.sh" down >/dev/null 2>&1 || true; fi
  [ "$rc" = 0 ] || say "failed (exit $rc); logs in $DEMO"
}
trap cleanup EXIT

mkdir -p "$DEMO"
BIN="$("$ROOT/hack/build-tools.sh" | tail -n1)"
KUBECTL="$BIN/kubectl"

say "cluster: $TANDEM_CLUSTER_DIR"
if "$ROOT/hack/cluster.sh" status >/dev/null 2>&1; then
  say "  reusing the running cluster"
else
  STARTED_CLUSTER=1
  TANDEM_GPU_NODES="${TANDEM_GPU_NODES:-1}" TANDEM_CPU_NODES="${TANDEM_CPU_NODES:-1}" \
    "$ROOT/hack/cluster.sh" up 2>&1 | sed 's/^/  /' >&2
fi
export KUBECONFIG="$TANDEM_CLUSTER_DIR/kubeconfig"
k() { "$KUBECTL" "$@"; }

say "installing Tandem's CRDs (manifests/crds) and the local pools"
k apply --server-side -f "$ROOT/manifests/crds" >/dev/null
k wait --for=condition=Established crd --all --timeout=60s >/dev/null
"$PY" - <<'PYEOF' | k apply --server-side -f - >/dev/null
import json
from tandem.devexec.digits import local_pools
items = [{"apiVersion": "tandem.dev/v1alpha1", "kind": "ComputePool", "metadata": {"name": n}, "spec": s}
         for n, s in local_pools().items()]
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PYEOF

say "starting the local executor (nodes local-gpu-0, local-cpu-0; log $DEMO/executor.log)"
"$PY" -m tandem.devexec --kubeconfig "$KUBECONFIG" --state-dir "$DEMO/executor" > "$DEMO/executor.log" 2>&1 &
PIDS+=($!)
say "starting the operator (log $DEMO/operator.log)"
"$VENV/bin/tandem" operator --metrics-port 0 --health-port 0 > "$DEMO/operator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do  # the nodes appear once the executor has registered them
  k get node local-gpu-0 local-cpu-0 >/dev/null 2>&1 && break
  sleep 0.5
done
k wait --for=condition=Ready node/local-gpu-0 node/local-cpu-0 --timeout=60s >/dev/null

# A re-run with the same names starts from a clean slate.
k delete namespace tandem-demo --ignore-not-found --wait=true --timeout=120s >/dev/null

"$PY" -m tandem.devexec.walkthrough --kubeconfig "$KUBECONFIG" --namespace tandem-demo \
  --requests "${TANDEM_DEMO_REQUESTS:-500}"
say "done in $((SECONDS - T0))s"
