#!/usr/bin/env bash
# The project's test command (README; .ci/run calls it). Installs what is missing, then runs
# the fast suite (unit, integration, chart), builds the images, brings up the real
# single-node cluster and runs the end-to-end suite against it, and tears the cluster down.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ci/test.sh [--fast | --e2e-only] [-- PYTEST_ARGS...]

  (default)    bootstrap, unit + integration + chart tests, images, cluster, e2e tests
  --fast       bootstrap, unit + integration + chart tests only (no images, no cluster)
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

stage "bootstrap (apt packages, venv)"
ci/bootstrap.sh
stage "tools (helm)"
ci/tools.sh
export PATH="/var/cache/ml-serving/bin:$ROOT/.venv/bin:$PATH"

# pytest exits 5 when it collected nothing; set -e turns that (like any failure) into a red run.
if [[ $mode != e2e ]]; then
  stage "unit, integration and chart tests"
  python -m pytest -m "not e2e" "$@"
fi
if [[ $mode == fast ]]; then
  stage "done (fast)"
  exit 0
fi

stage "images (buildah)"
ci/images/build.sh
stage "cluster up"
cleanup() {
  local rc=$?
  stage "cluster down"
  ci/cluster/cluster.sh down || echo "WARNING: cluster down failed; run ci/cluster/cluster.sh down" >&2
  exit "$rc"
}
trap cleanup EXIT
ci/cluster/cluster.sh up
eval "$(ci/cluster/cluster.sh env)"
stage "load images into the cluster"
ci/cluster/cluster.sh load-image /var/cache/ml-serving/images/archives/ml-serving-{server,trainer,mosquitto}.tar
stage "end-to-end tests on the cluster"
python -m pytest -m e2e tests/e2e -v -s -p no:cacheprovider "$@"
stage "done in $((SECONDS - START)) s"
