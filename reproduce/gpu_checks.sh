#!/usr/bin/env bash
# Every GPU measurement of minorpo in one go, a few minutes on one H100:
#   1. reproduce/gpu_benchmark.py: minorpo vs TRL's ORPOTrainer, bf16 full fine-tuning, Qwen2.5-0.5B and
#      SmolLM2-135M shapes: tokens/s, MFU, peak memory (issue 7's GPU goals);
#   2. tests/test_cuda.py, `python -m pytest -m cuda`: correctness on CUDA (forward vs transformers, loss and
#      gradient vs float64, layouts, bf16, fused AdamW, checkpointing, resume, LoRA export);
#   3. reproduce/fsdp_gpu_smoke.py: --fsdp on one GPU (torchrun, 1 rank; bf16 policy, CPU offload) vs the plain run.
# PROFILE=1 first runs reproduce/profile_step.py (phase timings, profiler tables; PROFILE_ARGS="--precision
# bf16-weights --attention flex" profiles those paths); CHECK=0 skips the CUDA tests, FSDP=0 the FSDP smoke run.
# Logs and JSON go to $OUT (default reproduce/results/gpu). A GPU machine without trl/datasets: put their wheels
# in .whl/ at the repository root (reproduce/gpu_benchmark.py --help says which) and they are installed in
# /tmp/site first; .whl/extra/ holds wheels installed only when the machine's pyarrow is older than datasets needs.
# Usage: bash reproduce/gpu_checks.sh [extra gpu_benchmark.py arguments]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-reproduce/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site"
if [ -d .whl ]; then
  $PIP .whl/*.whl || echo "wheel install failed"
  python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null \
    || { [ -d .whl/extra ] && $PIP .whl/extra/*.whl && echo "installed .whl/extra (pyarrow)"; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "
import torch, transformers, tokenizers
print('torch', torch.__version__, 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)
for m in ('trl', 'datasets', 'pyarrow', 'accelerate'):
    try: print(m, __import__(m).__version__)
    except Exception as e: print(m, 'missing:', e)
" 2>&1 | tee -a "$OUT/gpu.txt"
if [ "${PROFILE:-0}" = 1 ]; then  # where a step's time goes (reproduce/profile_step.py)
  timeout "${PROFILE_TIMEOUT:-90}" python3 reproduce/profile_step.py --out "$OUT" ${PROFILE_ARGS:-} 2>&1 \
    | tee "$OUT/profile_step.log"
fi
timeout "${BENCH_TIMEOUT:-330}" python3 reproduce/gpu_benchmark.py --json "$OUT/gpu_benchmark.json" "$@" \
  2>&1 | tee "$OUT/gpu_benchmark.log"
if [ "${CHECK:-1}" = 1 ]; then
  timeout "${CHECK_TIMEOUT:-120}" python3 -m pytest -m cuda tests/test_cuda.py -v -s -p no:cacheprovider \
    --junitxml "$OUT/cuda_tests.xml" ${CHECK_ARGS:-} 2>&1 | tee "$OUT/cuda_tests.log"
fi
if [ "${FSDP:-1}" = 1 ]; then
  timeout "${FSDP_TIMEOUT:-150}" python3 reproduce/fsdp_gpu_smoke.py --out /tmp/minorpo_fsdp_smoke 2>&1 \
    | tee "$OUT/fsdp_smoke.log"
fi
echo "=== summary"
grep -E "^(minorpo|TRL|run |qwen|smollm|verdict|total|bf16 8192)" "$OUT/gpu_benchmark.log" | grep -v " \.\.\.$"
[ -f "$OUT/cuda_tests.log" ] && grep -E "^FAIL|^(PASS|FAIL)ED|[0-9]+ (passed|failed)" "$OUT/cuda_tests.log" | grep -v "^PASSED"
[ -f "$OUT/fsdp_smoke.log" ] && grep -E "^FAIL|fsdp smoke:" "$OUT/fsdp_smoke.log"
[ -f "$OUT/profile_step.log" ] && grep -A3 -E "median seconds per phase" "$OUT/profile_step.log"
