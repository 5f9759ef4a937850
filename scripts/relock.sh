#!/usr/bin/env bash
# Rewrite requirements.lock from a virtualenv in which the whole suite passed (default .venv-latest,
# after `bash scripts/test-latest.sh` and a full `.venv-latest/bin/python -m pytest`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-latest}
{
    sed -n '/^#/p' requirements.lock
    "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -i '^ruff==' | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock rewritten from $VENV; update the tested versions in README.md (a test checks them)"
