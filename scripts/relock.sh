#!/usr/bin/env bash
# Rewrite requirements.lock from a virtualenv in which the whole suite passed (default .venv-latest,
# after `bash scripts/test-latest.sh` and a full `.venv-latest/bin/python -m pytest`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-latest}
{
    sed -n '/^#/p' requirements.lock
    {
        "$VENV/bin/python" -m pip freeze --all --exclude-editable | grep -v -i -E "^(ruff|pip)==" | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
        # the build backend's wheel pin (pip's isolated build env reads it through PIP_CONSTRAINT)
        "$VENV/bin/python" -m pip show -q wheel >/dev/null 2>&1 || grep -i '^wheel==' requirements.lock
    } | sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "requirements.lock rewritten from $VENV; update the tested versions in README.md (a test checks them)"
