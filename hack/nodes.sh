#!/usr/bin/env bash
# Real nodes for the local cluster, the way kind gives them: a kubelet and a containerd per node, the CNI
# bridge, kube-proxy in iptables mode and CoreDNS, all on this machine beside the kwok nodes.
#
#   hack/nodes.sh network-up   the API server's pod-reachable address (run before the API server starts)
#   hack/nodes.sh up           node images, bridges, containerd + kubelet per node, kube-proxy, CoreDNS,
#                              the volume provisioner (hack/node/volumes.py)
#   hack/nodes.sh down         stop all of it and remove what it created (mounts, links, chains, cgroups)
#   hack/nodes.sh leftovers    print what a `down` left behind; exit 1 when anything is
#
# hack/cluster.sh calls it with TANDEM_CLUSTER_DIR, BIN (the Go-built binaries) and API_PORT set.
# Two nodes: real-gpu-0 (label tandem.dev/pool=real-gpu, the nvidia.com/gpu taint, four advertised
# nvidia.com/gpu) and real-cpu-0 (tandem.dev/pool=real-cpu). Both carry the taint
# tandem.dev/real-node=true:NoSchedule and pool labels of their own, so that only pods meant for real
# containers land on them; kwok's fake nodes (tandem.dev/pool=gpu|cpu) keep taking everything else. Why
# each setting is there: docs/dev-cluster.md (Real nodes, and its table of what the machine refuses).
#
# Nothing leaves the machine: pods get routes to the pod and service ranges only (no default route), the
# bridge does not masquerade, forwarded pod traffic toward anything else is dropped, and CoreDNS has no
# upstream. Only one cluster on a machine can run real nodes at a time (the links have fixed names).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SAY_AS=nodes
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
ND="$DIR/nodes"
RUN_DIR="$ND"
# The node containerds' image stores outlive a cluster, as a node image would: importing the 6 GB trainer
# image anew for every cluster would cost minutes each time.
STORE="$CACHE/node-store"
INFRA="$CACHE/images/infra"
SOCKETS=/run/tandem-nodes

POD_NET=10.88.0.0/16
API_ADDR=10.88.255.1
API_LINK=tandem-api
DNS_ADDR=10.0.0.10
CLUSTER_DOMAIN=cluster.local
NODES=(real-gpu-0 real-cpu-0)
REAL_TAINT_KEY=tandem.dev/real-node
FORWARD_CHAIN=TANDEM-FORWARD
OUTPUT_CHAIN=TANDEM-OUTPUT
KWOK_FAKE_NETS="${KWOK_FAKE_NETS:-10.244.0.0/16 10.255.0.1/32}"
PAUSE_IMAGE=localhost/tandem-pause:3.10
COREDNS_VERSION="${TANDEM_COREDNS_VERSION:-v1.15.0}"
COREDNS_IMAGE="localhost/tandem-coredns:$COREDNS_VERSION"
KUBE_PROXY_NODE=real-cpu-0

# node_vars NAME: the node's pool, bridge, subnet, address and cgroup root.
node_vars() {
  NAME=$1
  case "$NAME" in
    real-gpu-0) POOL=real-gpu BRIDGE=tandem-gpu0 SUBNET=10.88.0.0/24 NODE_IP=10.88.0.1 ;;
    real-cpu-0) POOL=real-cpu BRIDGE=tandem-cpu0 SUBNET=10.88.1.0/24 NODE_IP=10.88.1.1 ;;
    *) die "unknown node $NAME" ;;
  esac
  NODE_DIR="$ND/$NAME"
  NS_FILE="$ND/ns/$NAME"
  # A short fixed path: containerd refuses socket paths over 104 bytes, and state dirs can be long.
  SOCK="$SOCKETS/$NAME/containerd.sock"
  CGROUP_ROOT="/tandem-$NAME"
}

# --- processes -------------------------------------------------------------------------------------

