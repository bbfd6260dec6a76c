#!/usr/bin/env bash
# Regenerate the tools modules' go.mod/go.sum after a version bump in ../versions.env.
# Needs only the Go module proxy. Commit the resulting go.mod/go.sum files.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/../versions.env"
export GOTOOLCHAIN=local GOFLAGS=-modcacherw
export GOMODCACHE=${GOMODCACHE:-/var/cache/ml-serving/go/mod} GOCACHE=${GOCACHE:-/var/cache/ml-serving/go/build}
export PATH=/usr/local/go/bin:$PATH

# --- kubernetes: require k8s.io/kubernetes + one replace per staging module (from k8s's own go.mod)
cd "$HERE/k8s"
SV=v0.${K8S_VERSION#v1.}
GOMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
GOLINE=$(grep -m1 '^go ' "$GOMOD")
GODEBUG_LINE=$(grep -m1 '^godebug ' "$GOMOD" || true)
cat >go.mod <<EOF
// Tools module: builds Kubernetes $K8S_VERSION binaries from the Go module proxy.
// Regenerate with ci/cluster/tools/regen.sh.
module example.invalid/ci/k8stools

$GOLINE

$GODEBUG_LINE

require k8s.io/kubernetes $K8S_VERSION
EOF
rm -f go.sum
grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging' "$GOMOD" | awk '{print $1}' |
  while read -r m; do go mod edit -replace="$m=$m@$SV"; done
go get -tool "k8s.io/kubernetes/cmd/"{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl,kubeadm}"@$K8S_VERSION"
go mod tidy
echo "etcd client pinned by kubernetes: $(go list -m -f '{{.Version}}' go.etcd.io/etcd/client/v3) (ETCD_VERSION=$ETCD_VERSION)"

# --- etcd
cd "$HERE/etcd"
printf '// Tools module: builds etcd (server + etcdctl) from the Go module proxy.\nmodule example.invalid/ci/etcdtools\n\ngo 1.24\n' >go.mod
rm -f go.sum
go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION"
go mod tidy

# --- CoreDNS (slim main.go in this directory)
cd "$HERE/coredns"
printf '// Tools module: slim CoreDNS (main.go) built from the Go module proxy.\nmodule example.invalid/ci/corednstools\n\ngo 1.23.0\n\nrequire github.com/coredns/coredns %s\n' "$COREDNS_VERSION" >go.mod
rm -f go.sum
go mod tidy

# --- metrics-server
cd "$HERE/metrics-server"
printf '// Tools module: builds metrics-server from the Go module proxy.\nmodule example.invalid/ci/metricsservertools\n\ngo 1.24.0\n' >go.mod
rm -f go.sum
go get -tool "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
go mod tidy
echo "tools modules regenerated"
