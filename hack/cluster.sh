#!/usr/bin/env bash
# A real local Kubernetes cluster for tests and the demo, without Docker: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and the kwok controller run as plain processes with fresh
# certificates and free ports; fake GPU/CPU node pools whose pods kwok simulates give scale, and two real
# nodes (kubelet + containerd each, CNI bridge, kube-proxy, CoreDNS: hack/nodes.sh) run real containers.
#
#   hack/cluster.sh up       build missing binaries, start everything, create the node pools, wait Ready
#   hack/cluster.sh down     stop every component (by recorded pid, whole process group), check ports closed
#   hack/cluster.sh status   show components, ports and nodes; exit 1 when the cluster is not running
#   hack/cluster.sh env      print `export KUBECONFIG=...`
#   hack/cluster.sh kueue up|down   start or stop Kueue's manager in the running cluster (hack/lib/kueue.sh)
#   hack/cluster.sh metrics up|down start or stop the metrics pipeline (metrics-server, Prometheus,
#                                   prometheus-adapter: hack/lib/metrics.sh) in the running cluster
#
# Environment: TANDEM_CLUSTER_DIR (state dir, default <repo>/.tandem/cluster), TANDEM_GPU_NODES (2),
# TANDEM_CPU_NODES (3), TANDEM_REAL_NODES (1: start the real nodes; 0: kwok nodes only, no root needed for
# networking), TANDEM_BIN_DIR (use these binaries instead of hack/build-tools.sh), TANDEM_KUEUE (1: also run
# Kueue's manager, built by hack/build-kueue.sh, or taken from TANDEM_KUEUE_DIR), TANDEM_METRICS (1: also run
# the metrics pipeline, built by hack/build-metrics.sh, or taken from TANDEM_METRICS_DIR; needs the real nodes).
# See docs/dev-cluster.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=cluster
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"
# shellcheck source=hack/lib/kueue.sh
. "$ROOT/hack/lib/kueue.sh"
# shellcheck source=hack/lib/metrics.sh
. "$ROOT/hack/lib/metrics.sh"
RUN_DIR="$DIR"
GPU_NODES="${TANDEM_GPU_NODES:-2}"
CPU_NODES="${TANDEM_CPU_NODES:-3}"
REAL_NODES="${TANDEM_REAL_NODES:-1}"
KUEUE="${TANDEM_KUEUE:-0}"
METRICS="${TANDEM_METRICS:-0}"
STAGES="$ROOT/hack/kwok/stages.yaml"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
NODES_SCRIPT="$ROOT/hack/nodes.sh"

# --- processes -------------------------------------------------------------------------------------

# Kueue and the metrics pipeline, optional, go first: they are clients of the others.
stop_all() { stop kueue "${METRICS_COMPONENTS[@]}" $(printf '%s\n' "${COMPONENTS[@]}" | tac); }

# --- certificates ----------------------------------------------------------------------------------

