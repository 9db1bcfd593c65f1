#!/usr/bin/env bash
# Builds Tandem's four images with no base image and no registry, the way this machine allows: a root
# filesystem from Debian packages (mmdebstrap), the image's hash-locked wheels (docker/requirements-*.txt,
# cut from uv.lock) and the project's own wheel, assembled by buildah FROM scratch and saved as OCI archives.
#
#   hack/images.sh build [operator|trainer|server|server-gpu ...]  build (or reuse) images; prints NAME REF ARCHIVE
#   hack/images.sh load [--containerd SOCKET] [NAME ...]  load the archives into podman, or into a containerd
#   hack/images.sh list                                    the images of this tree: name, ref, size, archive
#   hack/images.sh push REGISTRY [NAME ...]                copy the archives to REGISTRY/tandem-NAME:TAG
#
# Each image has three layers, each cached outside the clone under a key that hashes its inputs: the Debian
# root filesystem (shared by all four), the locked dependencies, and the project. An unchanged image is not
# rebuilt; a code change rebuilds only the top layer. Every image is tagged twice: <version> (what the chart
# and the operator default to) and <version>-<content key> (what tests and pinned deployments use).
# Progress goes to stderr; stdout carries only results. Needs root (mmdebstrap and buildah own their storage).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TANDEM_CACHE:-$HOME/.cache/tandem}"
IMAGES="$CACHE/images"
REPOSITORY="${TANDEM_IMAGE_REPOSITORY:-localhost}"
SUITE=bookworm
PYTHON_SITE=/usr/local/lib/python3.11/dist-packages
ALL=(operator trainer server server-gpu)
# Debian packages of the root filesystem: Python, the C++ and OpenMP runtimes that numpy, onnxruntime and torch
# link against, and CA certificates for object stores. `essential` brings no apt. usr-is-merged stands in for
# usrmerge, which would pull in the whole of perl (45 MB) for a job mmdebstrap's merged-usr hook already did.
PACKAGES=python3,libstdc++6,libgomp1,ca-certificates,usr-is-merged
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -n 1)

# common.sh's name for the clone; the functions hashed into image keys keep spelling it $root.
ROOT=$root SAY_AS=images
# shellcheck source=hack/lib/common.sh
. "$ROOT/hack/lib/common.sh"

# --- what each image is ------------------------------------------------------------------------------------
lock_of() {
  case $1 in operator) echo operator ;; trainer) echo train ;; server) echo serve ;; server-gpu) echo serve-gpu ;;
    *) return 1 ;; esac
}
command_of() { case $1 in operator) echo operator ;; trainer) echo "train digits" ;; server|server-gpu) echo serve ;; esac; }
ports_of() { case $1 in operator) echo "8000 8080" ;; trainer) echo 29500 ;; server|server-gpu) echo "8080 8081 9090" ;; esac; }
# Environment beyond what every image sets. The GPU server asks the NVIDIA container runtime for the driver's
# compute libraries (libcuda); which GPUs it sees (NVIDIA_VISIBLE_DEVICES) is the device plugin's to set per pod.
env_of() { case $1 in server-gpu) echo NVIDIA_DRIVER_CAPABILITIES=compute,utility ;; esac; }
describe() {
  case $1 in
    operator) echo "Tandem operator: reconciles ComputePools, TrainingJobs and InferenceServices" ;;
    trainer) echo "Tandem trainer: PyTorch training, ONNX export and publishing (torch with its CUDA libraries)" ;;
    server) echo "Tandem model server: ONNX models over the Open Inference Protocol V2 (onnxruntime, no torch)" ;;
    server-gpu) echo "Tandem model server for GPU nodes: onnxruntime with CUDA 13 and cuDNN 9 (NVIDIA's wheels); CPU without a GPU" ;;
  esac
}

