#!/usr/bin/env bash
# Every GPU figure reftx reports, in one command (under 10 minutes on one H100; nothing downloads weights):
#
#   bash benchmarks/gpu.sh [--device cuda|cpu] [--out DIR] [--vllm]
#
#   1 overhead     benchmarks/overhead.py --device cuda --memory: settings a, b, c (reftx vs the hand floor vs F0)
#   2 step-7b      benchmarks/gpu.py train: a Llama-2-7B-architecture base, random bf16 weights, batch 4x512:
#                  F0, floor, reftx, LoRA (peft) and reftx with gradient checkpointing; step time, peak memory
#   3 generate-7b  benchmarks/gpu.py generate: reftx generate against plain HF generate on the same base
#   4 equivalence  the generation (and gradient-checkpointing) contract suites on CUDA, llama only
#   5 quickstart   reftx run experiments/quickstart.yaml on the default model (the bundled SmolLM2 package)
#   6 fsdp         the quickstart, 8 steps, as `reftx run --num-processes 1 --fsdp` (accelerate's FSDP2)
#                  and as one plain process: both finish, and their weights agree
# --vllm runs sections 7-8 instead of 1-6 (a second call, so each stays under 10 minutes):
#   7 vllm-parity  the serving plugin's parity suites (tests/vllm/test_parity.py, test_default_model.py) on
#                  vLLM's V1 GPU model runner, eager (REFTX_VLLM_UNVERIFIED_GPU=1: unverified until this passes)
#   8 vllm-serving benchmarks/serving.py on the default model: K = 1, 4, 16 adapters in flight, prompt-only vs base
#                  (7 and 8 need a CUDA build of vLLM 0.32.0 in $VLLM_PYTHON, default .venv-vllm/bin/python;
#                  without one they are skipped with that reason)
#
# --device cpu is the dry path (tests/integration/test_gpu_script.py runs it): tiny sizes, the same code
# paths, fp32, no peak-memory subprocesses, sections 7-8 skipped (on a CPU the vLLM stage, scripts/test-vllm.sh,
# runs them) and section 6 skipped (accelerate runs its FSDP only on GPUs;
# FSDP on CPU processes, where reftx shards the base itself, is tests/integration/test_fsdp.py).
# Each section runs under its own time limit (4x on a CPU) and a failed one does not stop the others; the summary lists each section's status and time,
# and the exit code is the number of sections that failed. Everything printed is also in DIR/gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT=runs/gpu
VLLM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --vllm) VLLM=1; shift ;;
    *) echo "usage: bash benchmarks/gpu.sh [--device cuda|cpu] [--out DIR] [--vllm]" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu.log"
: > "$LOG"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1
  SHAPE=dry
  SCALE=4  # a CPU (often a shared one) gets 4x each section's time limit
else
  SHAPE=full
  SCALE=1
fi

SUMMARY=()
FAILED=0
section() {  # section NAME LIMIT_S COMMAND...
  local name="$1" limit=$(($2 * SCALE)); shift 2
  echo "=== $name ($DEVICE) ===" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local status=ok
  [ "$rc" = 124 ] && status="timed out after ${limit}s"
  [ "$rc" != 0 ] && [ "$rc" != 124 ] && status="failed (exit $rc)"
  [ "$status" != ok ] && FAILED=$((FAILED + 1))
  SUMMARY+=("| $name | $status | $((SECONDS - t0)) |")
}

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch, transformers, accelerate
import reftx
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"reftx {reftx.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"accelerate {accelerate.__version__}, python {platform.python_version()}; GPU: {gpu}")
EOF
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible: run with --device cpu for the dry path" | tee -a "$LOG"
  exit 2
fi

if [ "$VLLM" = 0 ]; then
  if [ "$DEVICE" = cuda ]; then
    section overhead 150 "$PY" benchmarks/overhead.py --device cuda --memory --no-pyreft --out "$OUT/overhead.json"
  else
    section overhead 150 "$PY" benchmarks/overhead.py --device cpu --threads 1 --settings c --rounds 1 --steps 1 \
      --warmup 1 --no-pyreft --out "$OUT/overhead.json"
  fi
  section step-7b 200 "$PY" benchmarks/gpu.py train --device "$DEVICE" --shape "$SHAPE"
  section generate-7b 120 "$PY" benchmarks/gpu.py generate --device "$DEVICE" --shape "$SHAPE"

  SUITES=(tests/contract/test_generation.py)
  [ -f tests/contract/test_checkpointing.py ] && SUITES+=(tests/contract/test_checkpointing.py)
  if [ "$DEVICE" = cuda ]; then
    section equivalence 150 env PYTHONPATH=benchmarks "$PY" -m pytest -q -p no:cacheprovider -p cuda_tests \
      -W ignore::DeprecationWarning "${SUITES[@]}" -k llama
  else
    section equivalence 150 "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
      tests/contract/test_generation.py -k "llama and batch1 and (last or gen3)"
  fi

  QUICK=(experiments/quickstart.yaml --no-progress)
  if [ "$DEVICE" = cuda ]; then
    section quickstart 150 "$PY" -m reftx run "${QUICK[@]}" "output_dir=$OUT/runs"
    SHORT=(train.max_steps=8 train.checkpoint_every=4 task.n_eval=4 eval.show_examples=0)
    section fsdp 180 bash -c "'$PY' -m reftx run ${QUICK[*]} output_dir='$OUT/fsdp' ${SHORT[*]} --num-processes 1 --fsdp \
      && '$PY' -m reftx run ${QUICK[*]} output_dir='$OUT/plain' ${SHORT[*]} \
      && '$PY' benchmarks/gpu.py compare '$OUT/fsdp/quickstart' '$OUT/plain/quickstart'"
  else
    section quickstart 150 "$PY" -m reftx run "${QUICK[@]}" "output_dir=$OUT/runs" train.max_steps=2 \
      train.checkpoint_every=0 task.n_eval=2 eval.max_new_tokens=4 eval.show_examples=1
    SUMMARY+=("| fsdp | skipped: accelerate runs FSDP only on GPUs | 0 |")
  fi
fi

VPY="${VLLM_PYTHON:-.venv-vllm/bin/python}"
if [ "$VLLM" = 0 ]; then
  :
elif [ "$DEVICE" = cpu ]; then
  SUMMARY+=("| vllm | skipped: on a CPU the vLLM stage (scripts/test-vllm.sh) runs these | 0 |")
elif ! "$VPY" -c "import vllm, torch, sys; sys.exit(not torch.cuda.is_available())" > /dev/null 2>&1; then
  SUMMARY+=("| vllm | skipped: no CUDA build of vLLM in $VPY (pip install vllm==0.32.0 there) | 0 |")
else
  VENV=(env REFTX_VLLM_STAGE=1 REFTX_VLLM_UNVERIFIED_GPU=1)
  section vllm-parity 240 "${VENV[@]}" VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VPY" -m pytest -q -p no:cacheprovider \
    -W ignore::DeprecationWarning tests/vllm/test_parity.py tests/vllm/test_default_model.py
  section vllm-serving 240 "${VENV[@]}" "$VPY" benchmarks/serving.py --rounds 1 --json "$OUT/serving.json"
fi

{
  echo
  echo "=== summary ($DEVICE) ==="
  echo "| section | status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
} | tee -a "$LOG"
exit "$FAILED"
