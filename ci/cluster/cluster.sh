#!/usr/bin/env bash
# Single-node Kubernetes for CI, assembled on this host from source (Go module proxy) and Debian packages.
# See ci/cluster/README.md.  Run as root.
set -euo pipefail

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GOTOOLS=$CLUSTER_DIR/../gotools/gotools.sh                # builds every binary (one Go module)
# shellcheck source=../gotools/versions.env
source "$CLUSTER_DIR/../gotools/versions.env"

# ---- fixed locations -------------------------------------------------------------------------
CACHE_ROOT=${MLSERVING_CACHE:-/var/cache/ml-serving}  # Go caches, built binaries, image tarballs (kept)
STATE=/var/lib/ml-serving-ci                          # certs, etcd, kubelet, containerd root (wiped by down)
RUN_DIR=/run/ml-serving-ci                            # sockets, netns mounts (wiped by down)
LOG_DIR=/var/log/ml-serving-ci                        # component + build logs (kept for post-mortem)
REC_DIR=$STATE/record                                 # what up changed on the host (sysctls, dirs, ifaces)
CG_REC=/run/ml-serving-ci.cgroups                     # cgroup roots we created (in /run: same lifetime as cgroups)
PID_DIR=$STATE/pids
KUBECONFIG_PATH=$STATE/kubeconfig
CTR_SOCK=$RUN_DIR/containerd/containerd.sock
IMG_CACHE=$CACHE_ROOT/k8s/images

# ---- cluster addressing (nothing here is routed off the machine) -----------------------------
NODE_NAME=ci-node
NODE_IF=mlci0                # port-less bridge holding the node IP (no dummy driver here)
NODE_IP=10.250.0.1
BRIDGE=mlcibr0               # CNI bridge
POD_CIDR=10.244.0.0/16
NODE_POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
DNS_IP=10.96.0.10
API_PORT=6443

PAUSE_IMAGE=localhost/pause:$PAUSE_TAG
COREDNS_IMAGE=localhost/coredns:$COREDNS_VERSION
METRICS_IMAGE=localhost/metrics-server:$METRICS_SERVER_VERSION
BUSYBOX_IMAGE=localhost/busybox:$BUSYBOX_TAG

APT_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah busybox-static socat)
# sysctls that up (or kubelet/kube-proxy) may change; recorded before, restored by down
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding net.ipv6.conf.all.forwarding)
CHAIN_RE='^(KUBE-|CNI-|MLCI-)'

T0=$SECONDS
log() { printf '[%s +%4ds] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

usage() {
  cat <<EOF
Usage: $0 COMMAND [ARGS]

  up                 clean leftovers, install apt deps, build/reuse binaries, start the cluster,
                     wait for node Ready + DNS + metrics; prints the kubeconfig path
  down               stop everything up started and undo its host changes (idempotent)
  status             component health, node, pods
  env                print 'export KUBECONFIG=... PATH=...' (use: eval "\$($0 env)")
  load-image FILE..  import docker-archive/oci-archive tarballs into containerd (namespace k8s.io)
  build              only build/reuse the binaries (no cluster)
  busybox-image [OUT.tar]
                     build $BUSYBOX_IMAGE (Debian busybox-static, FROM scratch) as a docker-archive
                     (default: cached under $IMG_CACHE); up imports it already
  logs [COMPONENT]   list logs / tail one (etcd kube-apiserver kubelet containerd ...)

Paths: kubeconfig $KUBECONFIG_PATH, logs $LOG_DIR, state $STATE, cache $CACHE_ROOT.
Node IP $NODE_IP (on $NODE_IF), pods $POD_CIDR, services $SVC_CIDR, DNS $DNS_IP.
EOF
}

# ---- helpers ---------------------------------------------------------------------------------
kc() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }

resolve_bins() { BIN=$(MLSERVING_CACHE=$CACHE_ROOT "$GOTOOLS" path cluster); } # without building
build_bins() { BIN=$(MLSERVING_CACHE=$CACHE_ROOT "$GOTOOLS" build cluster | tail -n 1); }

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

start_proc() { # name cmd...
  local name=$1; shift
  mkdir -p "$PID_DIR" "$LOG_DIR"
  echo "### $(date -Is) $*" >>"$LOG_DIR/$name.log"
  setsid nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/$name.pid"
  log "started $name (pid $!, log $LOG_DIR/$name.log)"
}