hash_of() { sha256sum | cut -c1-16; }
base_key() { printf '%s\n' "$SUITE" "$PACKAGES" "$(sed -n '/^build_base()/,/^}/p' "$0")" | hash_of; }
deps_key() {
  { base_key; cat "$root/docker/requirements-$(lock_of "$1").txt" "$root/docker/prune.txt"
    sed -n '/^build_deps()/,/^}/p; /^install_wheels()/,/^}/p' "$0"; } | hash_of
}
# The project's content: the package sources and the metadata that builds its wheel, not their timestamps.
source_key() {
  (cd "$root" && find operator/tandem -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum; sha256sum pyproject.toml docker/tandem-entrypoint)
}
image_key() {
  { deps_key "$1"; source_key; describe "$1"; command_of "$1"; ports_of "$1"; env_of "$1"; sed -n '/^assemble()/,/^}/p' "$0"; } \
    | hash_of
}
ref_of() { echo "$REPOSITORY/tandem-$1:$VERSION-$(image_key "$1" | cut -c1-12)"; }
archive_of() { echo "$IMAGES/tandem-$1-$VERSION-$(image_key "$1" | cut -c1-12).oci.tar"; }

# --- host tools --------------------------------------------------------------------------------------------
ensure_tools() {
  local missing=() tool
  [ "$(id -u)" = 0 ] || die "building images needs root (mmdebstrap and buildah's storage)"
  for tool in mmdebstrap buildah podman skopeo containerd; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian (about 20 s)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap buildah podman skopeo containerd runc \
      uidmap fuse-overlayfs >/dev/null
  fi
  # Bytecode is compiled on the host for the images' Python 3.11; another version's pycs would be ignored.
  python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "python3 on this machine must be 3.11"
  # podman's defaults ask for rlimits this sandbox cannot grant and for systemd (hack/containers.conf).
  mkdir -p "$CACHE/containers"
  export CONTAINERS_CONF="$CACHE/containers/containers.conf"
  cp "$root/hack/containers.conf" "$CONTAINERS_CONF"
}

uv_bin() {
  local uv="$CACHE/uv/bin/uv"
  [ -x "$uv" ] || "$root/hack/python-env.sh" >/dev/null
  echo "$uv"
}

# --- layers ------------------------------------------------------------------------------------------------
# The Debian root filesystem: from the host's own apt sources (so it follows the machine's mirror and its
# security updates), without man pages, docs and locales, with the non-root user 65532 that every image runs as.
build_base() {
  local out=$1 sources=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
  done
  mmdebstrap --quiet --variant=essential --include="$PACKAGES" --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/lib/x86_64-linux-gnu/gconv/*' \
    --customize-hook='echo "nonroot:x:65532:65532:nonroot:/tmp:/usr/sbin/nologin" >> "$1/etc/passwd"' \
    --customize-hook='echo "nonroot:x:65532:" >> "$1/etc/group"' \
    --customize-hook='rm -rf "$1"/var/cache/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "$SUITE" "$out" "${sources[@]}"
}

# Wheels for CPython 3.11 on manylinux x86_64 into Debian's site directory, compiled to bytecode in place
# (unchecked-hash: valid whatever the file times, and nothing is ever written at run time).
install_wheels() {  # target root, then uv pip arguments
  local dest=$1; shift
  "$(uv_bin)" pip install --quiet --target "$dest$PYTHON_SITE" --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --no-deps "$@" >&2
  rm -rf "$dest$PYTHON_SITE/bin"
  # A few wheels ship files for newer Pythons only (torch's py312_intrinsics.py); 3.11 cannot import them
  # either, so they stay source and are listed here instead of failing the build.
  python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$dest" -p / "$dest$PYTHON_SITE" \
    | sed -n "s#^\*\*\* Error compiling '$dest\(.*\)'.*#  not compiled (not Python 3.11): \1#p" >&2 || true
}

# Parts of locked wheels that no Tandem runtime imports, left out of the images (docker/prune.txt says why for
# each; the Dockerfiles remove the same). Checked by tests/images: every runtime still starts without them.
build_deps() {  # name, output directory
  install_wheels "$2" --require-hashes -r "$root/docker/requirements-$(lock_of "$1").txt"
  local path
  while read -r path; do rm -rf "${2:?}$PYTHON_SITE/$path"; done < <(sed 's/#.*//; /^ *$/d' "$root/docker/prune.txt")
}

