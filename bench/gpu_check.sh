#!/usr/bin/env bash
# The CUDA paths of agc_pipeline in one run of at most 5 minutes, one PASS/FAIL/SKIP line per
# check and a summary line; exit status 1 if any check failed.
#
#   bench/gpu_check.sh              # on a machine with a GPU (run from anywhere)
#   bench/gpu_check.sh --dry-run    # print the checks' commands, run nothing (any machine)
#   PYTHON=/path/to/python bench/gpu_check.sh
#
# Checks (each under its own time limit):
#   simulated-gpt-10m       the simulated trainer on the GPU, GPT with d ≈ 10M, 20 iterations:
#                           completes, finite loss that decreases
#   simulated-cpu-vs-gpu    a small MLP job on the CPU and on the GPU: the same final loss
#   coded-gradient-bench    bench/bench_coded_gradient.py --device cuda (GPT d ≈ 10M): the
#                           coded step's time and memory targets against a plain step
#   distributed-gloo-cuda   trainer=distributed, trainer.device=cuda, messages over gloo (CUDA
#                           compute, host-staged messages): equals the simulated run on the GPU
#   distributed-gloo-bf16   the same with trainer.param_dtype=bfloat16: close to it
#   distributed-nccl        trainer.backend=nccl, one GPU per rank: equals the simulated run;
#                           NCCL needs one GPU per rank, so this runs only with >= 2 GPUs
#                           (n = GPUs - 1 workers, at most 7) and is skipped otherwise
#
# Without CUDA (torch.cuda.is_available() false) it says so in one line and exits 0 at once.
# Needs the project's dependencies (hydra-core, omegaconf, ...) importable by $PYTHON; run
# logs are kept in $GPU_CHECK_DIR (default: a new temporary directory); GPU_CHECK_TIME_FACTOR=k
# multiplies every time limit (a slow or shared machine).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${GPU_CHECK_DIR:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
START=$(date +%s)
FAILED=0

if [ $DRY -eq 0 ]; then
    if ! GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null); then
        echo "gpu_check: $PY cannot import torch; set PYTHON to the project's interpreter"
        exit 1
    fi
    if [ "$GPUS" -eq 0 ]; then
        echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check"
        exit 0
    fi
    if ! "$PY" -c "import hydra, omegaconf, agc_pipeline.train" 2>"$OUT/imports.log"; then
        echo "gpu_check: FAIL: the project does not import ($(tail -1 "$OUT/imports.log")); install its dependencies (pip install -e .)"
        exit 1
    fi
    "$PY" -c "import torch; print(f'gpu_check: torch {torch.__version__}, {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}')"
else
    GPUS=2
    echo "gpu_check --dry-run: the commands each check runs (assuming $GPUS GPUs)"
fi

# check NAME SECONDS COMMAND...: run COMMAND (a shell string) under a time limit, log in $OUT
check() {
    local name=$1 limit=$2 cmd=$3 t0 rc
    if [ $DRY -eq 1 ]; then
        printf '%-24s (limit %3ss)\n    %s\n' "$name" "$limit" "$cmd"
        return 0
    fi
    t0=$(date +%s)
    timeout "$(( limit * ${GPU_CHECK_TIME_FACTOR:-1} ))" bash -c "$cmd" </dev/null >"$OUT/$name.log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        printf 'PASS  %-24s %4ss  %s\n' "$name" "$(( $(date +%s) - t0 ))" "$(grep '^CHECK' "$OUT/$name.log" | tail -1 | cut -c7-)"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL  %-24s %4ss  exit %s%s; log %s\n' "$name" "$(( $(date +%s) - t0 ))" "$rc" \
            "$([ $rc -eq 124 ] && echo ' (time limit)')" "$OUT/$name.log"
        tail -5 "$OUT/$name.log" | sed 's/^/      /'
    fi
}

