#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian 12 machine:
# apt packages, and a Python venv cached outside the clone (keyed by pyproject.toml),
# with this checkout installed editable. Idempotent; fast when the cache is warm.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: ci/bootstrap.sh [--help]

Installs apt packages (mosquitto, mosquitto-clients, the plugin headers, a C compiler, shellcheck), builds
our broker plugin into $MLSERVING_CACHE/mosquitto-plugin/<source hash>/mlserving_auth.so and a venv
at $MLSERVING_CACHE/venv-<hash> (default /var/cache/ml-serving), linked as ./.venv.
USAGE
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MLSERVING_CACHE:-/var/cache/ml-serving}"
# mosquitto-dev + libmosquitto-dev: plugin API headers for images/mosquitto/plugin (our broker plugin);
# ci/lint.sh runs shellcheck.
APT_PACKAGES=(mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev gcc make libc6-dev shellcheck)
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

# The broker plugin every local broker loads (mlserving_common.mosquitto.auth_plugin finds it by
# the same hash of its source).
PLUGIN_SRC="$ROOT/images/mosquitto/plugin"
plugin_key="$(cat "$PLUGIN_SRC/mlserving_auth.c" "$PLUGIN_SRC/Makefile" | sha256sum | cut -c1-12)"
PLUGIN_SO="$CACHE/mosquitto-plugin/$plugin_key/mlserving_auth.so"
if [[ ! -f $PLUGIN_SO ]]; then
  log "building broker plugin $PLUGIN_SO"
  mkdir -p "$(dirname "$PLUGIN_SO")"
  make -s -C "$PLUGIN_SRC" OUT="$PLUGIN_SO.tmp"
  mv "$PLUGIN_SO.tmp" "$PLUGIN_SO"
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
  "$VENV/bin/pip" install --cache-dir "$CACHE/pip" --progress-bar off -e "${ROOT}[server,client,train,dev]"
  touch "$VENV/.complete"
fi
# The venv is shared between clones: always point its editable install at this checkout.
"$VENV/bin/pip" install -q --cache-dir "$CACHE/pip" --no-deps -e "$ROOT"
ln -sfn "$VENV" "$ROOT/.venv"
log "venv ready: $ROOT/.venv -> $VENV"

# Real public data for the forecast-quality tests (docs/training.md): the Taylor half-hourly
# electricity demand series ships inside pmdarima's wheel; fetched once, never installed.
TAYLOR_WHEEL="$CACHE/data/pmdarima-2.1.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl"
if [[ ! -f $TAYLOR_WHEEL ]]; then
  log "fetching the Taylor series (pmdarima 2.1.1 wheel, not installed) into $CACHE/data"
  mkdir -p "$CACHE/data"
  "$VENV/bin/pip" download -q --cache-dir "$CACHE/pip" --no-deps pmdarima==2.1.1 -d "$CACHE/data"
fi
