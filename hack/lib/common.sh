# Helpers shared by the hack/ scripts, sourced (never run) before anything else: progress lines (say, die) for
# all of them; the state dir, components and certificates for those that run a local cluster; the Go
# environment, lock and last line of the hack/build-*.sh scripts.
# The sourcing script sets ROOT (the repository) and SAY_AS (the tag in front of its progress lines) before,
# and RUN_DIR (where its components' pids/ and logs/ are) after; `issue` works inside the directory holding
# the local CA.

# The cluster's state dir, and what every part of the cluster agrees on.
DIR="$(realpath -m "${TANDEM_CLUSTER_DIR:-$ROOT/.tandem/cluster}")"
SERVICE_CIDR=10.0.0.0/24

kc() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

# resolve_built VAR ENV SCRIPT TEST FILE...: sets VAR to the directory that $ENV names or else to the one
# hack/SCRIPT builds (cached; a build script prints it as its last line), and dies unless `test TEST DIR/FILE`
# holds for each FILE: how the cluster takes its binaries, Kueue's and the metrics pipeline's.
resolve_built() {
  local _var="$1" _env="$2" _script="$3" _test="$4" _dir _f
  shift 4
  if [ -n "${!_env:-}" ]; then
    _dir="${!_env}"
  else
    _dir="$("$ROOT/hack/$_script" | tail -n1)"
  fi
  for _f in "$@"; do test "$_test" "$_dir/$_f" || die "missing $_dir/$_f"; done
  printf -v "$_var" '%s' "$_dir"
}

# say MESSAGE: a progress line on stderr, tagged with SAY_AS and the time of day, or with the seconds since
# SAY_T0 where the script sets it (the demo's lines count its run); SAY_GAP, if set, goes before each line.
say() {
  local stamp
  if [ -n "${SAY_T0:-}" ]; then printf -v stamp '%4ss' "$((SECONDS - SAY_T0))"; else stamp="$(date +%H:%M:%S)"; fi
  printf '%s[%s %s] %s\n' "${SAY_GAP:-}" "${SAY_AS:-hack}" "$stamp" "$*" >&2
}
die() { say "error: $*"; exit 1; }

# free_ports N: N TCP ports on 127.0.0.1 that nothing listens on now.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# new_ca DIR CN: DIR (made if missing) holding a new CA, ca.key and ca.crt, for `issue` to sign with there.
new_ca() {
  mkdir -p "$1"
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$1/ca.key" -subj "/CN=$2" -days 3650 -out "$1/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
}

# issue NAME SUBJECT EKU SAN: an EC key and a certificate signed by the local CA in the current directory.
issue() {
  local name="$1" subj="$2" eku="$3" san="$4" ext
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key" 2>/dev/null
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr"
  ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku"
  [ -n "$san" ] && ext="$ext
$san"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile <(printf '%s\n' "$ext") -out "$name.crt" 2>/dev/null
  rm -f "$name.csr"
}

b64() { base64 -w0 < "$1"; }

# kubeconfig SERVER CA CERT KEY: a kubeconfig for one client certificate.
kubeconfig() {
  cat <<KC
apiVersion: v1
kind: Config
clusters:
- name: tandem
  cluster:
    server: $1
    certificate-authority-data: $(b64 "$2")
users:
- name: user
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: tandem
  context: {cluster: tandem, user: user}
current-context: tandem
KC
}

# --- processes of components -----------------------------------------------------------------------

pid_of() { [ -f "$RUN_DIR/pids/$1.pid" ] && cat "$RUN_DIR/pids/$1.pid" || true; }

# alive PID: the pid runs one of our components (its command line names the state dir; this guards against
# pid reuse after a reboot or a long idle). A process in the middle of exec (setsid, then unshare, then the
# component) shows an empty command line for an instant, so an empty one is read again before it counts as
# gone; a kernel thread's stays empty and is not ours.
alive() {
  local pid="$1" cmdline _try
  [ -n "$pid" ] || return 1
  for _try in 1 2 3 4 5; do
    [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline="$(tr '\0' ' ' 2> /dev/null < "/proc/$pid/cmdline")" || return 1
    [ -z "$cmdline" ] || break
    sleep 0.05
  done
  [[ "$cmdline" == *"$DIR/"* ]]
}

# start NAME COMMAND...: runs the component in its own session (so `stop` can signal its whole process
# group), logs to logs/NAME.log, records the pid.
start() {
  local name="$1"; shift
  setsid "$@" > "$RUN_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/pids/$name.pid"
}

# stop NAME...: SIGTERM to each one's process group, in this order; SIGKILL to those still there after 20 s.
stop() {
  local name pid deadline
  for name in "$@"; do
    pid="$(pid_of "$name")"
    if alive "$pid"; then kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid" 2> /dev/null || true; fi
  done
  deadline=$((SECONDS + 20))
  for name in "$@"; do
    pid="$(pid_of "$name")"
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
      say "$name ($pid) ignored SIGTERM, killing"
      kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid" 2> /dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
    rm -f "$RUN_DIR/pids/$name.pid"
  done
}

# wait_for WHAT TIMEOUT_S COMMAND...: poll COMMAND; when WHAT is a component that exited, fail at once with
# the end of its log instead of waiting out the timeout.
wait_for() {
  local what="$1" timeout="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" > /dev/null 2>&1; do
    if [ -f "$RUN_DIR/pids/$what.pid" ] && ! alive "$(pid_of "$what")"; then
      tail -n 20 "$RUN_DIR/logs/$what.log" >&2 || true
      die "$what exited (log: $RUN_DIR/logs/$what.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "$what not ready after ${timeout}s (logs: $RUN_DIR/logs)"
    sleep 0.2
  done
}

# --- the build scripts (hack/build-*.sh) -----------------------------------------------------------

# build_begin: the Go environment of every build (trimmed paths, static binaries, the installed toolchain) and
# the one lock of all builds, $CACHE/build.lock, held until the script exits (waited for if another build has
# it: two Go builds at once only compete for the same cores and build cache); starts the clock of build_done.
build_begin() {
  export GOFLAGS="${GOFLAGS:--trimpath}" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
  mkdir -p "$CACHE"
  exec 9> "$CACHE/build.lock"
  if ! flock -n 9; then
    say "another build holds $CACHE/build.lock; waiting for it"
    flock 9
  fi
  BUILD_START=$SECONDS
}

# build_done WHAT OUT: how long the build took, then OUT alone as the last line on stdout, which is all that
# callers read of a build script (`| tail -n1`).
build_done() {
  say "$1 ready in $2 ($((SECONDS - BUILD_START))s)"
  echo "$2"
}
