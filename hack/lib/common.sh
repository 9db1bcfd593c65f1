# Helpers shared by the hack/ scripts that run a local cluster; sourced, never run.
# The sourcing script sets SAY_AS (the tag in front of its progress lines) and, for `issue`, works inside
# the directory holding the local CA (ca.crt, ca.key).

say() { printf '[%s %s] %s\n' "${SAY_AS:-hack}" "$(date +%H:%M:%S)" "$*" >&2; }
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
