#!/usr/bin/env bash
# Static checks (make lint; the first stage of ci/test.sh's fast suite): shellcheck on our shell
# scripts, ruff (lint and format check) and mypy, with the settings in pyproject.toml. Runs every
# check even after one fails, so a single run lists everything there is to fix.
set -euo pipefail

CHECKS=(shellcheck ruff format mypy)
usage() {
  cat <<USAGE
usage: ci/lint.sh [CHECK...]

  CHECK   one or more of: ${CHECKS[*]} (default: all)

  shellcheck   ci/**/*.sh and the shell scripts under images/ and .ci/
  ruff         ruff check (pyproject.toml [tool.ruff.lint])
  format       ruff format --check (reports, never rewrites)
  mypy         mypy (pyproject.toml [tool.mypy]: strict for mlserving_common and mlserving_server)
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

selected=()
for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    shellcheck | ruff | format | mypy) selected+=("$arg") ;;
    *) usage >&2; exit 2 ;;
  esac
done
((${#selected[@]})) || selected=("${CHECKS[@]}")

# ci/**/*.sh, and every file under images/ and .ci/ whose name ends in .sh or whose first line is a
# shell shebang (a Dockerfile's RUN lines are not a script shellcheck can read).
shell_scripts() {
  find ci -type f -name '*.sh'
  local f first
  while IFS= read -r -d '' f; do
    first=
    IFS= read -r first <"$f" || true
    if [[ $f == *.sh || $first =~ ^'#!'.*[/[:space:]](ba|da)?sh([[:space:]]|$) ]]; then echo "$f"; fi
  done < <(find images .ci -type f -not -path '*/__pycache__/*' -print0)
}

check() { # name
  case $1 in
    shellcheck)
      local scripts
      mapfile -t scripts < <(shell_scripts | sort -u)
      # SCRIPTDIR: the scripts' `# shellcheck source=` directives are relative to the script.
      shellcheck --external-sources --source-path=SCRIPTDIR "${scripts[@]}" ;;
    ruff) ruff check --no-fix --output-format concise . ;;
    format) ruff format --check . ;;
    mypy) mypy ;;
  esac
}

failed=()
for name in "${selected[@]}"; do
  printf '[lint] %s\n' "$name"
  check "$name" || failed+=("$name")
done
if ((${#failed[@]})); then
  echo "[lint] FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "[lint] OK: ${selected[*]}"
