#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules into a cache outside the clone, keyed by
# version, so that only a cold machine pays for the build. No binary downloads are possible here:
# kube-apiserver & co. (and the real nodes' kubelet and kube-proxy) come from k8s.io/kubernetes through a
# tools module with replace lines for the staging modules, etcd from its server module, kwok, helm and
# CoreDNS and crictl with `go install` of their modules.
set -euo pipefail

K8S_VERSION="${TANDEM_K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${TANDEM_ETCD_VERSION:-v3.6.5}"
KWOK_VERSION="${TANDEM_KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${TANDEM_HELM_VERSION:-v3.19.0}"
COREDNS_VERSION="${TANDEM_COREDNS_VERSION:-v1.15.0}"
CRICTL_VERSION="${TANDEM_CRICTL_VERSION:-v1.34.0}"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION-coredns-$COREDNS_VERSION-crictl-$CRICTL_VERSION"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=build-tools
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

mkdir -p "$BIN"
work="$CACHE/src"
mkdir -p "$work"

build_kubernetes() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) missing=() b
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "building ${missing[*]} $K8S_VERSION from k8s.io/kubernetes (cold build: 15-30 min on 2 cores)"
  local mod="$work/k8s-$K8S_VERSION" minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local staging_ver="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod"
  (
    cd "$mod"
    # The module is written anew when it lacks a wanted command (an older cache built fewer of them).
    local have_all=1
    for b in "${want[@]}"; do grep -q "k8s.io/kubernetes/cmd/$b\$" go.mod 2>/dev/null || have_all=0; done
    if [ "$have_all" = 0 ]; then
      say "resolving staging modules of k8s.io/kubernetes@$K8S_VERSION"
      local gomod
      gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
      {
        echo "module local/k8sbin"
        echo "go 1.24.0"
        echo "godebug default=go1.24"
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo "tool ("
        for b in "${want[@]}"; do echo "  k8s.io/kubernetes/cmd/$b"; done
        echo ")"
        echo "replace ("
        sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" | while read -r m; do
          echo "  $m => $m $staging_ver"
        done
        echo ")"
      } > go.mod.new
      mv go.mod.new go.mod
      say "go mod tidy (downloads the module graph)"
      go mod tidy
    fi
    local x="" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      x="$x -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=2025-01-01T00:00:00Z"
    done
    local pkgs=()
    for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
    say "go build ${missing[*]}"
    go build -p 2 -ldflags "-s -w $x" -o "$BIN/" "${pkgs[@]}"
  )
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return 0
  say "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  local mod="$work/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  (
    cd "$mod"
    if [ ! -f go.mod ]; then
      printf 'module local/etcdbin\ngo 1.24.0\nrequire go.etcd.io/etcd/server/v3 %s\ntool go.etcd.io/etcd/server/v3\n' "$ETCD_VERSION" > go.mod
      go mod tidy
    fi
    go build -p 2 -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  )
}

build_kwok() {
  [ -x "$BIN/kwok" ] && return 0
  say "building kwok $KWOK_VERSION"
  GOBIN="$BIN" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  [ -x "$BIN/helm" ] && return 0
  say "building helm $HELM_VERSION"
  local k8sminor="${K8S_VERSION#v1.}"; k8sminor="${k8sminor%%.*}"
  GOBIN="$BIN" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

build_coredns() {
  [ -x "$BIN/coredns" ] && return 0
  say "building coredns $COREDNS_VERSION"
  GOBIN="$BIN" go install -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
}

build_crictl() {
  [ -x "$BIN/crictl" ] && return 0
  say "building crictl $CRICTL_VERSION"
  GOBIN="$BIN" go install -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

# One build at a time (hack/cluster.sh and the pytest fixtures run this script too).
build_begin
build_etcd
build_kwok
build_helm
build_coredns
build_crictl
build_kubernetes
build_done binaries "$BIN"