# Every process whose command line names the nodes' directory or sockets (containerd shims included).
our_processes() {
  local p cmdline
  for p in /proc/[0-9]*; do
    cmdline="$(tr '\0' ' ' 2> /dev/null < "$p/cmdline")" || continue  # the process may be gone already
    if [[ "$cmdline" == *"$ND/"* || "$cmdline" == *"$SOCKETS/"* ]]; then echo "${p#/proc/}"; fi
  done
  return 0
}

cri() { "$BIN/crictl" --runtime-endpoint "unix://$SOCK" --timeout 30s "$@"; }

ensure_packages() {
  local missing=() tool
  for tool in containerd runc conntrack iptables; do command -v "$tool" > /dev/null || missing+=("$tool"); done
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc containernetworking-plugins conntrack \
    iptables > /dev/null
}

# --- images the nodes need that nobody can pull here -----------------------------------------------

# infra_image NAME REF FILE ENTRYPOINT_JSON: a one-binary image FROM scratch, saved as an OCI archive named
# after the binary's hash (rebuilt only when the binary changes).
infra_image() {
  local name=$1 ref=$2 file=$3 entrypoint=$4 key archive ctr
  key=$(sha256sum "$file" | cut -c1-12)
  archive="$INFRA/$name-$key.oci.tar"
  if [ ! -s "$archive" ]; then
    say "image $ref from $file"
    rm -f "$INFRA/$name"-*.oci.tar
    ctr=$(buildah from --quiet scratch)
    buildah copy --quiet --chmod 0755 "$ctr" "$file" "/$name" > /dev/null
    buildah config --entrypoint "$entrypoint" --user 65532:65532 \
      --label "org.opencontainers.image.title=tandem-$name" "$ctr"
    buildah commit --quiet --rm "$ctr" "$ref" > /dev/null
    buildah push --quiet "$ref" "oci-archive:$archive.tmp:$ref" > /dev/null
    mv "$archive.tmp" "$archive"
  fi
  echo "$archive"
}

build_infra_images() {
  mkdir -p "$INFRA"
  export CONTAINERS_CONF="$CACHE/containers/containers.conf"
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  cp "$ROOT/hack/containers.conf" "$CONTAINERS_CONF"
  local pause="$INFRA/pause"
  if [ ! -x "$pause" ] || [ "$ROOT/hack/node/pause.go" -nt "$pause" ]; then
    say "building the pause binary (hack/node/pause.go)"
    (cd "$ROOT/hack/node" && CGO_ENABLED=0 GOFLAGS=-trimpath go build -ldflags "-s -w" -o "$pause" pause.go)
  fi
  PAUSE_ARCHIVE=$(infra_image pause "$PAUSE_IMAGE" "$pause" '["/pause"]')
  COREDNS_ARCHIVE=$(infra_image coredns "$COREDNS_IMAGE" "$BIN/coredns" '["/coredns"]')
}

# import_image ARCHIVE REF: into the node's containerd unless it already holds REF.
import_image() {
  if ctr --address "$SOCK" --namespace k8s.io images ls -q | grep -qxF "$2"; then return 0; fi
  say "$NAME: importing $2"
  ctr --address "$SOCK" --namespace k8s.io images import --no-unpack=false "$1" > /dev/null
}

# --- network ---------------------------------------------------------------------------------------

cmd_network_up() {
  mkdir -p "$ND"
  if ip link show "$API_LINK" > /dev/null 2>&1; then
    [ -f "$ND/network.env" ] || die "link $API_LINK exists but not for $DIR: is another cluster running real nodes?"
  fi
  [ -f "$ND/network.env" ] || printf 'IP_FORWARD=%s\n' "$(cat /proc/sys/net/ipv4/ip_forward)" > "$ND/network.env"
  ip link add "$API_LINK" type bridge 2> /dev/null || true  # no dummy links in this kernel; a bridge without ports serves
  ip addr replace "$API_ADDR/32" dev "$API_LINK"
  ip link set "$API_LINK" up
  # Unassigned service and pod addresses end on this portless bridge instead of the default route.
  ip route replace "$SERVICE_CIDR" dev "$API_LINK"
  ip route replace "$POD_NET" dev "$API_LINK"
  echo "$API_ADDR"
}