fail_component() { # name message
  log "---- last 40 lines of $LOG_DIR/$1.log ----"
  tail -n 40 "$LOG_DIR/$1.log" >&2 || true
  die "$2"
}

wait_for() { # component timeout-seconds description cmd...
  local comp=$1 to=$2 what=$3; shift 3
  local t=$SECONDS pid=""
  if [[ -f $PID_DIR/$comp.pid ]]; then pid=$(cat "$PID_DIR/$comp.pid"); fi
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! pid_alive "$pid"; then fail_component "$comp" "$comp exited while waiting for: $what"; fi
    if ((SECONDS - t > to)); then fail_component "$comp" "timeout (${to}s) waiting for: $what"; fi
    sleep 1
  done
  log "ok: $what ($((SECONDS - t))s)"
}

# ---- apt -------------------------------------------------------------------------------------
ensure_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    apt-get update -qq >"$LOG_DIR/apt.log" 2>&1 || { tail "$LOG_DIR/apt.log"; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      >>"$LOG_DIR/apt.log" 2>&1 || { tail -n 30 "$LOG_DIR/apt.log"; die "apt-get install failed"; }
  fi
  log "apt: packages present"
}

# ---- images ----------------------------------------------------------------------------------
BUILDAH=(buildah --root "$CACHE_ROOT/k8s/buildah/root" --runroot "$RUN_DIR/buildah" --storage-driver vfs)

# build_scratch_image NAME:TAG OUT.tar ENTRYPOINT-JSON SRC-DIR [USER]
# SRC-DIR's content becomes the image root (FROM scratch). ENTRYPOINT "cmd:[...]" sets CMD instead.
build_scratch_image() {
  local ref=$1 out=$2 ep=$3 src=$4 user=${5:-}
  local c; c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$c" "$src" / >/dev/null
  local epargs=(--entrypoint "$ep")
  [[ $ep == cmd:* ]] && epargs=(--cmd "${ep#cmd:}")
  "${BUILDAH[@]}" config "${epargs[@]}" --env PATH=/bin:/ \
    --os linux --arch amd64 ${user:+--user "$user"} "$c"
  rm -f "$out.tmp"
  "${BUILDAH[@]}" commit -q --rm "$c" "docker-archive:$out.tmp:$ref" >/dev/null
  mv "$out.tmp" "$out"
}