make_pki() {
  new_ca "$DIR/pki" tandem-local-ca
  (
    cd "$DIR/pki"
    local addresses="IP:127.0.0.1"
    [ "$API_HOST" != 127.0.0.1 ] && addresses="$addresses,IP:$API_HOST"
    issue apiserver "/CN=kube-apiserver" serverAuth \
      "subjectAltName=$addresses,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=tandem-admin" clientAuth ""
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth ""
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  metrics_pki
}

write_kubeconfig() {
  kubeconfig "https://$API_HOST:$API_PORT" "$DIR/pki/ca.crt" "$DIR/pki/admin.crt" "$DIR/pki/admin.key" \
    > "$DIR/kubeconfig"
  chmod 600 "$DIR/kubeconfig"
}

# --- components ------------------------------------------------------------------------------------

resolve_bin() {
  resolve_built BIN TANDEM_BIN_DIR build-tools.sh -x \
    etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet kube-proxy coredns crictl
}

start_etcd() {
  start etcd "$BIN/etcd" --name tandem --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "tandem=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --snapshot-count 10000 --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

# The operator's own requests (the service account the chart and the kustomize base create), as metadata:
# tests/e2e/test_rbac_audit.py compares what it did with what the chart grants it.
write_audit_policy() {
  cat > "$DIR/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:tandem-system:tandem"]
- level: None
POLICY
}

start_apiserver() {
  local p="$DIR/pki" reconciler=none
  write_audit_policy
  # With real nodes the API server listens where pods can reach it, and the `kubernetes` Service points there.
  [ "$REAL_NODES" = 1 ] && reconciler=lease
  local aggregation
  mapfile -t aggregation < <(metrics_apiserver_flags)
  start kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$API_HOST" --advertise-address "$API_HOST" --secure-port "$API_PORT" \
    --cert-dir "$p" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --client-ca-file "$p/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --allow-privileged=true \
    --enable-admission-plugins OwnerReferencesPermissionEnforcement \
    --audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$DIR/logs/audit.log" --audit-log-format json \
    --audit-log-maxsize 100 --audit-log-maxbackup 1 \
    --kubelet-client-certificate "$p/apiserver-kubelet-client.crt" --kubelet-client-key "$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --endpoint-reconciler-type "$reconciler" --profiling="${TANDEM_APISERVER_PROFILING:-false}" "${aggregation[@]}"
  wait_for kube-apiserver 60 curl -fsS --cacert "$p/ca.crt" --cert "$p/admin.crt" --key "$p/admin.key" \
    "https://$API_HOST:$API_PORT/readyz"
}

start_controllers() {
  local p="$DIR/pki" kcfg="$DIR/kubeconfig" hpa
  mapfile -t hpa < <(metrics_controller_manager_flags)
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$kcfg" --authentication-kubeconfig "$kcfg" --authorization-kubeconfig "$kcfg" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --cert-dir "$DIR/kcm-certs" --leader-elect=false \
    --root-ca-file "$p/ca.crt" --service-account-private-key-file "$p/sa.key" \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false "${hpa[@]}"
  start kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig "$kcfg" --authentication-kubeconfig "$kcfg" --authorization-kubeconfig "$kcfg" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --cert-dir "$DIR/sched-certs" \
    --leader-elect=false --profiling=false
  # kwok manages only nodes annotated kwok.x-k8s.io/node=fake (and their pods): the real nodes
  # (hack/nodes.sh), without that annotation, are left alone.
  start kwok "$BIN/kwok" --kubeconfig "$kcfg" --config "$STAGES" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds 40 --cidr 10.244.0.0/16 --node-ip 10.255.0.1
}

node_yaml() { # node_yaml NAME POOL CPU MEMORY GPUS
  local name="$1" pool="$2" cpu="$3" mem="$4" gpus="$5"
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
    tandem.dev/pool: $pool
EOF
  if [ "$gpus" -gt 0 ]; then
    cat <<EOF
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.count: "$gpus"
    nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB
spec:
  taints:
  - key: nvidia.com/gpu
    value: present
    effect: NoSchedule
EOF
  fi
  local res="cpu: \"$cpu\"
    memory: $mem
    ephemeral-storage: 500Gi
    pods: \"110\""
  [ "$gpus" -gt 0 ] && res="$res
    nvidia.com/gpu: \"$gpus\""
  cat <<EOF
status:
  allocatable:
    $res
  capacity:
    $res
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
EOF
}

create_nodes() {
  local i
  {
    for ((i = 0; i < GPU_NODES; i++)); do node_yaml "tandem-gpu-$i" gpu 32 256Gi 8; done
    for ((i = 0; i < CPU_NODES; i++)); do node_yaml "tandem-cpu-$i" cpu 16 64Gi 0; done
  } > "$DIR/nodes.yaml"
  kc apply -f "$DIR/nodes.yaml" > /dev/null
}

all_nodes_ready() {
  local want=$((GPU_NODES + CPU_NODES)) ready
  ready="$(kc get nodes -l tandem.dev/pool \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  [ "$ready" -eq "$want" ]
}

# --- commands --------------------------------------------------------------------------------------

running() {
  local name
  for name in "${COMPONENTS[@]}"; do alive "$(pid_of "$name")" || return 1; done
}

cmd_up() {
  if running; then
    say "already running ($DIR)"
    if [ "$KUEUE" = 1 ] || [ "$METRICS" = 1 ]; then load_state; fi
    if [ "$KUEUE" = 1 ]; then kueue_up; fi
    if [ "$METRICS" = 1 ]; then metrics_up; fi
    return 0
  fi
  local t0=$SECONDS
  if [ -d "$DIR/pids" ]; then stop_all; fi
  "$NODES_SCRIPT" down
  resolve_bin
  # Only our own entries are removed: TANDEM_CLUSTER_DIR may point at a directory holding other things.
  rm -rf "${DIR:?}"/{pids,logs,pki,etcd,kcm-certs,sched-certs,state.env,kubeconfig,nodes.yaml,audit-policy.yaml}
  mkdir -p "$DIR/pids" "$DIR/logs"
  UP_OK=0
  trap 'if [ "$UP_OK" -ne 1 ]; then say "up failed; stopping what was started"; "$NODES_SCRIPT" down; stop_all; fi' EXIT
  read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT <<< "$(free_ports 5)"
  API_HOST=127.0.0.1
  if [ "$REAL_NODES" = 1 ]; then
    say "address for the API server that pods can reach"
    API_HOST="$("$NODES_SCRIPT" network-up)"
  fi
  printf 'BIN=%q\nREAL_NODES=%s\nAPI_HOST=%s\nETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\nKCM_PORT=%s\nSCHED_PORT=%s\n' \
    "$BIN" "$REAL_NODES" "$API_HOST" "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KCM_PORT" "$SCHED_PORT" \
    > "$DIR/state.env"
  say "certificates"
  make_pki
  write_kubeconfig
  say "etcd on 127.0.0.1:$ETCD_PORT"
  start_etcd
  say "kube-apiserver on https://$API_HOST:$API_PORT"
  start_apiserver
  say "controller-manager, scheduler, kwok"
  start_controllers
  if [ $((GPU_NODES + CPU_NODES)) -gt 0 ]; then
    say "kwok node pools: $GPU_NODES gpu, $CPU_NODES cpu"
    create_nodes
    wait_for "nodes" 60 all_nodes_ready
  fi
  wait_for "default service account" 60 kc -n default get serviceaccount default
  if [ "$REAL_NODES" = 1 ]; then
    say "real nodes (kubelet + containerd), kube-proxy, CoreDNS"
    BIN="$BIN" API_PORT="$API_PORT" "$NODES_SCRIPT" up
  fi
  if [ "$KUEUE" = 1 ]; then kueue_up; fi
  if [ "$METRICS" = 1 ]; then metrics_up; fi
  UP_OK=1
  say "cluster ready in $((SECONDS - t0))s; KUBECONFIG=$DIR/kubeconfig"
}

cmd_down() {
  if [ ! -d "$DIR/pids" ]; then
    say "nothing to stop ($DIR)"
    return 0
  fi
  local ports=""
  # shellcheck disable=SC1091
  [ -f "$DIR/state.env" ] && . "$DIR/state.env" \
    && ports="$ETCD_PORT $ETCD_PEER_PORT $API_PORT $KCM_PORT $SCHED_PORT"
  kueue_down
  metrics_down
  "$NODES_SCRIPT" down
  stop_all
  local port deadline=$((SECONDS + 10))
  for port in $ports; do
    while port_open "$port"; do
      [ "$SECONDS" -lt "$deadline" ] || die "port $port still open after stopping"
      sleep 0.1
    done
  done
  say "stopped ($DIR)"
}

cmd_status() {
  [ -f "$DIR/state.env" ] || { echo "not running ($DIR)"; return 1; }
  # shellcheck disable=SC1091
  . "$DIR/state.env"
  local name pid ok=0
  for name in "${COMPONENTS[@]}"; do
    pid="$(pid_of "$name")"
    if alive "$pid"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; ok=1; fi
  done
  for name in kueue "${METRICS_COMPONENTS[@]}"; do
    pid="$(pid_of "$name")"
    if alive "$pid"; then echo "$name: running (pid $pid)"; fi
  done
  echo "ports: etcd=$ETCD_PORT apiserver=$API_PORT controller-manager=$KCM_PORT scheduler=$SCHED_PORT"
  echo "kubeconfig: $DIR/kubeconfig"
  [ "$ok" -eq 0 ] && kc get nodes -L tandem.dev/pool
  return "$ok"
}

cmd_env() { echo "export KUBECONFIG=$DIR/kubeconfig"; }

# state.env of the running cluster: BIN and the ports, for commands that join it.
load_state() {
  [ -f "$DIR/state.env" ] || die "no cluster in $DIR"
  # shellcheck disable=SC1091
  . "$DIR/state.env"
}

cmd_kueue() {
  running || die "the cluster in $DIR is not running"
  load_state
  case "${1:-}" in
    up) kueue_up ;;
    down) kueue_down ;;
    *) echo "usage: $0 kueue up|down" >&2; exit 2 ;;
  esac
}

cmd_metrics() {
  running || die "the cluster in $DIR is not running"
  load_state
  case "${1:-}" in
    up) metrics_up ;;
    down) metrics_down ;;
    *) echo "usage: $0 metrics up|down" >&2; exit 2 ;;
  esac
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    kueue) cmd_kueue "${2:-}" ;;
    metrics) cmd_metrics "${2:-}" ;;
    *) echo "usage: $0 up|down|status|env|kueue up|down|metrics up|down" >&2; exit 2 ;;
  esac
}

# Sourcing the script (for debugging a single function) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
