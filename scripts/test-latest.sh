#!/usr/bin/env bash
# Drift check: the engine and generation tests against the newest releases inside pyproject.toml's
# ranges (transformers, accelerate, peft, ...), in a second virtualenv (.venv-latest). A minor
# transformers release that changes how generate drives the model fails here, not in users' hands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --latest
exec .venv-latest/bin/python -m pytest tests/contract tests/unit/test_generation.py tests/unit/test_model.py \
    tests/unit/test_positions.py tests/unit/test_schedule.py tests/unit/test_sites.py tests/unit/test_brep.py "$@"