# image_tar NAME:TAG ENTRYPOINT SRC-DIR-FUNC -> path of a cached tarball keyed by content
ensure_image() { # ref entrypoint-json src-dir [user]
  local ref=$1 ep=$2 src=$3 user=${4:-}
  local key; key=$( (cd "$src" && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$ref $ep $user") | sha256sum | cut -c1-12)
  local name=${ref#localhost/}; name=${name//[:\/]/_}
  local out=$IMG_CACHE/$name-$key.tar
  mkdir -p "$IMG_CACHE" "$RUN_DIR"
  if [[ ! -s $out ]]; then
    rm -f "$IMG_CACHE/$name"-*.tar
    build_scratch_image "$ref" "$out" "$ep" "$src" "$user" >>"$LOG_DIR/images.log" 2>&1 ||
      { tail -n 20 "$LOG_DIR/images.log" >&2; die "building image $ref failed"; }
    log "image: built $ref -> $out"
  fi
  echo "$out"
}

busybox_rootfs() { # dir
  local d=$1 a
  rm -rf "$d"; mkdir -p "$d/bin" "$d/etc" "$d/tmp" "$d/var/www"
  chmod 1777 "$d/tmp"
  cp /bin/busybox "$d/bin/busybox"
  for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "$d/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$d/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$d/etc/group"
}

build_images() { # sets IMG_* tarball paths
  local w=$RUN_DIR/imgsrc; rm -rf "$w"; mkdir -p "$w"/{pause,coredns,metrics}
  cp "$BIN/pause" "$w/pause/pause"
  cp "$BIN/coredns" "$w/coredns/coredns"
  cp "$BIN/metrics-server" "$w/metrics/metrics-server"
  mkdir -p "$w/metrics/tmp"; chmod 1777 "$w/metrics/tmp"
  IMG_pause=$(ensure_image "$PAUSE_IMAGE" '["/pause"]' "$w/pause" 65535)
  IMG_coredns=$(ensure_image "$COREDNS_IMAGE" '["/coredns"]' "$w/coredns")
  IMG_metrics=$(ensure_image "$METRICS_IMAGE" '["/metrics-server"]' "$w/metrics" 65534)
  busybox_rootfs "$w/busybox"
  IMG_busybox=$(ensure_image "$BUSYBOX_IMAGE" 'cmd:["sh"]' "$w/busybox")
  rm -rf "$w"
}

import_images() { # files...
  local f
  for f in "$@"; do
    [[ -f $f ]] || die "no such file: $f"
    ctr_ images import "$f" >>"$LOG_DIR/images.log" 2>&1 ||
      { tail -n 10 "$LOG_DIR/images.log" >&2; die "ctr import of $f failed"; }
    log "image: imported $f"
  done
}

# ---- host preparation ------------------------------------------------------------------------
ext_ifaces() { # interfaces that lead off the machine: every non-loopback one that is not ours
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' |
    grep -vE "^(lo|$NODE_IF|$BRIDGE|veth.*)$" || true
}

record_host() {
  mkdir -p "$REC_DIR"
  local s v
  : >"$REC_DIR/sysctls"
  for s in "${SYSCTLS[@]}"; do
    v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v" >>"$REC_DIR/sysctls"
  done
  # cgroup roots kubelet/runc will create; only those absent now (or already recorded as ours by an
  # earlier run whose cleanup could not remove them) are ours to remove later
  local m
  for m in $(cgroup_mounts); do
    if [[ ! -e $m/kubepods ]] && ! grep -qxF "$m/kubepods" "$CG_REC" 2>/dev/null; then echo "$m/kubepods" >>"$CG_REC"; fi
  done
  for d in /run/containerd /var/log/containers /var/log/pods /var/lib/kubelet /etc/kubernetes /var/lib/cni /opt/containerd; do
    [[ -e $d ]] || echo "$d" >>"$REC_DIR/created-dirs"
  done
  ext_ifaces >"$REC_DIR/ext-ifaces"
}

cgroup_mounts() { awk '$9 ~ /^cgroup2?$/ {print $5}' /proc/self/mountinfo; }

prepare_host() {
  record_host
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null ||
    die "net.bridge.bridge-nf-call-iptables not available (br_netfilter)"
  # a port-less bridge holds the node IP (this kernel has no dummy driver); packets routed to it are dropped
  ip link add "$NODE_IF" type bridge
  ip addr add "$NODE_IP/32" dev "$NODE_IF"
  ip link set "$NODE_IF" up
  # un-NATed service / pod addresses go to $NODE_IF (dropped), never to the default route
  ip route add "$SVC_CIDR" dev "$NODE_IF" src "$NODE_IP"
  ip route add "$POD_CIDR" dev "$NODE_IF" src "$NODE_IP"
  # egress guard: nothing from or to the cluster ranges may leave through an external interface
  local ipt=iptables i
  $ipt -N MLCI-GUARD
  while read -r i; do
    for net in "$POD_CIDR" "$SVC_CIDR"; do
      $ipt -A MLCI-GUARD -o "$i" -s "$net" -j REJECT
      $ipt -A MLCI-GUARD -o "$i" -d "$net" -j REJECT
    done
  done <"$REC_DIR/ext-ifaces"
  guard_first
  # backstop kube-proxy cannot reorder: mangle POSTROUTING sees every packet about to leave an interface
  $ipt -t mangle -N MLCI-EGRESS
  while read -r i; do
    for net in "$POD_CIDR" "$SVC_CIDR"; do
      $ipt -t mangle -A MLCI-EGRESS -o "$i" -s "$net" -j DROP
      $ipt -t mangle -A MLCI-EGRESS -o "$i" -d "$net" -j DROP
    done
  done <"$REC_DIR/ext-ifaces"
  $ipt -t mangle -I POSTROUTING 1 -j MLCI-EGRESS
  log "host: sysctls recorded+set, $NODE_IF=$NODE_IP, egress guard on: $(tr '\n' ' ' <"$REC_DIR/ext-ifaces")"
}

# (re)insert the filter guard as the first rule of FORWARD and OUTPUT (kube-proxy inserts its own jumps
# at the top when it starts; it does not move rules that exist, so doing this after it is enough)
guard_first() {
  local ch
  for ch in FORWARD OUTPUT; do
    while iptables -D "$ch" -j MLCI-GUARD 2>/dev/null; do :; done
    iptables -I "$ch" 1 -j MLCI-GUARD
  done
}

# ---- config files ----------------------------------------------------------------------------
write_configs() {
  mkdir -p "$STATE"/{pki,kubeconfigs,etcd,kubelet,pod-logs,cni/net.d,cni/networks,containerd/root,containerd/opt} \
    "$RUN_DIR/containerd" "$RUN_DIR/runc"
  cat >"$STATE/kubeadm.yaml" <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $NODE_IP, bindPort: $API_PORT}
nodeRegistration: {name: $NODE_NAME, criSocket: "unix://$CTR_SOCK"}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $K8S_VERSION
clusterName: ml-serving-ci
certificatesDir: $STATE/pki
controlPlaneEndpoint: "$NODE_IP:$API_PORT"
networking: {serviceSubnet: $SVC_CIDR, podSubnet: $POD_CIDR, dnsDomain: cluster.local}
apiServer: {certSANs: [127.0.0.1, localhost, $NODE_IP]}
etcd: {local: {dataDir: $STATE/etcd}}
EOF
  cat >"$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # this machine refuses lowering oom_score_adj below 0 (EIO/EPERM); kubelet asks -998 for sandboxes,
  # which makes runc init die ("can't get final child's PID from pipe"). Clamp to containerd's own value.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  # ipMasq:false -> pod traffic is never NATed to the host address; the MLCI-GUARD chain rejects
  # anything from the pod range that would leave through an external interface.
  cat >"$STATE/cni/net.d/10-mlci.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "mlci-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni/networks",
            "ranges": [[{"subnet": "$NODE_POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$CTR_SOCK
imageServiceEndpoint: unix://$CTR_SOCK
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $STATE/pki/ca.crt}
authorization: {mode: Webhook}
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: $STATE/pod-logs
evictionHard: {imagefs.available: "0%", nodefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
EOF
  cat >"$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kubeconfigs/kube-proxy.conf}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

gen_certs() {
  local ka=$BIN/kubeadm
  {
    "$ka" init phase certs all --config "$STATE/kubeadm.yaml"
    "$ka" init phase kubeconfig all --config "$STATE/kubeadm.yaml" --kubeconfig-dir "$STATE/kubeconfigs"
    "$ka" kubeconfig user --config "$STATE/kubeadm.yaml" --client-name system:kube-proxy \
      >"$STATE/kubeconfigs/kube-proxy.conf"
  } >>"$LOG_DIR/kubeadm.log" 2>&1 || fail_component kubeadm "kubeadm phases failed"
  cp "$STATE/kubeconfigs/admin.conf" "$KUBECONFIG_PATH"
  chmod 600 "$KUBECONFIG_PATH"
  log "certs + kubeconfigs generated (kubeadm phases) in $STATE/pki, $STATE/kubeconfigs"
}

# ---- components ------------------------------------------------------------------------------
start_containerd() {
  start_proc containerd /usr/bin/containerd --config "$STATE/containerd.toml"
  wait_for containerd 60 "containerd socket" ctr --address "$CTR_SOCK" version
  import_images "$IMG_pause" "$IMG_coredns" "$IMG_metrics" "$IMG_busybox"
}

start_etcd() {
  start_proc etcd "$BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync --log-level warn --snapshot-count 10000 --quota-backend-bytes 2147483648
  wait_for etcd 60 "etcd health" curl -fsS http://127.0.0.1:2379/health
}

start_apiserver() {
  local p=$STATE/pki
  start_proc kube-apiserver "$BIN/kube-apiserver" \
    --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port="$API_PORT" \
    --etcd-servers=http://127.0.0.1:2379 --allow-privileged=true \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --client-ca-file="$p/ca.crt" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-cluster-ip-range="$SVC_CIDR" --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key" \
    --enable-aggregator-routing=true --profiling=false --v=1
  wait_for kube-apiserver 120 "kube-apiserver /readyz" \
    curl -fsS --cacert "$p/ca.crt" "https://$NODE_IP:$API_PORT/readyz"
  # admin.conf is in group kubeadm:cluster-admins, which only a full 'kubeadm init' binds
  local sa=$STATE/kubeconfigs/super-admin.conf
  "$BIN/kubectl" --kubeconfig "$sa" create clusterrolebinding kubeadm:cluster-admins \
    --clusterrole=cluster-admin --group=kubeadm:cluster-admins >/dev/null
  "$BIN/kubectl" --kubeconfig "$sa" create clusterrolebinding apiserver-kubelet-api-admin \
    --clusterrole=system:kubelet-api-admin --user=kube-apiserver-kubelet-client >/dev/null
  log "RBAC bindings for admin.conf and apiserver->kubelet created"
}

start_controllers() {
  local k=$STATE/kubeconfigs p=$STATE/pki
  start_proc kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$k/controller-manager.conf" --authentication-kubeconfig="$k/controller-manager.conf" \
    --authorization-kubeconfig="$k/controller-manager.conf" --bind-address=127.0.0.1 --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file="$p/sa.key" \
    --root-ca-file="$p/ca.crt" --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" --client-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SVC_CIDR" --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" \
    --node-cidr-mask-size=24 --controllers='*,bootstrapsigner,tokencleaner' --profiling=false --v=1
  start_proc kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$k/scheduler.conf" --authentication-kubeconfig="$k/scheduler.conf" \
    --authorization-kubeconfig="$k/scheduler.conf" --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
  wait_for kube-controller-manager 60 "kube-controller-manager healthz" curl -fsSk https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 60 "kube-scheduler healthz" curl -fsSk https://127.0.0.1:10259/healthz
}

node_ready() { [[ $(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; }

start_kubelet() {
  start_proc kubelet "$BIN/kubelet" --config="$STATE/kubelet.yaml" \
    --kubeconfig="$STATE/kubeconfigs/kubelet.conf" --root-dir="$STATE/kubelet" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for kubelet 120 "node $NODE_NAME registered" kc get node "$NODE_NAME"
  wait_for kubelet 120 "node $NODE_NAME Ready" node_ready
}

start_kube_proxy() {
  start_proc kube-proxy "$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1
  wait_for kube-proxy 60 "kube-proxy healthz" curl -fsS http://127.0.0.1:10256/healthz
  wait_for kube-proxy 60 "kube-proxy iptables rules" sh -c 'iptables -S FORWARD | grep -q KUBE-FORWARD'
  guard_first
  log "egress guard MLCI-GUARD is first in FORWARD/OUTPUT again (after kube-proxy's jumps)"
}

render() { # manifest -> stdout with placeholders filled
  sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" -e "s|@METRICS_IMAGE@|$METRICS_IMAGE|g" \
    -e "s|@DNS_IP@|$DNS_IP|g" -e "s|@BUSYBOX_IMAGE@|$BUSYBOX_IMAGE|g" "$CLUSTER_DIR/manifests/$1"
}

dns_from_pod() {
  kc -n kube-system delete pod mlci-dnscheck --ignore-not-found --wait=false >/dev/null 2>&1 || true
  kc -n kube-system run mlci-dnscheck --image="$BUSYBOX_IMAGE" --image-pull-policy=Never --restart=Never \
    --command -- nslookup kubernetes.default.svc.cluster.local >/dev/null
  local t=$SECONDS ph=""
  while ((SECONDS - t < 60)); do
    ph=$(kc -n kube-system get pod mlci-dnscheck -o jsonpath='{.status.phase}' 2>/dev/null || true)
    [[ $ph == Succeeded || $ph == Failed ]] && break
    sleep 1
  done
  local out; out=$(kc -n kube-system logs mlci-dnscheck 2>&1 || true)
  kc -n kube-system delete pod mlci-dnscheck --wait=false >/dev/null 2>&1 || true
  [[ $ph == Succeeded ]] && grep -q '10.96.0.1' <<<"$out"
}

start_addons() {
  render coredns.yaml | kc apply -f - >/dev/null
  render metrics-server.yaml | kc apply -f - >/dev/null
  log "addons applied (CoreDNS $COREDNS_IMAGE, metrics-server $METRICS_IMAGE)"
  wait_for kubelet 180 "CoreDNS pod Ready" kc -n kube-system wait --for=condition=Ready pod -l k8s-app=kube-dns --timeout=5s
  local i ok=""
  for i in 1 2 3 4 5; do
    if dns_from_pod; then ok=1; break; fi
    sleep 2
  done
  [[ -n $ok ]] || { kc -n kube-system logs deploy/coredns --tail=30 >&2 || true; die "DNS lookup from a pod failed"; }
  log "ok: DNS resolves kubernetes.default from a pod"
  wait_for kubelet 180 "metrics-server pod Ready" kc -n kube-system wait --for=condition=Ready pod -l k8s-app=metrics-server --timeout=5s
  local t=$SECONDS
  until kc top node >/dev/null 2>&1; do
    if ((SECONDS - t > 240)); then
      kc get apiservice v1beta1.metrics.k8s.io >&2 || true
      kc -n kube-system logs deploy/metrics-server --tail=30 >&2 || true
      die "kubectl top node did not answer"
    fi
    sleep 3
  done
  log "ok: kubectl top node answers ($((SECONDS - t))s)"
}

# ---- teardown --------------------------------------------------------------------------------
stop_pidfile() { # name... : TERM all, up to 3 s grace, then KILL (throwaway cluster: no need to be gentle)
  local n pids=() i p alive
  for n in "$@"; do
    [[ -f $PID_DIR/$n.pid ]] || continue
    p=$(cat "$PID_DIR/$n.pid")
    if pid_alive "$p"; then kill -TERM "$p" 2>/dev/null || true; pids+=("$p"); fi
    rm -f "$PID_DIR/$n.pid"
  done
  for i in $(seq 1 15); do
    alive=0; for p in "${pids[@]}"; do pid_alive "$p" && alive=1; done
    ((alive)) || return 0
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

# processes that are ours although their pidfile may be gone (killed run, wiped state):
# executables from our binary cache, our containerd and its shims, anything in our kubepods cgroups
our_pids() {
  local p exe cmd
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" || $p == "$BASHPID" ]] && continue
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
    if [[ $exe == "$CACHE_ROOT/gotools/cluster-"* ]] || [[ $cmd == *"$STATE/containerd.toml"* ]] ||
      [[ $cmd == *"containerd-shim"*"$CTR_SOCK"* ]]; then
      echo "$p"
    fi
  done
}

pod_pids() { # processes in the kubepods cgroups we created
  [[ -s $CG_REC ]] || return 0
  local cg
  while read -r cg; do
    if [[ -d $cg ]]; then find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done <"$CG_REC" | sort -u
}

kill_pids() { # signal pids...
  local sig=$1; shift
  if (($#)); then kill "-$sig" "$@" 2>/dev/null || true; fi
}

remove_iptables() {
  local bin t chains
  for bin in iptables ip6tables; do
    command -v $bin >/dev/null || continue
    for t in filter nat mangle raw; do
      $bin -t $t -S >/dev/null 2>&1 || continue
      # delete jumps from any chain into ours, then flush + delete our chains
      $bin -t $t -S | grep -E -- "-j (KUBE-|CNI-|MLCI-)" | grep -vE -- "^-A (KUBE-|CNI-|MLCI-)" |
        sed 's/^-A /-D /' | while read -r rule; do eval "$bin -t $t $rule" 2>/dev/null || true; done || true
      chains=$($bin -t $t -S | awk '$1=="-N"{print $2}' | grep -E "$CHAIN_RE" || true)
      for c in $chains; do $bin -t $t -F "$c" 2>/dev/null || true; done
      for c in $chains; do $bin -t $t -X "$c" 2>/dev/null || true; done
    done
  done
}

cleanup() { # quiet?
  local quiet=${1:-}
  resolve_bins
  [[ -d $STATE || -d $RUN_DIR || -s $CG_REC ]] || ip link show "$NODE_IF" >/dev/null 2>&1 ||
    iptables -S MLCI-GUARD >/dev/null 2>&1 || [[ -n $(our_pids) ]] || { [[ -n $quiet ]] || log "down: nothing to clean"; return 0; }
  log "down: stopping components"
  stop_pidfile kube-proxy kubelet
  # kubelet/kube-proxy without a pidfile (state lost): by executable, before pods are killed, or kubelet restarts them
  local p
  for p in $(our_pids); do
    case $(readlink "/proc/$p/exe" 2>/dev/null) in */kubelet | */kube-proxy) kill -KILL "$p" 2>/dev/null || true ;; esac
  done
  # pod processes, then shims, then containerd
  local i pids=()
  for i in 1 2 3 4 5; do
    mapfile -t pids < <(pod_pids); ((${#pids[@]})) || break
    kill_pids KILL "${pids[@]}"; sleep 0.5
  done
  log "down: pods killed"
  stop_pidfile containerd
  stop_pidfile kube-scheduler kube-controller-manager kube-apiserver etcd
  for i in 1 2 3; do
    mapfile -t pids < <(our_pids); ((${#pids[@]})) || break
    kill_pids TERM "${pids[@]}"; sleep 1
    mapfile -t pids < <(our_pids)
    if ((${#pids[@]})); then kill_pids KILL "${pids[@]}"; sleep 0.5; fi
  done
  [[ -z $(our_pids) ]] || log "down: WARNING processes left: $(our_pids | tr '\n' ' ')"
  for i in 1 2 3; do  # anything still in our pod cgroups (nothing can restart it now)
    mapfile -t pids < <(pod_pids); ((${#pids[@]})) || break
    kill_pids KILL "${pids[@]}"; sleep 0.5
  done
  log "down: processes stopped"
  # kube-proxy's own rule cleanup (before our generic pass)
  if [[ -x $BIN/kube-proxy ]]; then "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi

  # mounts under our dirs (overlay snapshots, netns, secrets/configmap tmpfs), deepest first
  local m
  for i in 1 2 3; do
    m=$(awk -v a="$STATE/" -v b="$RUN_DIR/" 'index($5,a)==1 || index($5,b)==1 || $5==substr(a,1,length(a)-1) {print $5}' /proc/self/mountinfo |
      awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
    [[ -z $m ]] && break
    while read -r mp; do umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true; done <<<"$m"
  done
  # cgroups we created (recorded at up), depth first; never others
  if [[ -s $CG_REC ]]; then
    local cg
    for i in 1 2 3 4 5; do
      while read -r cg; do
        if [[ -d $cg ]]; then find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true; fi
      done <"$CG_REC"
      local left=0; while read -r cg; do if [[ -d $cg ]]; then left=1; fi; done <"$CG_REC"
      ((left)) || break
      sleep 1
    done
    while read -r cg; do if [[ -d $cg ]]; then log "down: WARNING cgroup not removed: $cg"; fi; done <"$CG_REC"
    [[ $left == 1 ]] || rm -f "$CG_REC"
  fi
  # interfaces
  local v
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip link del "$v" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link del "$NODE_IF" 2>/dev/null || true
  remove_iptables
  conntrack -D -s "$POD_CIDR" >/dev/null 2>&1 || true
  conntrack -D -d "$POD_CIDR" >/dev/null 2>&1 || true
  conntrack -D -d "$SVC_CIDR" >/dev/null 2>&1 || true
  # sysctls: ip_forward first (it resets the per-interface forwarding values)
  if [[ -f $REC_DIR/sysctls ]]; then
    local kv
    grep '^net.ipv4.ip_forward=' "$REC_DIR/sysctls" | while read -r kv; do sysctl -qw "$kv" || true; done || true
    while read -r kv; do
      [[ $(sysctl -n "${kv%%=*}" 2>/dev/null) == "${kv#*=}" ]] || sysctl -qw "$kv" 2>/dev/null || true
    done <"$REC_DIR/sysctls"
  fi
  # container log symlinks pointing into our state, dirs we created outside our state
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  if [[ -f $REC_DIR/created-dirs ]]; then
    while read -r d; do if [[ -e $d ]]; then rm -rf "$d"; fi; done <"$REC_DIR/created-dirs"
  fi
  rm -rf "$STATE" "$RUN_DIR"
  log "down: done (processes, mounts, cgroups, $NODE_IF/$BRIDGE, iptables, sysctls restored, $STATE removed)"
}

# ---- commands --------------------------------------------------------------------------------
cmd_up() {
  need_root
  mkdir -p "$LOG_DIR"
  log "up: cleaning leftovers of earlier runs"
  cleanup quiet
  for f in "$LOG_DIR"/*.log; do if [[ -e $f ]]; then mv -f "$f" "$f.prev"; fi; done
  ensure_packages
  build_bins
  build_images
  prepare_host
  write_configs
  gen_certs
  start_containerd
  start_etcd
  start_apiserver
  start_controllers
  start_kubelet
  start_kube_proxy
  start_addons
  log "up: cluster ready in $((SECONDS - T0))s"
  cat >&2 <<EOF

  kubeconfig : $KUBECONFIG_PATH      (eval "\$($0 env)")
  kubectl    : $BIN/kubectl
  node IP    : $NODE_IP  (NodePorts: http://$NODE_IP:<nodePort>; or kubectl port-forward to 127.0.0.1)
  logs       : $LOG_DIR
  cold build : $(cat "$BIN/.build-seconds")s for the cached binaries in $BIN ($(du -sh "$BIN" | cut -f1))
  cache disk : $(du -sh "$CACHE_ROOT/k8s" 2>/dev/null | cut -f1) images in $CACHE_ROOT/k8s; Go caches $(du -sh "$CACHE_ROOT/go" 2>/dev/null | cut -f1) in $CACHE_ROOT/go (shared with helm)
EOF
  kc get nodes -o wide >&2
  echo "$KUBECONFIG_PATH"
}

cmd_down() { need_root; cleanup; }

comp_status() { # name check-cmd...
  local n=$1; shift
  local pid="-" st=down
  if [[ -f $PID_DIR/$n.pid ]]; then pid=$(cat "$PID_DIR/$n.pid"); fi
  if pid_alive "$pid"; then st=running; "$@" >/dev/null 2>&1 && st=healthy; fi
  printf '  %-24s %-8s pid %s\n' "$n" "$st" "$pid"
}

cmd_status() {
  resolve_bins
  echo "components:"
  comp_status containerd ctr --address "$CTR_SOCK" version
  comp_status etcd curl -fsS http://127.0.0.1:2379/health
  comp_status kube-apiserver curl -fsSk "https://$NODE_IP:$API_PORT/readyz"
  comp_status kube-controller-manager curl -fsSk https://127.0.0.1:10257/healthz
  comp_status kube-scheduler curl -fsSk https://127.0.0.1:10259/healthz
  comp_status kubelet curl -fsS http://127.0.0.1:10248/healthz
  comp_status kube-proxy curl -fsS http://127.0.0.1:10256/healthz
  [[ -f $KUBECONFIG_PATH ]] || { echo "cluster is not up (no $KUBECONFIG_PATH)"; return 1; }
  kc get nodes -o wide || return 1
  kc get pods -A -o wide
  kc top node 2>/dev/null || echo "(metrics not available yet)"
}

cmd_env() {
  resolve_bins
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  echo "export PATH=$BIN:\$PATH"
  echo "export CONTAINERD_ADDRESS=$CTR_SOCK CONTAINERD_NAMESPACE=k8s.io"
}

cmd_load_image() {
  need_root
  (($#)) || die "usage: $0 load-image FILE..."
  ctr --address "$CTR_SOCK" version >/dev/null 2>&1 || die "containerd is not running (run '$0 up' first)"
  mkdir -p "$LOG_DIR"
  import_images "$@"
  ctr_ images ls -q | grep -v '^sha256:' >&2
}

cmd_busybox_image() {
  need_root
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  local w=$RUN_DIR/imgsrc-bb.$$
  busybox_rootfs "$w"
  local f; f=$(ensure_image "$BUSYBOX_IMAGE" 'cmd:["sh"]' "$w")
  rm -rf "$w"
  if [[ -n ${1:-} ]]; then cp "$f" "$1"; f=$1; fi
  echo "$f"
}

cmd_logs() {
  if [[ -z ${1:-} ]]; then ls -l "$LOG_DIR"; else tail -n "${LINES:-100}" "$LOG_DIR/$1.log"; fi
}

main() {
  local c=${1:-}; shift || true
  case $c in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    load-image) cmd_load_image "$@" ;;
    build) build_bins; echo "$BIN" ;;
    busybox-image) cmd_busybox_image "$@" ;;
    logs) cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
