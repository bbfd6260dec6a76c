#!/usr/bin/env bash
# Build (or reuse) the CI's Go-built tools from the one module in this directory.
#
#   ci/gotools/gotools.sh build helm|cluster   build the set if its cached copy is missing or stale,
#                                              printing progress; prints the set's directory last
#   ci/gotools/gotools.sh path  helm|cluster   print the set's directory (no build)
#   ci/gotools/gotools.sh regen                regenerate go.mod/go.sum after editing versions.env
#
# Sets: helm = helm (for the chart tests); cluster = the Kubernetes binaries, etcd, etcdctl, CoreDNS,
# metrics-server and pause (for ci/cluster). One module on purpose: every tool resolves to one version
# of each shared dependency, so client-go, apiserver, grpc, ... are compiled once, and the helm
# build done first already compiles a good part of what the cluster set needs.
#
# Cache (outside any clone): $MLSERVING_CACHE/go/{mod,build} (GOMODCACHE, GOCACHE) and
# $MLSERVING_CACHE/gotools/<set>-<stamp>/, where the stamp hashes go.mod, go.sum, the local
# main packages, the flags and the Go version. MLSERVING_CACHE defaults to /var/cache/ml-serving.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
MLSERVING_CACHE=${MLSERVING_CACHE:-/var/cache/ml-serving}
GO=${GO:-/usr/local/go/bin/go}
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)
# notest/selinux are Kubernetes' release tags; grpcnotrace drops x/net/trace. Same tags for every
# set: they are part of each compiled package's cache key.
BUILD_TAGS=selinux,notest,grpcnotrace
BUILD_DATE=2026-01-01T00:00:00Z

log() { printf '[gotools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

go_env() {
  export GOTOOLCHAIN=local GOFLAGS=-modcacherw CGO_ENABLED=0
  export GOMODCACHE="$MLSERVING_CACHE/go/mod" GOCACHE="$MLSERVING_CACHE/go/build"
  export PATH="${GO%/*}:$PATH"
  # The compiler spends a good share of its time collecting garbage; 24 GiB allows a lazier GC.
  export GOGC=${GOGC:-400}
}

set_packages() { # set
  case $1 in
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    cluster) echo "${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 \
      sigs.k8s.io/metrics-server/cmd/metrics-server ./coredns ./pause ;;
    *) echo "unknown set '$1' (helm|cluster)" >&2; return 2 ;;
  esac
}

set_ldflags() { # set: version strings the upstream Makefiles set with -X
  local ld="-s -w" p minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  case $1 in
    helm)
      # without these helm reports "v3.19" and a default cluster of v1.20 (`helm template` then
      # refuses a chart with kubeVersion >= 1.21)
      p=helm.sh/helm/v3
      ld+=" -X $p/internal/version.version=$HELM_VERSION -X $p/internal/version.gitTreeState=clean"
      ld+=" -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$minor"
      ld+=" -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$minor" ;;
    cluster)
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
        ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=$BUILD_DATE"
      done
      ld+=" -X github.com/coredns/coredns/coremain.GitCommit=ci" ;;
  esac
  echo "$ld"
}

set_dir() { # set -> cache directory keyed by everything that determines the binaries
  local stamp
  stamp=$({ cat "$HERE"/go.mod "$HERE"/go.sum "$HERE"/*/main.go; set_packages "$1"; set_ldflags "$1"
            echo "$BUILD_TAGS"; "$GO" env GOVERSION; } | sha256sum | cut -c1-16)
  echo "$MLSERVING_CACHE/gotools/$1-$stamp"
}

build_set() { # set
  local set=$1 out; out=$(set_dir "$set")
  if [[ -f $out/.complete ]]; then
    log "$set: cached in $out"
    echo "$out"; return
  fi
  local pkgs; read -ra pkgs <<<"$(set_packages "$set")"
  local tmp="$out.tmp.$$" buildlog="$out.log" t0=$SECONDS
  rm -rf "$tmp"; mkdir -p "$tmp"
  cd "$HERE"; go_env
  log "$set: downloading modules"
  go mod download
  local total; total=$(go list -deps "${pkgs[@]}" | wc -l)
  local names; names=$(printf '%s\n' "${pkgs[@]}" | sed -E 's#^go.etcd.io/etcd/server/v3$#etcd#; s#/v[0-9]+$##; s#.*/##' | paste -sd' ')
  log "$set: building $names (up to $total packages; cold: tens of minutes on 2 cores; log $buildlog)"
  go build -v -p "${BUILD_JOBS:-$(nproc)}" -trimpath -tags "$BUILD_TAGS" -ldflags "$(set_ldflags "$set")" \
    -o "$tmp/" "${pkgs[@]}" >"$buildlog" 2>&1 &
  local pid=$! next=$((SECONDS + 60))
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS >= next)); then
      log "$set: $(grep -vc '^#' "$buildlog" || true)/$total packages compiled, $((SECONDS - t0))s"
      next=$((next + 60))
    fi
  done
  if ! wait "$pid"; then
    tail -n 40 "$buildlog" >&2; rm -rf "$tmp"
    log "$set: build failed (log $buildlog)"; return 1
  fi
  [[ -x $tmp/server ]] && mv "$tmp/server" "$tmp/etcd"   # go names etcd's main package after its dir
  echo "$((SECONDS - t0))" >"$tmp/.build-seconds"
  touch "$tmp/.complete"
  rm -rf "$out"; mv "$tmp" "$out"
  log "$set: built in $((SECONDS - t0))s: $(cd "$out" && echo *) ($(du -sh "$out" | cut -f1))"
  echo "$out"
}

regen() {
  cd "$HERE"; go_env
  # k8s.io/kubernetes needs one replace per staging module (./staging paths in its own go.mod)
  local sv=v0.${K8S_VERSION#v1.} gomod goline godebug_line m
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  goline=$(grep -m1 '^go ' "$gomod")
  godebug_line=$(grep -m1 '^godebug ' "$gomod" || true)
  cat >go.mod <<EOM
// Every Go-built tool of the CI (helm, Kubernetes, etcd, CoreDNS, metrics-server, pause),
// from the Go module proxy. Regenerate with ci/gotools/gotools.sh regen.
module example.invalid/ci/gotools

$goline

$godebug_line

require k8s.io/kubernetes $K8S_VERSION
EOM
  rm -f go.sum
  grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' |
    while read -r m; do go mod edit -replace="$m=$m@$sv"; done
  local k8s_tools=("${K8S_CMDS[@]/#/k8s.io/kubernetes/cmd/}")
  go get -tool "${k8s_tools[@]/%/@$K8S_VERSION}" \
    "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go get "github.com/coredns/coredns@$COREDNS_VERSION"
  go mod tidy
  for m in k8s.io/kubernetes go.etcd.io/etcd/server/v3 go.etcd.io/etcd/client/v3 github.com/coredns/coredns \
    sigs.k8s.io/metrics-server helm.sh/helm/v3 k8s.io/client-go google.golang.org/grpc; do
    printf '  %-32s %s\n' "$m" "$(go list -m -f '{{.Version}}{{with .Replace}} => {{.Version}}{{end}}' "$m")"
  done
  log "regenerated $HERE/go.mod"
}

case ${1:-} in
  build) build_set "${2:?set: helm|cluster}" ;;
  path) set_dir "${2:?set: helm|cluster}" ;;
  regen) regen ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