network_up() {
  local name
  for name in "${NODES[@]}"; do
    node_vars "$name"
    ip link add "$BRIDGE" type bridge 2> /dev/null || true
    ip addr replace "$NODE_IP/${SUBNET#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  done
  # Routing between the node bridges (and to Services' endpoints) needs forwarding; restored by `down`.
  echo 1 > /proc/sys/net/ipv4/ip_forward
  iptables -N "$FORWARD_CHAIN" 2> /dev/null || iptables -F "$FORWARD_CHAIN"
  iptables -A "$FORWARD_CHAIN" -s "$POD_NET" -d "$POD_NET" -j ACCEPT
  iptables -A "$FORWARD_CHAIN" -s "$POD_NET" -j DROP -m comment --comment "pods reach nothing off this machine"
  iptables -A "$FORWARD_CHAIN" -d "$POD_NET" -j DROP -m comment --comment "nothing off this machine reaches pods"
  iptables -C FORWARD -j "$FORWARD_CHAIN" 2> /dev/null || iptables -I FORWARD 1 -j "$FORWARD_CHAIN"
  # kwok's fake nodes and pods have addresses nobody here owns; with kube-proxy a Service in front of
  # fake pods would send the machine's own connections to them out of its uplink. Refused instead.
  iptables -N "$OUTPUT_CHAIN" 2> /dev/null || iptables -F "$OUTPUT_CHAIN"
  local fake
  for fake in $KWOK_FAKE_NETS; do
    iptables -A "$OUTPUT_CHAIN" -d "$fake" -j REJECT -m comment --comment "kwok's fake addresses"
  done
  iptables -C OUTPUT -j "$OUTPUT_CHAIN" 2> /dev/null || iptables -I OUTPUT 1 -j "$OUTPUT_CHAIN"
}

# drop_chains TABLE PREFIX: remove the jumps into chains named PREFIX*, then the chains.
drop_chains() {
  local table=$1 prefix=$2 rule chain chains
  iptables-save -t "$table" 2> /dev/null | grep -E "^-A [^ ]+ .*-j $prefix" | grep -vE "^-A $prefix" \
    | sed 's/^-A/-D/' | while read -r rule; do eval "iptables -t $table $rule" 2> /dev/null || true; done \
    || true  # grep finds no rule
  chains=$(iptables -t "$table" -S 2> /dev/null | awk -v p="$prefix" '$1 == "-N" && index($2, p) == 1 {print $2}')
  for chain in $chains; do iptables -t "$table" -F "$chain" 2> /dev/null || true; done
  for chain in $chains; do iptables -t "$table" -X "$chain" 2> /dev/null || true; done
}

network_down() {
  local name
  for name in "${NODES[@]}"; do
    node_vars "$name"
    ip link del "$BRIDGE" 2> /dev/null || true
  done
  ip link del "$API_LINK" 2> /dev/null || true
  drop_chains filter TANDEM-
  # The CNI portmap plugin's chains: it creates them on first use and leaves them when the last pod goes.
  drop_chains nat CNI-
  drop_chains filter CNI-
  if [ -f "$ND/network.env" ]; then
    # shellcheck disable=SC1091
    . "$ND/network.env"
    echo "$IP_FORWARD" > /proc/sys/net/ipv4/ip_forward
    rm -f "$ND/network.env"
  fi
}

# --- one node --------------------------------------------------------------------------------------

# Host paths the kubelet and containerd hard-code; each node gets its own copy bound over them inside its
# private mount namespace. Those missing on the host are created (empty) and removed again by `down`.
HARD_CODED=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd)

