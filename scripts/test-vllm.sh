#!/usr/bin/env bash
# The vLLM serving plugin (reftx.integrations.vllm) in its own environment, .venv-vllm: vLLM pins
# torch and a transformers range of its own (requirements-vllm.lock). REFTX_VLLM_STAGE=1 makes a
# missing or broken vLLM a failure of this stage, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --vllm
export REFTX_VLLM_STAGE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
exec .venv-vllm/bin/python -m pytest tests/vllm tests/unit/integrations/test_vllm_placement.py "$@"
