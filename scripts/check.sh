#!/usr/bin/env bash
# Every check CI runs before the tests: lint, format and types. Zero findings is the bar.
#   scripts/check.sh            (uses .venv/bin if it exists, else the tools on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
[ -x .venv/bin/ruff ] && bin=".venv/bin/"
"${bin}ruff" check .
"${bin}ruff" format --check .
"${bin}mypy" probe
