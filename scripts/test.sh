#!/usr/bin/env bash
# Fresh machine -> the test suite: set up .venv, then run every test (CPU only, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export REFTX_EXTRAS=test,trl,lm-eval,trackers,sweep,quant  # the adapters' (sweep --executor's, QReFT's) tests need them
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
