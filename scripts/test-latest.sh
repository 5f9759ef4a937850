#!/usr/bin/env bash
# Drift check: the engine and generation tests against the newest releases inside pyproject.toml's
# ranges (transformers, accelerate, peft, ...), in a second virtualenv (.venv-latest). A minor
# transformers release that changes how generate drives the model fails here, not in users' hands;
# so does a TRL or lm-eval release that changes how they hand prompts to the model (the adapters).
set -euo pipefail
cd "$(dirname "$0")/.."
export REFTX_EXTRAS=test,trl,lm-eval,trackers  # the adapters' tests need them
bash scripts/setup.sh --latest
.venv-latest/bin/python -m pytest tests/contract tests/unit/engine/test_generation.py tests/unit/engine/test_model.py \
    tests/unit/engine/test_positions.py tests/unit/engine/test_schedule.py tests/unit/engine/test_sites.py tests/unit/methods/test_brep.py "$@"
exec .venv-latest/bin/python -m pytest tests/integration/test_trl.py tests/integration/test_lm_eval.py -m "not slow" "$@"
