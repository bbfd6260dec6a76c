#!/usr/bin/env bash
# Install the pinned chart tooling: helm (version in ci/gotools/versions.env), built from the Go module
# proxy by ci/gotools/gotools.sh and linked as $MLSERVING_CACHE/bin/helm. Idempotent: a cached
# build is reused. Only Go modules are downloaded, so it works where get.helm.sh cannot be reached.
# (kubernetes-validate, the offline schema validator, is a pinned dev dependency in pyproject.toml.)
#
# Usage: ci/tools.sh [--with-helm4]
#   --with-helm4   also build Helm 4 as `helm4`, to run the chart tests with it too:
#                  MLSERVING_HELM=$MLSERVING_CACHE/bin/helm4 MLSERVING_HELM_VERSION=v4.3.2 pytest tests/chart
# Env: MLSERVING_CACHE (default /var/cache/ml-serving).
set -euo pipefail

HELM4_VERSION=v4.3.2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLSERVING_CACHE=${MLSERVING_CACHE:-/var/cache/ml-serving}
BIN_DIR="$MLSERVING_CACHE/bin"
GO=${GO:-/usr/local/go/bin/go}
WITH_HELM4=0

for arg in "$@"; do
  case $arg in
    --with-helm4) WITH_HELM4=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf 'tools: %s\n' "$*"; }

install_helm() {
  local dir; dir=$(MLSERVING_CACHE=$MLSERVING_CACHE "$ROOT/ci/gotools/gotools.sh" build helm | tail -n 1)
  ln -sfn "$dir/helm" "$BIN_DIR/helm"
  log "helm: $("$BIN_DIR/helm" version --short) at $BIN_DIR/helm"
}

install_helm4() {
  local have=""
  [[ -x $BIN_DIR/helm4 ]] && have=$("$BIN_DIR/helm4" version --template '{{.Version}}' 2>/dev/null || true)
  if [[ $have == "$HELM4_VERSION" ]]; then
    log "helm4 $HELM4_VERSION already in $BIN_DIR (skipped)"
    return
  fi
  log "helm4: building $HELM4_VERSION into $BIN_DIR/helm4 (have: ${have:-none})"
  local tmp; tmp=$(mktemp -d)
  (export GOTOOLCHAIN=local GOFLAGS=-modcacherw GOBIN="$tmp" CGO_ENABLED=0
   export GOMODCACHE="$MLSERVING_CACHE/go/mod" GOCACHE="$MLSERVING_CACHE/go/build"
   "$GO" install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION")
  mv "$tmp/helm" "$BIN_DIR/helm4"
  rmdir "$tmp"
  log "helm4: $("$BIN_DIR/helm4" version --short)"
}

mkdir -p "$BIN_DIR"
install_helm
if [[ $WITH_HELM4 == 1 ]]; then install_helm4; fi