build_app() {  # output directory
  local wheels
  wheels=$(mktemp -d)
  "$(uv_bin)" build --quiet --wheel --out-dir "$wheels" "$root" >&2
  install_wheels "$1" "$wheels"/tandem-*.whl
  rm -rf "$wheels"
  mkdir -p "$1/usr/local/bin"
  install -m 0755 "$root/docker/tandem-entrypoint" "$1/usr/local/bin/tandem"
}

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# One cached buildah image per layer: FROM the layer below, plus the files of this layer.
layer() {  # ref, parent ref or "scratch", kind: tar|dir, path
  local ctr
  ctr=$(buildah from --quiet --pull=never "$2")
  if [ "$3" = tar ]; then buildah add --quiet "$ctr" "$4" / >/dev/null; else buildah copy --quiet "$ctr" "$4" / >/dev/null; fi
  buildah commit --quiet --rm "$ctr" "$1" >/dev/null
}

assemble() {  # name, deps ref, final ref, project layer directory
  local name=$1 ctr label cmd port env
  ctr=$(buildah from --quiet --pull=never "$2")
  buildah copy --quiet "$ctr" "$4" / >/dev/null
  label=(--label "org.opencontainers.image.title=tandem-$name"
    --label "org.opencontainers.image.description=$(describe "$name")"
    --label "org.opencontainers.image.version=$VERSION"
    --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
    --label "org.opencontainers.image.licenses=Apache-2.0"
    --label "dev.tandem.content-key=$(image_key "$name")")
  cmd=$(command_of "$name" | sed 's/\([^ ]*\)/"\1"/g; s/ /, /g')
  for port in $(ports_of "$name"); do label+=(--port "$port"); done
  for env in $(env_of "$name"); do label+=(--env "$env"); done
  buildah config "${label[@]}" --user 65532:65532 --workingdir /tmp --entrypoint '["tandem"]' --cmd "[$cmd]" \
    --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 --env HOME=/tmp --env LANG=C.UTF-8 "$ctr"
  buildah commit --quiet --rm "$ctr" "$3" >/dev/null
}

human() { numfmt --to=si --suffix=B "$1"; }
image_size() {  # uncompressed bytes of all layers of an image
  podman image inspect --format '{{.Size}}' "$1"
}

heavy_deps() {
  case $1 in
    trainer) echo ' (torch and CUDA: several GB)' ;;
    server-gpu) echo ' (onnxruntime-gpu with the CUDA and cuDNN wheels: about 2.5 GB)' ;;
  esac
}

build_one() {
  local name=$1 bkey dkey ref archive base deps
  bkey=$(base_key); dkey=$(deps_key "$name"); ref=$(ref_of "$name"); archive=$(archive_of "$name")
  base="$REPOSITORY/tandem-base:$bkey"; deps="$REPOSITORY/tandem-$name-deps:$dkey"
  if have_image "$ref" && [ -s "$archive" ]; then
    say "$name: $ref is up to date"
  else
    work=$(mktemp -d "$CACHE/images/work.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    if ! have_image "$base"; then
      say "base layer: Debian $SUITE with $PACKAGES (mmdebstrap, about a minute)"
      build_base "$work/base.tar"
      layer "$base" scratch tar "$work/base.tar"
    fi
    if ! have_image "$deps"; then
      say "$name: dependencies from docker/requirements-$(lock_of "$name").txt$(heavy_deps "$name")"
      mkdir -p "$work/deps"
      build_deps "$name" "$work/deps"
      layer "$deps" "$base" dir "$work/deps"
    fi
    say "$name: the tandem package"
    mkdir -p "$work/app"
    build_app "$work/app"
    assemble "$name" "$deps" "$ref" "$work/app"
    say "$name: saving $archive"
    rm -f "$IMAGES/tandem-$name-$VERSION-"*.oci.tar
    buildah push --quiet --compression-format zstd "$ref" "oci-archive:$archive.part:$ref" >/dev/null
    mv "$archive.part" "$archive"
    rm -rf "$work"; trap - EXIT
  fi
  buildah tag "$ref" "$REPOSITORY/tandem-$name:$VERSION"
  prune_superseded "$name" "$ref" "$REPOSITORY/tandem-$name:$VERSION" "$deps" "$base"
  say "$name: $(human "$(image_size "$ref")") uncompressed"
  echo "$name $ref $archive"
}

# Superseded builds of an image (older content tags, dependency and base layers) go, so that a machine that
# rebuilds after every change does not fill its disk with multi-GB trainer layers.
prune_superseded() {  # name, refs to keep
  local name=$1 ref; shift
  buildah images --noheading --format '{{.Name}}:{{.Tag}}' \
    | grep -E "^$REPOSITORY/tandem-($name|$name-deps|base):" | while read -r ref; do
      case " $* " in *" $ref "*) ;; *) buildah rmi "$ref" >/dev/null 2>&1 || true ;; esac
    done || true
}

