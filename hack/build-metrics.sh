#!/usr/bin/env bash
# Builds the metrics pipeline of the local cluster from Go modules at pinned releases into a cache outside
# the clone, keyed by the three versions: metrics-server (the resource metrics API, metrics.k8s.io, that a CPU
# HorizontalPodAutoscaler reads), Prometheus (scrapes the Tandem servers' own request metrics) and
# prometheus-adapter (serves those as custom.metrics.k8s.io, the path request-driven autoscaling takes).
# Kept apart from hack/build-tools.sh, as hack/build-kueue.sh is: only clusters that autoscale need it
# (TANDEM_METRICS=1), and adding it to the control plane's directory name would rebuild Kubernetes.
# Prints the directory as its last line: metrics-server, prometheus (and promtool, which tests the chart's
# alerts), prometheus-adapter.
set -euo pipefail

METRICS_SERVER_VERSION="${TANDEM_METRICS_SERVER_VERSION:-v0.9.0}"
PROMETHEUS_VERSION="${TANDEM_PROMETHEUS_VERSION:-v0.316.0}"
ADAPTER_VERSION="${TANDEM_PROMETHEUS_ADAPTER_VERSION:-v0.12.0}"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
OUT="$CACHE/bin/metrics-server-$METRICS_SERVER_VERSION-prometheus-$PROMETHEUS_VERSION-adapter-$ADAPTER_VERSION"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=build-metrics
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

build_metrics_server() {
  [ -x "$OUT/metrics-server" ] && return 0
  say "building metrics-server $METRICS_SERVER_VERSION (cold: ~3 min on 2 cores)"
  GOBIN="$OUT" go install -p 2 -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}

build_prometheus() {
  [ -x "$OUT/prometheus" ] && [ -x "$OUT/promtool" ] && return 0
  # Without -tags builtinassets the web UI is absent (its page answers 500); scraping, /-/ready and the HTTP
  # query API, all that the adapter and the tests use, are there. promtool tests the chart's alerts
  # (tests/packaging/test_alerts.py).
  say "building prometheus and promtool $PROMETHEUS_VERSION (cold: ~6 min on 2 cores; no web UI assets)"
  GOBIN="$OUT" go install -p 2 -ldflags "-s -w" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}

build_adapter() {
  [ -x "$OUT/prometheus-adapter" ] && return 0
  # `go install ...@version` fails: the module proxy refuses the module's version list ("403 ... not
  # available"); a tools module that requires the exact version resolves it.
  say "building prometheus-adapter $ADAPTER_VERSION through a tools module (cold: ~2 min on 2 cores)"
  local mod="$CACHE/src/prometheus-adapter-$ADAPTER_VERSION"
  mkdir -p "$mod"
  (
    cd "$mod"
    if [ ! -f go.mod ]; then
      go mod init local/adapterbin 2> /dev/null
      go get "sigs.k8s.io/prometheus-adapter/cmd/adapter@$ADAPTER_VERSION"
    fi
    go build -p 2 -ldflags "-s -w" -o "$OUT/prometheus-adapter" sigs.k8s.io/prometheus-adapter/cmd/adapter
  )
}

mkdir -p "$OUT"
build_begin
build_metrics_server
build_adapter
build_prometheus
build_done "metrics pipeline" "$OUT"
