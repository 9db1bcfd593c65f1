#!/usr/bin/env bash
# Builds Kueue's manager from its Go module at a pinned release into a cache outside the clone, keyed by
# version, beside the manifests that come with that release (CRDs, webhook configurations), so a cluster
# runs the manager with the API it was built for. Kept apart from hack/build-tools.sh: only clusters that
# queue work need it (TANDEM_KUEUE=1), and adding it to the control plane's directory name would rebuild
# Kubernetes. Prints the directory as its last line: kueue, crds/*.yaml, conversion.txt (CRDs
# converted by the manager), webhooks.yaml.
set -euo pipefail

KUEUE_VERSION="${TANDEM_KUEUE_VERSION:-v0.17.0}"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
OUT="$CACHE/bin/kueue-$KUEUE_VERSION"
MODULE=sigs.k8s.io/kueue

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=build-kueue
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

build_begin
if [ ! -x "$OUT/kueue" ] || [ ! -f "$OUT/webhooks.yaml" ]; then
  mkdir -p "$OUT"
  say "downloading $MODULE@$KUEUE_VERSION (module source: CRDs and webhook manifests)"
  src="$(go mod download -json "$MODULE@$KUEUE_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$OUT/crds.new"
  mkdir "$OUT/crds.new"
  cp "$src"/config/components/crd/bases/*.yaml "$OUT/crds.new/"
  rm -rf "$OUT/crds" && mv "$OUT/crds.new" "$OUT/crds"
  # The CRDs whose versions upstream converts with the manager's /convert webhook (its kustomize patches).
  sed -n 's#^- path: patches/webhook_in_\(.*\)\.yaml#\1.kueue.x-k8s.io#p' \
    "$src/config/components/crd/kustomization.yaml" > "$OUT/conversion.txt"
  if [ ! -x "$OUT/kueue" ]; then
    say "building the kueue manager $KUEUE_VERSION (cold: ~4-10 min on 2 cores; warm: seconds)"
    GOBIN="$OUT" go install -p 2 -ldflags "-s -w -X $MODULE/pkg/version.GitVersion=$KUEUE_VERSION" \
      "$MODULE/cmd/kueue@$KUEUE_VERSION"
  fi
  # Written last: its presence says the directory is complete.
  cp "$src/config/components/webhook/manifests.yaml" "$OUT/webhooks.yaml.new"
  mv "$OUT/webhooks.yaml.new" "$OUT/webhooks.yaml"
fi
build_done "kueue $KUEUE_VERSION" "$OUT"