names() { if [ $# -eq 0 ]; then printf '%s\n' "${ALL[@]}"; else printf '%s\n' "$@"; fi; }
check_names() {
  local n
  for n in "$@"; do lock_of "$n" >/dev/null || die "unknown image '$n' (operator, trainer, server, server-gpu)"; done
}

cmd_build() {
  check_names "$@"; ensure_tools; mkdir -p "$IMAGES"
  local name
  for name in $(names "$@"); do build_one "$name"; done
}

cmd_load() {
  local socket="" name archive
  if [ "${1:-}" = --containerd ]; then socket=$2; shift 2; fi
  check_names "$@"; ensure_tools
  for name in $(names "$@"); do
    archive=$(archive_of "$name")
    [ -s "$archive" ] || die "no archive for $name: run 'hack/images.sh build $name' first"
    if [ -n "$socket" ]; then
      # A node's image store outlives its containerd (hack/nodes.sh): import only what it lacks.
      if ! ctr --address "$socket" --namespace k8s.io images ls -q | grep -qxF "$(ref_of "$name")"; then
        say "$name: importing into containerd at $socket (namespace k8s.io)"
        ctr --address "$socket" --namespace k8s.io images import --no-unpack=false "$archive" >&2
      fi
      ctr --address "$socket" --namespace k8s.io images tag --force "$(ref_of "$name")" \
        "$REPOSITORY/tandem-$name:$VERSION" >&2
      # Superseded builds go, so that a kept store does not grow by an image per code change.
      local old
      for old in $(ctr --address "$socket" --namespace k8s.io images ls -q \
        | grep -E "^$REPOSITORY/tandem-$name:$VERSION-[0-9a-f]+\$" | grep -vxF "$(ref_of "$name")" || true); do
        ctr --address "$socket" --namespace k8s.io images rm "$old" > /dev/null
      done
    else
      say "$name: loading into podman"
      podman load --quiet --input "$archive" >&2
      podman tag "$(ref_of "$name")" "$REPOSITORY/tandem-$name:$VERSION"
    fi
    echo "$name $(ref_of "$name")"
  done
}

cmd_list() {
  ensure_tools
  local name ref size archive
  printf '%-10s %-56s %9s  %s\n' IMAGE REF SIZE ARCHIVE
  for name in "${ALL[@]}"; do
    ref=$(ref_of "$name") archive=$(archive_of "$name")
    if have_image "$ref"; then size=$(human "$(image_size "$ref")"); else size="-"; fi
    [ -s "$archive" ] || archive="- (not built from this tree: hack/images.sh build $name)"
    printf '%-10s %-56s %9s  %s\n' "$name" "$ref" "$size" "$archive"
  done
}

cmd_push() {
  [ $# -ge 1 ] || die "usage: hack/images.sh push REGISTRY [NAME ...]"
  local registry=$1 name tag; shift
  check_names "$@"; ensure_tools
  for name in $(names "$@"); do
    tag=$(ref_of "$name"); tag=${tag##*:}
    for t in "$tag" "$VERSION"; do
      say "$name: pushing $registry/tandem-$name:$t"
      skopeo copy --dest-compress "oci-archive:$(archive_of "$name")" "docker://$registry/tandem-$name:$t" >&2
    done
  done
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  load) shift; cmd_load "$@" ;;
  list) shift; cmd_list "$@" ;;
  push) shift; cmd_push "$@" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
