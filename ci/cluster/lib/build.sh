# shellcheck shell=bash
# Build (or reuse) every binary the cluster needs. Sourced by cluster.sh.
# Everything comes from the Go module proxy through the tools modules in ci/cluster/tools/.
#
# Cache layout (fixed, outside any clone):
#   $CACHE_ROOT/go/mod      GOMODCACHE
#   $CACHE_ROOT/go/build    GOCACHE
#   $CACHE_ROOT/k8s/bin/<component>-<version>-go<gover>/   built binaries + .stamp

CACHE_ROOT=${CACHE_ROOT:-/var/cache/ml-serving}
GO=${GO:-/usr/local/go/bin/go}

go_env() {
  export GOTOOLCHAIN=local GOFLAGS=-modcacherw
  export GOMODCACHE="$CACHE_ROOT/go/mod" GOCACHE="$CACHE_ROOT/go/build"
  export PATH="/usr/local/go/bin:$PATH"
}

gover() { "$GO" env GOVERSION; }

# stamp = hash of the inputs that determine a component's binaries
build_stamp() { # dir-of-tools-module extra-string
  { cat "$1"/go.mod "$1"/go.sum 2>/dev/null; cat "$1"/*.go 2>/dev/null; echo "$2"; gover; } | sha256sum | cut -c1-16
}

# ensure_built NAME VERSION TOOLDIR EXTRA build-function
# sets BIN_<NAME> to the directory with the binaries.
ensure_built() {
  local name=$1 ver=$2 tooldir=$3 extra=$4 fn=$5
  local gv out; gv=$(gover)
  out="$CACHE_ROOT/k8s/bin/${name}-${ver}-$gv"
  [[ $name == kubernetes ]] && out="$CACHE_ROOT/k8s/bin/${ver}-$gv"
  local stamp; stamp=$(build_stamp "$tooldir" "$extra")
  if [[ -f $out/.stamp && $(cat "$out/.stamp") == "$stamp" ]]; then
    log "build: $name $ver cached in $out"
  else
    log "build: $name $ver -> $out (cold; log: $LOG_DIR/build-$name.log)"
    local t0=$SECONDS tmp="$out.tmp.$$"
    rm -rf "$tmp"; mkdir -p "$tmp"
    # CPU seconds (user+sys of the build's children) are recorded too: wall time depends on machine load
    if ! (cd "$tooldir" && go_env && "$fn" "$tmp" "$ver" && times >"$tmp/.times") >"$LOG_DIR/build-$name.log" 2>&1; then
      tail -n 40 "$LOG_DIR/build-$name.log" >&2
      rm -rf "$tmp"; die "build of $name failed (log: $LOG_DIR/build-$name.log)"
    fi
    echo "$stamp" >"$tmp/.stamp"
    echo "$((SECONDS - t0))" >"$tmp/.build-seconds"
    tail -n 1 "$tmp/.times" | awk '{split($1,u,"m"); split($2,s,"m"); printf "%d\n", u[1]*60+u[2]+s[1]*60+s[2]}' >"$tmp/.build-cpu-seconds"
    rm -f "$tmp/.times"
    rm -rf "$out"; mv "$tmp" "$out"
    log "build: $name done in $((SECONDS - t0))s wall, $(cat "$out/.build-cpu-seconds")s CPU"
  fi
  printf -v "BIN_${name//-/_}" '%s' "$out"
}

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)
K8S_BUILD_DATE=2026-01-01T00:00:00Z

k8s_ldflags() { # version
  local kv=$1 minor=${1#v1.}; minor=${minor%%.*}
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean -X $p.buildDate=$K8S_BUILD_DATE"
  done
  echo "$ld"
}

# All seven k8s binaries in ONE go build call (shared packages compiled once), all static
# (CGO_ENABLED=0, kubelet included: nothing it needs here uses cgo; saves a second full compile).
_build_k8s() { # outdir version
  local pkgs=() c
  for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  set -x
  go mod download
  CGO_ENABLED=0 go build -p "${BUILD_JOBS:-2}" -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "$(k8s_ldflags "$2")" -o "$1/" "${pkgs[@]}"
}

_build_etcd() {
  set -x
  go mod download
  CGO_ENABLED=0 go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags '-s -w' -o "$1/" \
    go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3
  mv "$1/server" "$1/etcd" 2>/dev/null || true
  [[ -x $1/etcd ]] || { ls -l "$1"; return 1; }
}

_build_coredns() {
  set -x
  go mod download
  CGO_ENABLED=0 go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=ci" \
    -o "$1/coredns" .
}

_build_metrics_server() {
  set -x
  go mod download
  CGO_ENABLED=0 go build -p "${BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" -o "$1/metrics-server" \
    sigs.k8s.io/metrics-server/cmd/metrics-server
}

_build_pause() {
  set -x
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/pause" .
}

build_all() {
  local d=$CLUSTER_DIR/tools
  mkdir -p "$LOG_DIR" "$CACHE_ROOT/k8s/bin"
  local t0=$SECONDS
  ensure_built kubernetes "$K8S_VERSION" "$d/k8s" "$(k8s_ldflags "$K8S_VERSION") ${K8S_CMDS[*]}" _build_k8s
  ensure_built etcd "$ETCD_VERSION" "$d/etcd" "" _build_etcd
  ensure_built coredns "$COREDNS_VERSION" "$d/coredns" "" _build_coredns
  ensure_built metrics-server "$METRICS_SERVER_VERSION" "$d/metrics-server" "" _build_metrics_server
  ensure_built pause "$PAUSE_TAG" "$CLUSTER_DIR/pause" "" _build_pause
  log "build: all binaries ready after $((SECONDS - t0))s; binaries in $CACHE_ROOT/k8s/bin: $(du -sh "$CACHE_ROOT/k8s/bin" 2>/dev/null | cut -f1)"
}
