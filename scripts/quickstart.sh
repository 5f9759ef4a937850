#!/usr/bin/env bash
# Fresh machine -> the main job: set up .venv, then train and evaluate experiments/quickstart.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/reftx run experiments/quickstart.yaml "$@"
