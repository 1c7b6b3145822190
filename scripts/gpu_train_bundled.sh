#!/usr/bin/env bash
# Train the four bundled diffusion models (PI-DDPM and DDPM, widefield and confocal, `tiny`
# preset) side by side on one GPU in a fixed time budget, pack each run for the trip back,
# then measure training and restore throughput on the same GPU.
#
#   OUT=/tmp/gpu-out BUDGET=360 RESTORE_BENCH_S=100 bash scripts/gpu_train_bundled.sh
#
# (what made the bundled models on 2026-11-26, followed on the same machine by
# `piddpm train --resume --out /tmp/piddpm-runs/NAME --max-time 140` for each run).
# Expects python3 with torch (CUDA); wheels in .whl/ (packages the machine lacks: there it
# was pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions for
# Python 3.12) are installed to /tmp/site first, and PSF banks prebuilt in .gpucache/
# (PIDDPM_CACHE_DIR) are reused (they are rebuilt when missing). Writes $OUT/<run>.tgz (model, last checkpoint, logs, previews),
# $OUT/summary.log (environment, training results, benchmark tables).
set -u
OUT=${OUT:-/tmp/gpu-out}
BUDGET=${BUDGET:-380}
RUNS=${RUNS:-/tmp/piddpm-runs}
mkdir -p "$OUT" "$RUNS"
LOG="$OUT/summary.log"
WHEELS=${WHEELS:-.whl}
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PIDDPM_CACHE_DIR="$PWD/.gpucache" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc --all
  python3 -c "import torch, pydantic, piddpm; print('torch', torch.__version__, 'cuda',
torch.cuda.is_available(), 'piddpm', piddpm.__version__, 'pydantic', pydantic.__version__)"
} >"$LOG" 2>&1
cat "$LOG"

RUN_NAMES="pi-ddpm-widefield pi-ddpm-confocal ddpm-widefield ddpm-confocal"
for n in $RUN_NAMES; do
  python3 -m piddpm train --config "configs/tiny-$n-gpu.yaml" --out "$RUNS/$n" \
    --max-time "$BUDGET" --no-progress >"$RUNS/$n.log" 2>&1 &
done
# the CUDA tests of the suite, while the runs start up
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_optics.py -k "cuda or gpu" >>"$LOG" 2>&1
wait
for n in $RUN_NAMES; do
  {
    echo "== $n"
    tail -n 3 "$RUNS/$n.log"
    tail -n 2 "$RUNS/$n/log.csv"
    cat "$RUNS/$n/val.csv"
  } >>"$LOG" 2>&1
  cp "$RUNS/$n.log" "$RUNS/$n/train.log"
  tar czf "$OUT/$n.tgz" -C "$RUNS" "$n"
done
ls -la "$OUT" >>"$LOG"
echo "== training throughput" >>"$LOG"
timeout 60 python3 benchmarks/bench_training.py --device cuda --presets tiny,small,paper \
  --methods pi-ddpm --patch 128 --batch 32 --steps 10 >>"$LOG" 2>&1
echo "== restore throughput" >>"$LOG"
timeout "${RESTORE_BENCH_S:-110}" python3 benchmarks/bench_restore.py --device cuda --full \
  --planes 10 --batch-size 32 --out "$RUNS/bench" >>"$LOG" 2>&1
cat "$LOG"
