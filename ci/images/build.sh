#!/usr/bin/env bash
# Build the ml-serving images (server, trainer, mosquitto) without a Docker engine, with buildah,
# FROM a local Debian bookworm base made by debootstrap (no registry is reachable here).
# Run with --help for usage; docs/images.md explains the layout and the docker alternative.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$REPO/ci/images"
CACHE_ROOT=${MLSERVING_CACHE:-/var/cache/ml-serving}
IMAGES_CACHE="$CACHE_ROOT/images"
PIP_CACHE="$CACHE_ROOT/pip"
LOG_DIR="$IMAGES_CACHE/logs"
OUT="$IMAGES_CACHE/archives"
VENV=${VENV:-$REPO/.venv}
HOST_CA=/etc/ssl/certs/ca-certificates.crt
SUITE=bookworm
ALL_IMAGES=(server trainer mosquitto)
ONLY=()
EXPORT=1
REFRESH_BASE=0
NO_CACHE=()
PRUNE=0
T0=$SECONDS

usage() {
  cat <<EOF
Usage: ci/images/build.sh [--only server|trainer|mosquitto]... [--out DIR] [--no-export] [--refresh-base] [--no-cache] [--prune]

Builds localhost/ml-serving-{server,trainer,mosquitto}, each tagged with the chart's appVersion
(charts/ml-serving/Chart.yaml, default 0.1.0) and the git short sha ("dev" before the first commit).

Steps (each cached, so a second run only redoes what changed):
  1. apt-get install buildah debootstrap, if missing
  2. base image localhost/ml-serving-base:<recipe hash>: Debian $SUITE minbase + python3, made with
     debootstrap from this machine's Debian mirror (recipe: ci/images/lib/base-rootfs.sh);
     rootfs tarball kept in $IMAGES_CACHE/base/
  3. default model packages (v1 of lstm and ann, promoted current) from
     \`mlserving-train demo-packages\` in $VENV, cached by a hash of the training sources
  4. buildah bud of images/<name>/Dockerfile (layer cache on; pip cache $PIP_CACHE)
  5. export to OCI archives (both tags in one archive; load with \`ctr -n k8s.io images import FILE\`)
     and print the image sizes

Options:
  --only NAME      build only this image (repeatable, or comma-separated); default: all three
  --out DIR        where to write the archives (default $OUT)
  --no-export      skip step 5's archives (sizes are still printed)
  --refresh-base   rebuild the base image even if cached (picks up new Debian security updates)
  --no-cache       ignore buildah's layer cache (the pip cache still serves downloads)
  --prune          afterwards, untag older ml-serving images and remove dangling ones (frees disk;
                   the next build then re-runs every layer, with the pip cache)
  -h, --help       show this help

Environment: MLSERVING_CACHE (default /var/cache/ml-serving), VENV (default <repo>/.venv).
Outputs: <out>/ml-serving-<name>.tar, <out>/images.env (image references, for tests and scripts),
logs in $LOG_DIR/.
EOF
}

log() { printf '[images %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

parse_args() {
  while (($#)); do
    case $1 in
      --only) [[ $# -ge 2 ]] || die "--only needs a value"; IFS=, read -ra names <<<"$2"; ONLY+=("${names[@]}"); shift 2 ;;
      --only=*) IFS=, read -ra names <<<"${1#--only=}"; ONLY+=("${names[@]}"); shift ;;
      --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT=$2; shift 2 ;;
      --out=*) OUT=${1#--out=}; shift ;;
      --no-export) EXPORT=0; shift ;;
      --refresh-base) REFRESH_BASE=1; shift ;;
      --no-cache) NO_CACHE=(--no-cache); shift ;;
      --prune) PRUNE=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; die "unknown argument: $1" ;;
    esac
  done
  ((${#ONLY[@]})) || ONLY=("${ALL_IMAGES[@]}")
  local name
  for name in "${ONLY[@]}"; do
    [[ " ${ALL_IMAGES[*]} " == *" $name "* ]] || die "--only: unknown image '$name' (one of: ${ALL_IMAGES[*]})"
  done
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
}

wants() { [[ " ${ONLY[*]} " == *" $1 "* ]]; }

ensure_tools() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ -f $HOST_CA ]] || missing+=(ca-certificates)
  ((${#missing[@]})) || return 0
  log "tools: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed (log: $LOG_DIR/apt.log)"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >>"$LOG_DIR/apt.log" 2>&1 \
    || die "apt-get install ${missing[*]} failed (log: $LOG_DIR/apt.log)"
}

# The machine's configured Debian mirrors (deb822 .sources or one-line .list), so that the base
# image is made from, and later updated from, the same place as the machine itself.
debian_mirror() { # suite-suffix ("" or "-security")
  local want="$SUITE$1" files=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] && files+=("$f")
  done
  ((${#files[@]})) && awk -v want="$want" '
    function emit(u) { print u; found = 1; exit }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[[:space:]]*$/) { uris = ""; suites = ""; types = ""; next }
      if ($1 == "Types:") types = " " substr($0, index($0, ":") + 1) " "
      if ($1 == "URIs:") uris = $2
      if ($1 == "Suites:") suites = " " substr($0, index($0, ":") + 1) " "
      if (uris != "" && index(suites, " " want " ") && (types == "" || index(types, " deb "))) emit(uris)
      next
    }
    $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }; if ($(i + 1) == want) emit($i) }
  ' "${files[@]}"
}

base_key() {
  { cat "$HERE/lib/base-rootfs.sh"; echo "$SUITE $MIRROR $SECURITY_MIRROR"; } | sha256sum | cut -c1-12
}

# Unmount anything a failed debootstrap left mounted below $1, then remove it.
remove_tree() {
  [[ -e $1 ]] || return 0
  local mnt
  while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(findmnt -rn -o TARGET | grep -F "$1/" | sort -r)
  rm -rf --one-file-system "$1"
}

ensure_base() {
  MIRROR=$(debian_mirror "")
  SECURITY_MIRROR=$(debian_mirror "-security")
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
  local key; key=$(base_key)
  BASE_IMAGE="localhost/ml-serving-base:$key"
  local tarball="$IMAGES_CACHE/base/rootfs-$key.tar"
  if ((REFRESH_BASE)); then
    log "base: --refresh-base: dropping $BASE_IMAGE and its rootfs tarball"
    buildah rmi "$BASE_IMAGE" >/dev/null 2>&1 || true
    rm -f "$tarball"
  fi
  if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base: $BASE_IMAGE present (cached)"
    return
  fi
  mkdir -p "$IMAGES_CACHE/base" "$IMAGES_CACHE/debootstrap-debs"
  if [[ -f $tarball ]]; then
    log "base: importing cached rootfs $tarball"
  else
    local t0=$SECONDS work="$IMAGES_CACHE/base/work-$key"
    log "base: debootstrap $SUITE minbase + python3 from $MIRROR (cold, a few minutes; log: $LOG_DIR/base.log)"
    remove_tree "$work"
    mkdir -p "$work"
    if ! MIRROR=$MIRROR SECURITY_MIRROR=$SECURITY_MIRROR SUITE=$SUITE DEBOOTSTRAP_CACHE="$IMAGES_CACHE/debootstrap-debs" \
      bash "$HERE/lib/base-rootfs.sh" "$work/rootfs" >"$LOG_DIR/base.log" 2>&1; then
      tail -n 30 "$LOG_DIR/base.log" >&2
      remove_tree "$work"
      die "base rootfs failed (log: $LOG_DIR/base.log)"
    fi
    tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    remove_tree "$work"
    log "base: rootfs done in $((SECONDS - t0))s ($(du -h "$tarball" | cut -f1) tarball)"
  fi
  local ctr
  ctr=$(buildah from --pull=never scratch)
  buildah add --quiet "$ctr" "$tarball" / >/dev/null
  buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label org.opencontainers.image.title=ml-serving-base \
    --label "org.opencontainers.image.description=Debian $SUITE minbase + python3 (debootstrap), recipe $key" \
    --label "org.opencontainers.image.base.name=debian:$SUITE" \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  log "base: $BASE_IMAGE committed"
}

read_versions() {
  APP_VERSION=0.1.0
  local chart="$REPO/charts/ml-serving/Chart.yaml"
  if [[ -f $chart ]]; then
    local v
    v=$(sed -n 's/^appVersion:[[:space:]]*["'\'']\{0,1\}\([^"'\'' #]*\).*/\1/p' "$chart" | awk 'NR == 1')
    [[ -n $v ]] && APP_VERSION=$v
  fi
  if GIT_SHA=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null); then
    REVISION=$(git -C "$REPO" rev-parse HEAD)
    CREATED=$(git -C "$REPO" log -1 --format=%cI)
  else
    GIT_SHA=dev REVISION=dev CREATED=""
  fi
}

# Default model packages for the server image, cached by a hash of what produces them.
ensure_models() {
  local key
  key=$({ find "$REPO/training/mlserving_training" "$REPO/common/mlserving_common" -name '*.py' -print0 | sort -z | xargs -0 cat
    cat "$REPO/pyproject.toml"; } | sha256sum | cut -c1-16)
  MODELS_DIR="$IMAGES_CACHE/models/$key"
  if [[ -d $MODELS_DIR ]]; then
    log "models: demo packages cached in $MODELS_DIR"
    return
  fi
  [[ -x $VENV/bin/mlserving-train ]] || die "models: $VENV/bin/mlserving-train not found (set VENV to the project's virtualenv)"
  local t0=$SECONDS tmp="$MODELS_DIR.tmp.$$"
  log "models: mlserving-train demo-packages (cold; log: $LOG_DIR/models.log)"
  rm -rf "$tmp"
  mkdir -p "$(dirname "$MODELS_DIR")"
  if ! "$VENV/bin/mlserving-train" demo-packages --registry "$tmp" >"$LOG_DIR/models.log" 2>&1; then
    tail -n 30 "$LOG_DIR/models.log" >&2
    rm -rf "$tmp"
    die "models: demo-packages failed (log: $LOG_DIR/models.log)"
  fi
  mv "$tmp" "$MODELS_DIR"
  log "models: done in $((SECONDS - t0))s -> $MODELS_DIR"
}

# The build context: the repo tree (minus what is never needed; .dockerignore filters the rest)
# plus models/, staged outside the clone so that generated files never land in the work tree.
stage_context() {
  CONTEXT="$IMAGES_CACHE/context"
  remove_tree "$CONTEXT"
  mkdir -p "$CONTEXT"
  tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./models --exclude=__pycache__ \
    --exclude=.pytest_cache --exclude='*.egg-info' -cf - . | tar -C "$CONTEXT" -xf -
  if [[ -n ${MODELS_DIR:-} ]]; then
    cp -a "$MODELS_DIR" "$CONTEXT/models"
  else
    mkdir -p "$CONTEXT/models"
  fi
}

build_image() { # name
  local name=$1 t0=$SECONDS image="localhost/ml-serving-$1"
  local args=(bud --isolation=chroot --network=host --layers --force-rm --pull=never "${NO_CACHE[@]}"
    -f "$CONTEXT/images/$name/Dockerfile"
    --build-arg "BASE=$BASE_IMAGE"
    --build-arg "VERSION=$APP_VERSION" --build-arg "REVISION=$REVISION" --build-arg "CREATED=$CREATED"
    -v "$PIP_CACHE:/root/.cache/pip"
    -t "$image:$APP_VERSION" -t "$image:$GIT_SHA")
  # pip inside RUN steps trusts this machine's CA bundle through a read-only mount, never a layer.
  [[ -f $HOST_CA ]] && args+=(-v "$HOST_CA:$HOST_CA:ro" --build-arg "PIP_CERT=$HOST_CA")
  log "build: $image:$APP_VERSION + :$GIT_SHA (log: $LOG_DIR/build-$name.log)"
  if ! buildah "${args[@]}" "$CONTEXT" >"$LOG_DIR/build-$name.log" 2>&1; then
    tail -n 40 "$LOG_DIR/build-$name.log" >&2
    die "build of $name failed (log: $LOG_DIR/build-$name.log)"
  fi
  BUILD_SECONDS[$name]=$((SECONDS - t0))
  log "build: $name done in ${BUILD_SECONDS[$name]}s"
}

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

image_bytes() { # reference -> uncompressed size in bytes, from what `buildah images` shows (3 digits)
  # awk reads every line (one per tag): `head` would close the pipe early and SIGPIPE buildah.
  buildah images --format '{{.Size}}' "$1" | awk '
    NR == 1 { n = $1; f = 1; if ($2 == "kB") f = 1e3; if ($2 == "MB") f = 1e6; if ($2 == "GB") f = 1e9 }
    END { printf "%d\n", n * f }'
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

# One OCI archive per image holding both tags; skipped when the image has not changed.
export_image() { # name
  local name=$1 image="localhost/ml-serving-$1"
  local archive="$OUT/ml-serving-$name.tar" stamp
  stamp="$(image_id "$image:$APP_VERSION") $APP_VERSION $GIT_SHA"
  if [[ -f $archive && -f $archive.stamp && $(cat "$archive.stamp") == "$stamp" ]]; then
    log "export: $archive unchanged (cached)"
    return
  fi
  local t0=$SECONDS layout
  rm -rf "$OUT/.layout-$name".*  # left by an interrupted run (we hold the build lock)
  layout=$(mktemp -d "$OUT/.layout-$name.XXXXXX")
  log "export: $archive"
  # zstd: several times faster to write than gzip for the 1.5 GB trainer; containerd >= 1.5 reads it.
  buildah push --quiet --compression-format zstd "$image:$APP_VERSION" "oci:$layout:$image:$APP_VERSION" >/dev/null
  # The second tag names the same manifest: one more index entry instead of a second push.
  python3 - "$layout/index.json" "$image:$GIT_SHA" <<'PY'
import json, sys
path, ref = sys.argv[1:]
with open(path) as handle:
    index = json.load(handle)
entry = dict(index["manifests"][0])
entry["annotations"] = {**entry.get("annotations", {}), "org.opencontainers.image.ref.name": ref}
index["manifests"].append(entry)
with open(path, "w") as handle:
    json.dump(index, handle)
PY
  tar -C "$layout" -cf "$archive.tmp" .
  mv "$archive.tmp" "$archive"
  echo "$stamp" >"$archive.stamp"
  rm -rf "$layout"
  log "export: $name done in $((SECONDS - t0))s"
}

summary() {
  local name image bytes archive env="$OUT/images.env"
  {
    echo "# written by ci/images/build.sh; image references of the last build"
    echo "APP_VERSION=$APP_VERSION"
    echo "GIT_SHA=$GIT_SHA"
    echo "BASE_IMAGE=$BASE_IMAGE"
  } >"$env.tmp"
  exec 3>&1  # the table goes to stdout, the loop's own output to images.env
  printf '\n%-22s %-44s %10s %12s %8s\n' IMAGE REFERENCE "SIZE(MB)" "ARCHIVE(MB)" "BUILD(s)"
  bytes=$(image_bytes "$BASE_IMAGE")
  printf '%-22s %-44s %10s %12s %8s\n' base "$BASE_IMAGE" "$(mb "$bytes")" - -
  for name in "${ALL_IMAGES[@]}"; do
    image="localhost/ml-serving-$name:$APP_VERSION"
    buildah inspect --type image "$image" >/dev/null 2>&1 || continue
    bytes=$(image_bytes "$image")
    archive="$OUT/ml-serving-$name.tar"
    local asize=-
    [[ -f $archive ]] && asize=$(mb "$(stat -c %s "$archive")")
    printf '%-22s %-44s %10s %12s %8s\n' "ml-serving-$name" "$image" "$(mb "$bytes")" "$asize" "${BUILD_SECONDS[$name]:--}" >&3
    wants "$name" || continue  # images.env describes this run's images only
    local var=${name^^}
    echo "IMAGE_$var=$image"
    echo "IMAGE_${var}_SHA=localhost/ml-serving-$name:$GIT_SHA"
    echo "IMAGE_${var}_BYTES=$bytes"
    [[ -f $archive ]] && echo "ARCHIVE_$var=$archive"
  done >>"$env.tmp"
  mv "$env.tmp" "$env"
  echo
  log "tags: $APP_VERSION, $GIT_SHA; archives and images.env in $OUT"
}

# Untag every localhost/ml-serving-* image but the tags of this build and the base in use, then
# drop dangling images (which include buildah's layer cache).
prune_images() {
  local ref keep=" $BASE_IMAGE "
  for name in "${ALL_IMAGES[@]}"; do keep+="localhost/ml-serving-$name:$APP_VERSION localhost/ml-serving-$name:$GIT_SHA "; done
  while read -r ref; do
    [[ $keep == *" $ref "* ]] || buildah rmi "$ref" >/dev/null 2>&1 || true
  done < <(buildah images --format '{{.Name}}:{{.Tag}}' | grep '^localhost/ml-serving-' | sort -u)
  buildah rmi --prune >/dev/null 2>&1 || true
  log "prune: kept $(buildah images --format '{{.Name}}:{{.Tag}}' | grep -c '^localhost/ml-serving-') ml-serving tags"
}

main() {
  parse_args "$@"
  mkdir -p "$IMAGES_CACHE" "$LOG_DIR" "$PIP_CACHE"
  # One build at a time per machine: the staged context and the archives are shared.
  exec 9>"$IMAGES_CACHE/.build.lock"
  flock -w 3600 9 || die "another ci/images/build.sh holds $IMAGES_CACHE/.build.lock"
  declare -gA BUILD_SECONDS=()
  log "images: ${ONLY[*]} (cache $IMAGES_CACHE)"
  ensure_tools
  read_versions
  ensure_base
  MODELS_DIR=""
  wants server && ensure_models
  stage_context
  local name
  for name in "${ALL_IMAGES[@]}"; do
    wants "$name" && build_image "$name"
  done
  if ((EXPORT)); then
    for name in "${ALL_IMAGES[@]}"; do
      wants "$name" && export_image "$name"
    done
  fi
  summary
  ((PRUNE)) && prune_images
  log "done in $((SECONDS - T0))s"
}

main "$@"