mount_namespace() {
  mkdir -p "$ND/ns"
  if ! mountpoint -q "$ND/ns"; then
    mount --bind "$ND/ns" "$ND/ns"
    mount --make-private "$ND/ns"
  fi
  local path
  for path in "${HARD_CODED[@]}"; do
    if [ ! -e "$path" ]; then
      mkdir -p "$path"
      echo "$path" >> "$ND/created-dirs"
    fi
  done
  mkdir -p "$ND/sysctl"
  # What protectKernelDefaults checks for; the machine keeps its own values outside the namespace.
  echo 1 > "$ND/sysctl/overcommit_memory"; echo 10 > "$ND/sysctl/panic"; echo 1 > "$ND/sysctl/panic_on_oops"
  touch "$NS_FILE"
  unshare --mount="$NS_FILE" --propagation slave true
  nsenter --mount="$NS_FILE" -- sh -eu -c '
    mount --bind "$1/sysctl/overcommit_memory" /proc/sys/vm/overcommit_memory
    mount --bind "$1/sysctl/panic" /proc/sys/kernel/panic
    mount --bind "$1/sysctl/panic_on_oops" /proc/sys/kernel/panic_on_oops
    shift
    node=$1; shift
    for path in "$@"; do
      mkdir -p "$node/host$path"
      mount --bind "$node/host$path" "$path"
    done' sh "$ND" "$NODE_DIR" "${HARD_CODED[@]}"
}

cgroups_up() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "$hierarchy" ] && mkdir -p "$hierarchy${CGROUP_ROOT#/}" 2> /dev/null || true
  done
}

# Kill whatever is still in the node's cgroups, then remove them deepest first.
cgroups_down() {
  local hierarchy dir
  for hierarchy in /sys/fs/cgroup/*/; do
    dir="$hierarchy${CGROUP_ROOT#/}"
    [ -d "$dir" ] || continue
    find "$dir" -name cgroup.procs -exec cat {} + 2> /dev/null | xargs -r kill -KILL 2> /dev/null || true
  done
  for hierarchy in /sys/fs/cgroup/*/; do
    for dir in "$hierarchy${CGROUP_ROOT#/}" "${hierarchy}kubepods"; do
      [ -d "$dir" ] || continue
      [ "$dir" = "${hierarchy}kubepods" ] && [ "$hierarchy" != /sys/fs/cgroup/unified/ ] && continue
      find "$dir" -depth -type d -exec rmdir {} + 2> /dev/null || true
    done
  done
}

write_node_config() {
  mkdir -p "$NODE_DIR/cni" "$NODE_DIR/pki" "$NODE_DIR/containerd-state" "$NODE_DIR/opt" "$STORE/$NAME"
  cat > "$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$STORE/$NAME"
state = "$NODE_DIR/containerd-state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni"
EOF
  cat > "$NODE_DIR/cni/10-tandem.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "tandem",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$SUBNET", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$POD_NET"}, {"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  : > "$ND/resolv.conf"  # no upstream resolver for pods: cluster DNS only
  (cd "$DIR/pki" && issue "kubelet-$NAME" "/O=system:nodes/CN=system:node:$NAME" clientAuth "")
  kubeconfig "https://$API_ADDR:$API_PORT" "$DIR/pki/ca.crt" "$DIR/pki/kubelet-$NAME.crt" \
    "$DIR/pki/kubelet-$NAME.key" > "$NODE_DIR/kubeconfig"
  local kubelet_port healthz_port
  read -r kubelet_port healthz_port <<< "$(free_ports 2)"
  echo "$kubelet_port $healthz_port" > "$NODE_DIR/ports"
  local taints="  - {key: $REAL_TAINT_KEY, value: \"true\", effect: NoSchedule}"
  [ "$POOL" = real-gpu ] && taints="$taints
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}"
  cat > "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
maxOpenFiles: 20000
makeIPTablesUtilChains: false
protectKernelDefaults: true
enforceNodeAllocatable: [pods]
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
clusterDNS: [$DNS_ADDR]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $ND/resolv.conf
podLogsDir: /var/log/pods
maxPods: 110
registerWithTaints:
$taints
EOF
}

