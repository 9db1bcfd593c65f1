# Kueue's manager as a host process of the local cluster; sourced by hack/cluster.sh, never run.
# Needs what hack/lib/common.sh defines and cluster.sh sets (DIR, RUN_DIR, BIN, the local CA in $DIR/pki).
#
# The manager runs beside the API server, as the other control-plane components do, not in a pod: its
# webhooks are registered by URL on 127.0.0.1 with a certificate from the local CA (hack/kueue/render.py),
# so no Service, cert-manager or internal certificate rotation is involved (internalCertManagement off).
# Kueue then reads its metrics certificate from a fixed path, /etc/kueue/metrics/certs; the manager gets it
# through an overlay on /etc in a mount namespace of its own, so the host's /etc is never written and
# several clusters on one machine each have their own. (Mount namespaces need root, as the real nodes do.)

KUEUE_ROOT="$ROOT/hack/kueue"

kueue_resolve() { resolve_built KUEUE_DIR TANDEM_KUEUE_DIR build-kueue.sh -e kueue webhooks.yaml conversion.txt crds; }

# kueue_render WHAT FILE...: an upstream manifest pointed at this cluster's manager (JSON list on stdout).
kueue_render() {
  local what="$1"; shift
  kc create --dry-run=client -o json -f "$1" | python3 "$KUEUE_ROOT/render.py" "$what" "$KUEUE_WEBHOOK_PORT" \
    "$DIR/pki/ca.crt" "${@:2}"
}

kueue_config() {
  cat <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: 127.0.0.1:$KUEUE_HEALTH_PORT
metrics:
  bindAddress: 127.0.0.1:$KUEUE_METRICS_PORT
webhook:
  host: 127.0.0.1
  port: $KUEUE_WEBHOOK_PORT
  certDir: $DIR/kueue/certs
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
clientConnection:
  qps: 50
  burst: 100
# Tandem's training runs are batch/v1 Jobs; only those carrying kueue.x-k8s.io/queue-name are queued.
integrations:
  frameworks: ["batch/job"]
# The visibility API would need an APIService and a port of its own per cluster; kubectl reads the same
# pending positions from LocalQueue and Workload status.
featureGates:
  VisibilityOnDemand: false
EOF
}

# The webhook answers once a dry-run create of a ResourceFlavor passes through it.
kueue_webhook_answers() {
  kc create --dry-run=server -o name -f - <<'EOF'
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {name: tandem-webhook-probe}
EOF
}

kueue_up() {
  kueue_resolve
  local k="$DIR/kueue"
  if alive "$(pid_of kueue)"; then
    say "kueue already running"
    return 0
  fi
  rm -rf "${k:?}"
  mkdir -p "$k/certs" "$k/etc-upper/kueue/metrics/certs" "$k/etc-work"
  read -r KUEUE_WEBHOOK_PORT KUEUE_HEALTH_PORT KUEUE_METRICS_PORT <<< "$(free_ports 3)"
  printf 'KUEUE_DIR=%q\nKUEUE_WEBHOOK_PORT=%s\nKUEUE_HEALTH_PORT=%s\nKUEUE_METRICS_PORT=%s\n' \
    "$KUEUE_DIR" "$KUEUE_WEBHOOK_PORT" "$KUEUE_HEALTH_PORT" "$KUEUE_METRICS_PORT" > "$k/state.env"
  (cd "$DIR/pki" && issue kueue "/CN=kueue-webhook" serverAuth "subjectAltName=IP:127.0.0.1")
  cp "$DIR/pki/kueue.crt" "$k/certs/tls.crt"
  cp "$DIR/pki/kueue.key" "$k/certs/tls.key"
  cp "$k/certs/tls.crt" "$k/certs/tls.key" "$k/etc-upper/kueue/metrics/certs/"
  kueue_config > "$k/config.yaml"

  say "kueue CRDs ($(basename "$KUEUE_DIR"))"
  kc create namespace kueue-system --dry-run=client -o yaml | kc apply -f - > /dev/null
  # Server-side apply: the Workload CRD is larger than client-side apply's last-applied annotation allows.
  kueue_render crds "$KUEUE_DIR/crds" "$KUEUE_DIR/conversion.txt" \
    | kc apply --server-side --force-conflicts --field-manager tandem-cluster -f - > /dev/null
  kc wait --for condition=Established --timeout 60s -f "$KUEUE_DIR/crds" > /dev/null

  say "kueue manager (webhooks on https://127.0.0.1:$KUEUE_WEBHOOK_PORT)"
  # shellcheck disable=SC2016
  start kueue unshare --mount --propagation private sh -c \
    'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-upper,workdir=$1/etc-work" /etc &&
     exec "$2" --config "$1/config.yaml" --kubeconfig "$3"' \
    kueue "$k" "$KUEUE_DIR/kueue" "$DIR/kubeconfig"
  wait_for kueue 120 curl -fsS "http://127.0.0.1:$KUEUE_HEALTH_PORT/readyz"
  kueue_render webhooks "$KUEUE_DIR/webhooks.yaml" | kc apply -f - > /dev/null
  wait_for kueue 60 kueue_webhook_answers
}

kueue_down() {
  # Webhooks go first: with failurePolicy Fail, a registered webhook whose manager is gone refuses every Job.
  if [ -f "$DIR/kubeconfig" ] && [ -f "$DIR/kueue/state.env" ]; then
    kc delete mutatingwebhookconfiguration kueue-mutating-webhook-configuration --ignore-not-found > /dev/null || true
    kc delete validatingwebhookconfiguration kueue-validating-webhook-configuration --ignore-not-found > /dev/null || true
  fi
  stop kueue
}
