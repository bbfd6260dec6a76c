#!/usr/bin/env bash
# The project's test command (README; .ci/run calls it). Installs what is missing, then runs
# the fast suite (unit, integration, chart), builds the images, brings up the real
# single-node cluster and runs the end-to-end suite against it, and tears the cluster down.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ci/test.sh [--fast | --e2e-only] [-- PYTEST_ARGS...]

  (default)    bootstrap, lint, unit + integration + chart tests, images, cluster, e2e tests
  --fast       bootstrap, lint, unit + integration + chart tests only (no images, no cluster)
  --e2e-only   images, cluster and the e2e tests only
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mode=all
while (($#)); do
  case "$1" in
    --fast) mode=fast ;;
    --e2e-only) mode=e2e ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

START=$SECONDS
stage() { printf '\n=== [%4ds] %s\n' $((SECONDS - START)) "$*"; }
CACHE=${MLSERVING_CACHE:-/var/cache/ml-serving}
LOGS=$CACHE/logs; mkdir -p "$LOGS"

stage "bootstrap (apt packages, venv) and helm, side by side"
ci/bootstrap.sh >"$LOGS/bootstrap.log" 2>&1 &
bootstrap=$!
ci/tools.sh
wait "$bootstrap" || { tail -n 30 "$LOGS/bootstrap.log"; echo "bootstrap failed (log: $LOGS/bootstrap.log)" >&2; exit 1; }
tail -n 1 "$LOGS/bootstrap.log"
export PATH="$CACHE/bin:$ROOT/.venv/bin:$PATH"

if [[ $mode != fast ]]; then
  # The cluster's binaries are the slowest thing to make cold (tens of minutes of compiling): build
  # them in the background at the lowest CPU priority, so they use what the tests and the image
  # builds leave idle instead of adding their whole time to the run. Warm, this is a cache hit.
  stage "cluster binaries: background build started (log: $LOGS/gotools-cluster.log)"
  setsid nice -n 19 ci/gotools/gotools.sh build cluster >"$LOGS/gotools-cluster.log" 2>&1 &
  cluster_build=$!
fi
cluster_started=0
on_exit() {
  local rc=$?
  if [[ -n ${cluster_build:-} ]] && kill -0 "$cluster_build" 2>/dev/null; then kill -- -"$cluster_build" 2>/dev/null || true; fi
  if ((cluster_started)); then
    stage "cluster down"
    ci/cluster/cluster.sh down || echo "WARNING: cluster down failed; run ci/cluster/cluster.sh down" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT

# pytest exits 5 when it collected nothing; set -e turns that (like any failure) into a red run.
if [[ $mode != e2e ]]; then
  stage "lint: shellcheck, ruff, mypy (ci/lint.sh)"
  ci/lint.sh
  stage "unit, integration and chart tests"
  python -m pytest -m "not e2e" "$@"
fi
if [[ $mode == fast ]]; then
  stage "done (fast)"
  exit 0
fi

stage "images (buildah)"
ci/images/build.sh
if [[ -n ${cluster_build:-} ]]; then
  stage "cluster binaries: waiting for the background build"
  tail -n 1 "$LOGS/gotools-cluster.log"
  wait "$cluster_build" || { tail -n 30 "$LOGS/gotools-cluster.log"; echo "cluster build failed" >&2; exit 1; }
  tail -n 2 "$LOGS/gotools-cluster.log"
fi
stage "cluster up"
cluster_started=1
ci/cluster/cluster.sh up
eval "$(ci/cluster/cluster.sh env)"
stage "load images into the cluster"
ci/cluster/cluster.sh load-image "$CACHE"/images/archives/ml-serving-{server,trainer,mosquitto}.tar
stage "end-to-end tests on the cluster"
python -m pytest -m e2e tests/e2e -v -s -p no:cacheprovider "$@"
stage "done in $((SECONDS - START)) s"
