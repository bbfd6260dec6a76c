#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian 12 machine:
# apt packages, and a Python venv cached outside the clone (keyed by pyproject.toml),
# with this checkout installed editable. Idempotent; fast when the cache is warm.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ci/bootstrap.sh [--help]

Installs apt packages (mosquitto, mosquitto-clients) and a venv at
$MLSERVING_CACHE/venv-<hash> (default /var/cache/ml-serving), linked as ./.venv.
USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLSERVING_CACHE:-/var/cache/ml-serving}"
APT_PACKAGES=(mosquitto mosquitto-clients)
log() { printf '[bootstrap %(%H:%M:%S)T] %s\n' -1 "$*"; }

mkdir -p "$CACHE/pip"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d stops the package from starting a system-wide broker: tests start their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# Key the venv on the pinned dependencies only, so edits elsewhere in pyproject.toml reuse it.
key="$(python3 - "$ROOT/pyproject.toml" <<'PY' | sha256sum | cut -c1-12
import json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(sys.version, json.dumps([project["dependencies"], project["optional-dependencies"]], sort_keys=True))
PY
)"
VENV="$CACHE/venv-$key"
if [[ ! -x "$VENV/bin/python" || ! -f "$VENV/.complete" ]]; then
  log "creating venv $VENV (TensorFlow download is ~600 MB on a cold cache)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --cache-dir "$CACHE/pip" --progress-bar off -e "$ROOT[server,client,train,dev]"
  touch "$VENV/.complete"
fi
# The venv is shared between clones: always point its editable install at this checkout.
"$VENV/bin/pip" install -q --cache-dir "$CACHE/pip" --no-deps -e "$ROOT"
ln -sfn "$VENV" "$ROOT/.venv"
log "venv ready: $ROOT/.venv -> $VENV"
