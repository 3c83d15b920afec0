#!/usr/bin/env bash
# Everything measured on a GPU in one call of at most 8 minutes (a lent GPU's time is short; the parts' limits add
# up to 480 s), most wanted first:
#   1. decoding: every way we decode against transformers' best and the memory-bandwidth bound (bench/decode_gpu.py)
#   2. training: the trainer's step against transformers' at 32 x 2048, with MFU (bench/train.py)
#   3. the CUDA tests (tests/test_cuda.py): CUDA-graph decoding, parity, training, resume
#   4. the app itself: /generate on the bundled model, then a 270m run through /train_start (bench/app_gpu.py)
# Each part has its own time limit, writes its whole log to $OUT (default gpu-logs/) and prints its tail.
#     bash bench/gpu_check.sh
# Test it on a CPU with GPU_CHECK_DRY=1 (tiny sizes, cpu device; what can run there does).
# The device machine's image has torch and transformers but not gradio or plotly, and reaches no registry: make
# .gpu-site/site.tar.xz here first (`bash bench/gpu_site.sh`, a minute) and carry it (carry: [".gpu-site"]); this
# unpacks it onto PYTHONPATH where gradio is missing. The device call, in full:
#     run(command="bash bench/gpu_check.sh", carry=[".gpu-site"], timeout_s=540)
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GEMMA3_CACHE=${GEMMA3_CACHE:-/tmp/gemma3-cache}
PY=${PYTHON:-python3}
if ! $PY -c "import gradio" 2>/dev/null; then
  if [ -f .gpu-site/site.tar.xz ]; then
    mkdir -p /tmp/gpu-site && tar -xJf .gpu-site/site.tar.xz -C /tmp/gpu-site \
      && export PYTHONPATH=/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "no gradio here and no .gpu-site/site.tar.xz (bash bench/gpu_site.sh, then carry .gpu-site):" \
         "the app part will fail"
  fi
fi
DEV=cuda; TRAIN=(--batch 16 --steps 2 --rounds 1 --profile); [ -n "$GPU_CHECK_DRY" ] && DEV=cpu TRAIN=(--preset tiny --dtype bf16 --steps 2 --rounds 1 --profile)
part() { local name=$1 limit=$2; shift 2; echo "=== $name (limit ${limit}s)"; local t0=$SECONDS
  timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "=== $name: exit $rc in $((SECONDS - t0)) s"; grep -v "it/s\]$" "$OUT/$name.log" | tail -n "${TAIL:-25}"; }
# the CPU kernels (the tests' and the app's CPU references use them), built meanwhile on the CPU once (about 30 s),
# so that no part's time limit pays for the build
$PY -c "from gemma3.runtime import native; print('CPU kernels built:', native.load('engine/kernels.cpp'), native.load('loss.cpp'))" \
  > "$OUT/kernels.log" 2>&1 &
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
TAIL=24 part decode 165 $PY bench/decode.py --device $DEV --quick
TAIL=60 part train 140 $PY bench/train.py --device $DEV "${TRAIN[@]}"
# the tests in 4 processes where pytest-xdist is there (the image has it): most of their time is compiling, on the CPU;
# pytest.ini's two workers by file replaced (-o addopts), which would also fail where xdist is missing
XDIST=(-o addopts=-ra); $PY -c "import xdist" 2>/dev/null && XDIST+=(-n 4 --dist load)
# (4 Inductor compile workers each, not one per core in every process)
TORCHINDUCTOR_COMPILE_THREADS=4 TAIL=30 part tests 115 $PY -m pytest tests/test_cuda.py -v -rfE --durations=10 -p no:cacheprovider "${XDIST[@]}"
if [ -n "$GPU_CHECK_DRY" ]; then
  TAIL=12 part app 120 $PY bench/app_gpu.py --device cpu --steps 10
else
  TAIL=12 part app 60 $PY bench/app_gpu.py --device cuda --steps 20 --batch 16 --timeout 30
fi
wait; tail -n 1 "$OUT/kernels.log"
echo "=== all parts done in $SECONDS s (logs in $OUT/)"