node_up() {
  node_vars "$1"
  mkdir -p "$NODE_DIR"
  mkdir -p "$(dirname "$SOCK")"
  write_node_config
  mount_namespace
  cgroups_up
  say "$NAME: containerd (image store $STORE/$NAME)"
  start "containerd-$NAME" nsenter --mount="$NS_FILE" -- containerd --config "$NODE_DIR/containerd.toml"
  wait_for "containerd-$NAME" 30 cri version
  # Pods of an earlier cluster whose teardown was cut short: their records sit in the kept image store.
  cri rmp --force --all > /dev/null 2>&1 || true
  import_image "$PAUSE_ARCHIVE" "$PAUSE_IMAGE"
  [ "$POOL" = real-cpu ] && import_image "$COREDNS_ARCHIVE" "$COREDNS_IMAGE"
  local images=(operator server)
  [ "$POOL" = real-gpu ] && images+=(trainer server-gpu)
  "$ROOT/hack/images.sh" load --containerd "$SOCK" "${images[@]}" > /dev/null \
    || say "$NAME: some Tandem images are not built yet (hack/images.sh build); pods using them will not start"
  say "$NAME: kubelet on $NODE_IP, bridge $BRIDGE ($SUBNET)"
  local labels="tandem.dev/pool=$POOL,$REAL_TAINT_KEY=true"
  [ "$POOL" = real-gpu ] && labels="$labels,nvidia.com/gpu.present=true,nvidia.com/gpu.count=4"
  start "kubelet-$NAME" nsenter --mount="$NS_FILE" -- "$BIN/kubelet" \
    --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/kubeconfig" --cert-dir "$NODE_DIR/pki" \
    --hostname-override "$NAME" --node-ip "$NODE_IP" --node-labels "$labels" --v 1
}

node_down() {
  node_vars "$1"
  [ -d "$NODE_DIR" ] || return 0
  stop "kubelet-$NAME"
  if alive "$(pid_of "containerd-$NAME")"; then
    cri rmp --force --all > /dev/null 2>&1 || say "$NAME: could not remove every pod through CRI"
  fi
  stop "containerd-$NAME"
  cgroups_down
  if [ -e "$NS_FILE" ]; then
    umount "$NS_FILE" 2> /dev/null || true
    rm -f "$NS_FILE"
  fi
}

# --- kube-proxy and CoreDNS ------------------------------------------------------------------------

kube_proxy_up() {
  (cd "$DIR/pki" && issue kube-proxy "/CN=system:kube-proxy" clientAuth "")
  kubeconfig "https://$API_ADDR:$API_PORT" "$DIR/pki/ca.crt" "$DIR/pki/kube-proxy.crt" "$DIR/pki/kube-proxy.key" \
    > "$ND/kube-proxy.kubeconfig"
  local healthz metrics
  read -r healthz metrics <<< "$(free_ports 2)"
  cat > "$ND/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ND/kube-proxy.kubeconfig}
hostnameOverride: $KUBE_PROXY_NODE
mode: iptables
clusterCIDR: $POD_NET
nodePortAddresses: [$POD_NET]
healthzBindAddress: 127.0.0.1:$healthz
metricsBindAddress: 127.0.0.1:$metrics
oomScoreAdj: 0
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, minSyncPeriod: 1s, syncPeriod: 30s}
EOF
  say "kube-proxy (iptables mode; one for the machine, whose network both nodes share)"
  start kube-proxy "$BIN/kube-proxy" --config "$ND/kube-proxy.yaml" --v 1
}

kube_proxy_down() {
  stop kube-proxy
  [ -f "$ND/kube-proxy.yaml" ] && "$BIN/kube-proxy" --cleanup --v 0 > /dev/null 2>&1 || true
  # The kubelets' own chain (it drops martian packets to 127.0.0.0/8), which --cleanup leaves.
  drop_chains filter KUBE-FIREWALL
}

coredns_up() {
  say "CoreDNS $COREDNS_VERSION at $DNS_ADDR (cluster.local only, no upstream)"
  sed -e "s#@IMAGE@#$COREDNS_IMAGE#" -e "s#@DNS_ADDR@#$DNS_ADDR#" -e "s#@DOMAIN@#$CLUSTER_DOMAIN#" \
    "$ROOT/hack/node/coredns.yaml" | kc apply --server-side -f - > /dev/null
}

