#!/usr/bin/env bash
# Install the pinned chart tooling, helm, built from the Go module proxy into
# /var/cache/ml-serving/bin (kubernetes-validate, the offline schema validator, is a pinned dev
# dependency in pyproject.toml). Idempotent: skipped when already present at the pinned
# version. Only Go modules are downloaded, so it works where get.helm.sh cannot be reached.
#
# Usage: ci/tools.sh [--with-helm4] [--with-kubeconform]
#   --with-helm4        also build Helm 4 as `helm4`, to run the chart tests with it too:
#                       MLSERVING_HELM=$CACHE_ROOT/bin/helm4 MLSERVING_HELM_VERSION=v4.3.2 pytest tests/chart
#   --with-kubeconform  also build kubeconform (needs schemas from GitHub to be useful, so it is
#                       off by default; the chart tests validate with kubernetes-validate).
# Env: CACHE_ROOT (default /var/cache/ml-serving).
set -euo pipefail

HELM_VERSION=v3.22.0
HELM4_VERSION=v4.3.2
KUBECONFORM_VERSION=v0.7.0

CACHE_ROOT=${CACHE_ROOT:-/var/cache/ml-serving}
BIN_DIR="$CACHE_ROOT/bin"
GO=${GO:-/usr/local/go/bin/go}
WITH_KUBECONFORM=0
WITH_HELM4=0

for arg in "$@"; do
  case $arg in
    --with-kubeconform) WITH_KUBECONFORM=1 ;;
    --with-helm4) WITH_HELM4=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf 'tools: %s\n' "$*"; }

go_env() {
  export GOTOOLCHAIN=local GOFLAGS=-modcacherw GOBIN="$BIN_DIR"
  export GOMODCACHE="$CACHE_ROOT/go/mod" GOCACHE="$CACHE_ROOT/go/build"
}

# helm's version strings and default Kubernetes capabilities are set with -ldflags by its
# Makefile; a bare `go install` would report "v3.22" and a default cluster of v1.20, which makes
# `helm template` refuse any chart with kubeVersion >= 1.21. Mirror the Makefile here.
helm_ldflags() {
  local moddir k8s minor pkg=helm.sh/helm/v3
  moddir=$("$GO" mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  k8s=$(awk '$1 == "k8s.io/client-go" {print $2}' "$moddir/go.mod")  # v0.MINOR.PATCH
  minor=$(cut -d. -f2 <<<"$k8s")
  printf '%s' "-s -w -X $pkg/internal/version.version=$HELM_VERSION -X $pkg/internal/version.gitTreeState=clean"
  printf '%s' " -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$minor"
  printf '%s' " -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$minor"
}

install_helm() {
  local have=""
  [[ -x $BIN_DIR/helm ]] && have=$("$BIN_DIR/helm" version --template '{{.Version}}' 2>/dev/null || true)
  if [[ $have == "$HELM_VERSION" ]]; then
    log "helm $HELM_VERSION already in $BIN_DIR (skipped)"
    return
  fi
  log "helm: building $HELM_VERSION from the Go module proxy into $BIN_DIR (have: ${have:-none}; cold build takes a few minutes)"
  local t0=$SECONDS
  (go_env && CGO_ENABLED=0 "$GO" install -trimpath -ldflags "$(helm_ldflags)" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
  log "helm: $("$BIN_DIR/helm" version --short) built in $((SECONDS - t0))s"
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
  (go_env && export GOBIN="$tmp" && CGO_ENABLED=0 "$GO" install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION")
  mv "$tmp/helm" "$BIN_DIR/helm4"
  rmdir "$tmp"
  log "helm4: $("$BIN_DIR/helm4" version --short)"
}

install_kubeconform() {
  local have=""
  [[ -x $BIN_DIR/kubeconform ]] && have=$("$BIN_DIR/kubeconform" -v 2>/dev/null || true)
  if [[ $have == "$KUBECONFORM_VERSION" ]]; then
    log "kubeconform $KUBECONFORM_VERSION already in $BIN_DIR (skipped)"
    return
  fi
  log "kubeconform: building $KUBECONFORM_VERSION into $BIN_DIR (note: it fetches schemas from GitHub at run time)"
  (go_env && CGO_ENABLED=0 "$GO" install -trimpath -ldflags "-s -w -X main.version=$KUBECONFORM_VERSION" \
    "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION")
}

mkdir -p "$BIN_DIR"
install_helm
if [[ $WITH_HELM4 == 1 ]]; then install_helm4; fi
if [[ $WITH_KUBECONFORM == 1 ]]; then install_kubeconform; fi
log "done: helm=$BIN_DIR/helm"