TRAIN="$PY -m agc_pipeline.train"
SMALL="dataset=mnist dataset.train_size=560 dataset.test_size=100 model=mlp model.hidden=64 \
trainer.batch_size=8 trainer.iterations=10 trainer.alpha_samples=0 trainer.eval_every=0 \
trainer.checkpoint_every=0 trainer.progress=false straggler=none seed=0"
CODE7="assignment=cyclic assignment.n=4 assignment.s=1 scheme=random_diagonal m=2"
DIST="trainer=distributed trainer.time_scale=0 trainer.timeout_s=60"
# what the checks assert about their run dirs (prints one CHECK line, exit 1 if not so)
VERIFY="$OUT/verify.py"
cat >"$VERIFY" <<'PYEOF'
import json, math, sys

def summary(run):
    return json.load(open(f"{run}/summary.json"))

what, *args = sys.argv[1:]
if what == "decreases":  # RUN: finite training loss, lower at the end than at the start
    (run,) = args
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    first, last, s = rows[0]["train_loss"], rows[-1]["train_loss"], summary(run)
    print(f"CHECK d = {s['parameters']:,}, train loss {first:.3f} -> {last:.3f}, "
          f"{s['seconds']:.1f} s")
    sys.exit(0 if math.isfinite(last) and last < first else 1)
if what == "same":  # A B RTOL: the final training losses agree to RTOL
    a, b, rtol = summary(args[0])["final_train_loss"], summary(args[1])["final_train_loss"], \
        float(args[2])
    print(f"CHECK final train loss {a:.6f} vs {b:.6f} (rtol {rtol:g})")
    sys.exit(0 if math.isfinite(a) and abs(a - b) <= rtol * abs(b) else 1)
sys.exit(f"unknown verification {what}")
PYEOF
SAME="$PY $VERIFY same"

check simulated-gpt-10m 60 "$TRAIN trainer.device=cuda dataset=text dataset.context=16 model=gpt \
model.layers=8 model.width=320 model.heads=8 trainer.batch_size=2 trainer.iterations=20 \
optimizer=adamw trainer.lr=0.001 trainer.alpha_samples=0 trainer.eval_every=0 \
trainer.checkpoint_every=0 trainer.progress=false hydra.run.dir=$OUT/gpt && \
$PY $VERIFY decreases $OUT/gpt"

check simulated-cpu-vs-gpu 40 "$TRAIN $SMALL $CODE7 trainer.device=cpu hydra.run.dir=$OUT/small_cpu && \
$TRAIN $SMALL $CODE7 trainer.device=cuda hydra.run.dir=$OUT/small_gpu && \
$SAME $OUT/small_gpu $OUT/small_cpu 1e-3"

check coded-gradient-bench 100 "$PY bench/bench_coded_gradient.py --device cuda --models gpt_10m \
--designs 7 91 --repeats 5 && echo 'CHECK coded step within 1.3x the time, 2x the memory of a plain step'"

check distributed-gloo-cuda 60 "$TRAIN $SMALL $CODE7 $DIST trainer.device=cuda \
hydra.run.dir=$OUT/dist_gloo && $SAME $OUT/dist_gloo $OUT/small_gpu 1e-4"

check distributed-gloo-bf16 40 "$TRAIN $SMALL $CODE7 $DIST trainer.device=cuda \
trainer.param_dtype=bfloat16 hydra.run.dir=$OUT/dist_bf16 && $SAME $OUT/dist_bf16 $OUT/small_gpu 5e-2"

if [ "$GPUS" -ge 2 ]; then
    N=$(( GPUS - 1 > 7 ? 7 : GPUS - 1 ))
    UNCODED="assignment=identity assignment.n=$N scheme=stack m=1"
    check distributed-nccl 60 "$TRAIN $SMALL $UNCODED trainer.device=cuda hydra.run.dir=$OUT/nccl_ref && \
$TRAIN $SMALL $UNCODED $DIST trainer.device=cuda trainer.backend=nccl hydra.run.dir=$OUT/nccl && \
$SAME $OUT/nccl $OUT/nccl_ref 1e-4"
else
    printf 'SKIP  %-24s        NCCL needs one GPU per rank: >= 2 GPUs (PS + 1 worker), found %s\n' \
        distributed-nccl "$GPUS"
fi

[ $DRY -eq 1 ] && exit 0
echo "gpu_check: $FAILED failed, $(( $(date +%s) - START )) s in all; logs in $OUT"
[ $FAILED -eq 0 ]
