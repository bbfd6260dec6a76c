#!/usr/bin/env bash
# Smoke test of a running CI cluster (ci/cluster/cluster.sh up). Uses only localhost/busybox:ci.
# Checks: DNS from a pod, Service from another pod, NodePort + port-forward from the host,
# kubectl logs/exec, kubectl top, HPA with a real CPU target. Cleans up its namespace.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
eval "$("$HERE/cluster.sh" env)"
NS=mlci-smoke
IMG=localhost/busybox:ci
pass=0 fail=0
T0=$SECONDS
ok() { pass=$((pass + 1)); printf '[+%4ds] PASS %s\n' "$((SECONDS - T0))" "$*"; }
ko() { fail=$((fail + 1)); printf '[+%4ds] FAIL %s\n' "$((SECONDS - T0))" "$*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else ko "$d"; fi; }
retry() { local n=$1; shift; local i; for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 2; done; return 1; }

cleanup() {
  if [[ -n ${PF_PID:-} ]]; then kill "$PF_PID" 2>/dev/null || true; fi
  kubectl delete ns "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl delete ns "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null
kubectl create ns "$NS" >/dev/null
# wait for the namespace's default ServiceAccount (token controller)
retry 30 kubectl -n "$NS" get sa default >/dev/null 2>&1

kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: $IMG
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /tmp/www && echo hello-from-web > /tmp/www/index.html && echo web-started && exec httpd -f -v -p 8080 -h /tmp/www']
        ports: [{containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 16Mi}, limits: {cpu: 200m, memory: 64Mi}}
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: $IMG
    imagePullPolicy: Never
    command: [sleep, "3600"]
EOF
kubectl -n "$NS" rollout status deploy/web --timeout=120s >/dev/null
kubectl -n "$NS" wait --for=condition=Ready pod/client --timeout=120s >/dev/null

# 1. DNS from a pod. busybox nslookup does not apply the resolv.conf search path: give it FQDNs.
#    (short names through the search path are covered by wget http://web/ below, which uses the libc resolver)
check "nslookup kubernetes.default.svc.cluster.local from a pod" retry 5 \
  kubectl -n "$NS" exec client -- nslookup kubernetes.default.svc.cluster.local
check "nslookup web.$NS.svc.cluster.local" retry 5 kubectl -n "$NS" exec client -- nslookup "web.$NS.svc.cluster.local"
# 2. Service reached from another pod by short name (search path + kube-proxy ClusterIP path).
#    NB: Debian's static busybox wget segfaults with -T; use the timeout applet instead.
check "Service web reached from pod client (http://web/)" retry 5 sh -c \
  "kubectl -n $NS exec client -- timeout 10 wget -qO- http://web/ | grep -q hello-from-web"
# 3. kubectl logs / exec (apiserver -> kubelet)
check "kubectl logs" retry 5 sh -c "kubectl -n $NS logs deploy/web | grep -q web-started"
check "kubectl exec" sh -c "[ \"\$(kubectl -n $NS exec client -- echo exec-ok)\" = exec-ok ]"
# 4. host -> Service: NodePort on the node IP, and kubectl port-forward on 127.0.0.1
NP=$(kubectl -n "$NS" get svc web -o jsonpath='{.spec.ports[0].nodePort}')
NODE_IP=$(kubectl get node -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
check "NodePort http://$NODE_IP:$NP from the host" retry 5 sh -c "curl -fsS -m 5 http://$NODE_IP:$NP/ | grep -q hello-from-web"
kubectl -n "$NS" port-forward svc/web 18080:80 --address 127.0.0.1 >/dev/null 2>&1 &
PF_PID=$!
check "port-forward 127.0.0.1:18080 -> svc/web" retry 10 sh -c "curl -fsS -m 5 http://127.0.0.1:18080/ 2>/dev/null | grep -q hello-from-web"
kill "$PF_PID" 2>/dev/null || true; PF_PID=
# 5. metrics
check "kubectl top node" retry 10 kubectl top node
check "kubectl top pods -A (includes $NS/web)" retry 45 sh -c "kubectl top pods -A --no-headers | grep -q '^$NS  *web-'"
# 6. HPA on CPU shows a real target
kubectl -n "$NS" autoscale deploy/web --cpu=50% --min=1 --max=2 >/dev/null
hpa_target() {
  local v; v=$(kubectl -n "$NS" get hpa web -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}')
  [[ -n $v ]] && echo "    hpa web: current cpu ${v}% / target 50%"
}
check "HPA cpu target populated (not <unknown>)" retry 60 hpa_target
kubectl -n "$NS" get hpa web

echo "smoke: $pass passed, $fail failed ($((SECONDS - T0))s)"
[[ $fail == 0 ]]
