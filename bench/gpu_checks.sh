#!/usr/bin/env bash
# The GPU checks in one call (a lent GPU's time is short): the CUDA tests, the training-step benchmark
# against transformers, and the trainer's own 270m run. Logs go to $OUT (or ./gpu-logs).
#     bash bench/gpu_checks.sh
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GEMMA3_CACHE=/tmp/gemma3-cache
PY=${PYTHON:-python3}
part() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-25}" "$OUT/$name.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
TAIL=15 part tests 200 $PY -m pytest tests/test_cuda.py -q -p no:cacheprovider
part bench-train 200 $PY bench/train.py --device cuda --batch 32 --seq 512 --dtype bf16 --steps 5
TAIL=12 part trainer 150 bash -c "$PY -m training prepare --source builtin --out /tmp/data && \
  $PY -m training train --data /tmp/data --preset 270m --out /tmp/run --max-steps 40 --log-every 10 \
    --eval-every 40 --eval-windows 16 --ckpt-every 40 --sample-tokens 20"