nodes_ready() {
  local ready
  ready="$(kc get nodes -l "$REAL_TAINT_KEY=true" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  [ "$ready" -eq "${#NODES[@]}" ]
}

# --- commands --------------------------------------------------------------------------------------

cmd_up() {
  [ -n "${BIN:-}" ] && [ -n "${API_PORT:-}" ] || die "BIN and API_PORT must be set (hack/cluster.sh sets them)"
  local t0=$SECONDS name
  mkdir -p "$ND/pids" "$ND/logs"
  ensure_packages
  build_infra_images
  network_up
  for name in "${NODES[@]}"; do node_up "$name"; done
  kube_proxy_up
  wait_for "real nodes Ready" 120 nodes_ready
  # An extended resource the way a device plugin would advertise it: four GPUs on the GPU node.
  kc patch node real-gpu-0 --subresource status --type merge \
    -p '{"status":{"capacity":{"nvidia.com/gpu":"4"}}}' > /dev/null
  say "volume provisioner: StorageClass tandem-shared (default), directories under $DIR/volumes"
  start volumes python3 "$ROOT/hack/node/volumes.py" --kubectl "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" \
    --root "$DIR/volumes"
  wait_for volumes 30 kc get storageclass tandem-shared
  coredns_up
  kc -n kube-system rollout status deployment/coredns --timeout 120s > /dev/null \
    || die "CoreDNS did not become available (kubectl -n kube-system describe pod -l k8s-app=kube-dns)"
  say "real nodes ready in $((SECONDS - t0))s: ${NODES[*]}"
}

cmd_down() {
  [ -d "$ND" ] || return 0
  BIN="${BIN:-$(. "$DIR/state.env" 2> /dev/null; echo "${BIN:-}")}"
  local name path pids
  for name in "${NODES[@]}"; do node_down "$name"; done
  kube_proxy_down
  stop volumes
  pids="$(our_processes)"
  if [ -n "$pids" ]; then
    say "killing leftover processes: $pids"
    kill -KILL $pids 2> /dev/null || true
  fi
  network_down
  if mountpoint -q "$ND/ns"; then umount "$ND/ns"; fi
  if [ -f "$ND/created-dirs" ]; then
    while read -r path; do rmdir "$path" 2> /dev/null || true; done < "$ND/created-dirs"
    rm -f "$ND/created-dirs"
  fi
  rm -rf "$ND/pids" "$SOCKETS"
}

cmd_leftovers() {
  local found=0 name hierarchy
  report() { echo "$*"; found=1; }
  for name in "${NODES[@]}"; do
    node_vars "$name"
    ip link show "$BRIDGE" > /dev/null 2>&1 && report "link $BRIDGE"
    for hierarchy in /sys/fs/cgroup/*/; do
      [ -d "$hierarchy${CGROUP_ROOT#/}" ] && report "cgroup $hierarchy${CGROUP_ROOT#/}"
    done
  done
  [ -d /sys/fs/cgroup/unified/kubepods ] && report "cgroup /sys/fs/cgroup/unified/kubepods"
  ip link show "$API_LINK" > /dev/null 2>&1 && report "link $API_LINK"
  ip -o link show type veth 2> /dev/null | grep -q "master tandem-" && report "veth on a tandem bridge"
  local chain
  for chain in $(iptables-save 2> /dev/null | awk '/^:(KUBE-|CNI-|TANDEM-)/ {print substr($1, 2)}'); do
    report "iptables chain $chain"
  done
  local mounts
  mounts="$(awk -v d="$ND" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo)"
  [ -n "$mounts" ] && report "mounts" $mounts
  local pids
  pids="$(our_processes)"
  [ -n "$pids" ] && report "processes $pids"
  [ -f "$ND/network.env" ] && report "ip_forward not restored"
  [ -e "$SOCKETS" ] && report "directory $SOCKETS"
  return "$found"
}

case "${1:-}" in
  network-up) cmd_network_up ;;
  up) cmd_up ;;
  down) cmd_down ;;
  leftovers) cmd_leftovers ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
