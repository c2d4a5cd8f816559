#!/usr/bin/env bash
# Searchformer at laptop scale (docs/laptop.md, "Searchformer on a laptop"): on 5x5 nondeterministic mazes,
# train a solution-only and a search-augmented xs model on the same training tasks, evaluate both on
# the same test tasks, run search dynamics bootstrapping from the search-augmented model, fine-tune
# and evaluate each step, and draw the plots. Run from the repository root, after `bash .ci/setup`:
#
#   bash experiments/laptop_searchformer.sh            # embedded database (or MONGODB_URI)
#
# Every step resumes or skips what is done, so an interrupted run continues when started again.
# Knobs (environment): SIZE, TASKS, STEPS, FT_STEPS, BOOT_STEPS, SAMPLES, BOOT_SAMPLES, EVAL_TASKS, NPROC,
# PREFIX (run-id prefix), FIGURES (where the PNGs go).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-5}                 # maze side
TASKS=${TASKS:-2000}            # training tasks both models see (the low-data regime)
STEPS=${STEPS:-2000}            # training steps of both models, 32 sequences each
FT_STEPS=${FT_STEPS:-500}       # fine-tuning steps per bootstrapping step
BOOT_STEPS=${BOOT_STEPS:-1}     # bootstrapping steps
SAMPLES=${SAMPLES:-8}           # responses per test task
BOOT_SAMPLES=${BOOT_SAMPLES:-8} # responses per training prompt when bootstrapping
EVAL_TASKS=${EVAL_TASKS:-200}   # test tasks
NPROC=${NPROC:-2}               # training and sampling processes (one per core; 1, 2, 4, 8, 16 or 32)
PREFIX=${PREFIX:-laptop}
FIGURES=${FIGURES:-docs/laptop}
DATA=maze.$SIZE-by-$SIZE-nondeterministic.simple
MAX_TOKENS=$(( SIZE * SIZE * 16 ))  # generated tokens per response (400 at 5x5: the longest A* response of 8,309 such tasks is 246)

start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - start )) s] $*"; }
sample() { OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" eval.py "$@"; }
have_dataset() { "$PY" data.py list | awk '{print $1}' | grep -qx "$1"; }
train() {  # NPROC processes of one thread each (DDP, gloo), 32 sequences per step in all
    OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" train.py single \
        --model-size xs --batch-size $(( 32 / NPROC )) --lr 2e-3 --warmup-steps 100 --log-interval 50 \
        --eval-interval 250 --checkpoint-interval 250 --num-test-sequences 200 --eval-tasks 50 "$@"
}

stamp "data: $DATA"
have_dataset "$DATA" || "$PY" data.py maze --size "$SIZE" --nondeterministic --num-train 10000 --num-test 1000

stamp "train $PREFIX-solution-only and $PREFIX-search on the first $TASKS training tasks, $STEPS steps each"
train --run-id "$PREFIX-solution-only" --train-name "$DATA" --num-train-sequences "$TASKS" --train-steps "$STEPS" --plan-only
train --run-id "$PREFIX-search" --train-name "$DATA" --num-train-sequences "$TASKS" --train-steps "$STEPS"

EVAL=(--num-tasks "$EVAL_TASKS" --samples "$SAMPLES" --max-tokens "$MAX_TOKENS")
stamp "evaluate both on $EVAL_TASKS test tasks x $SAMPLES samples"
sample --run-id "$PREFIX-solution-only" "${EVAL[@]}"
sample --run-id "$PREFIX-search" "${EVAL[@]}"

prev=$PREFIX-search
runs=("$PREFIX-solution-only" "$PREFIX-search")
datasets=("$DATA")
for step in $(seq 1 "$BOOT_STEPS"); do
    run=$PREFIX-search-step-$step
    stamp "bootstrapping step $step: $BOOT_SAMPLES responses for each of $prev's $TASKS training prompts"
    have_dataset "bootstrap.$prev" || sample bootstrap --run-id "$prev" --samples "$BOOT_SAMPLES" --max-tokens "$MAX_TOKENS"
    stamp "fine-tune $run from $prev on bootstrap.$prev, $FT_STEPS steps"
    train --run-id "$run" --train-name "bootstrap.$prev" --test-name "$DATA" --start-checkpoint "$prev" \
        --train-steps "$FT_STEPS"
    sample --run-id "$run" "${EVAL[@]}"
    datasets+=("bootstrap.$prev")
    runs+=("$run")
    prev=$run
done

stamp "results and plots in $FIGURES"
mkdir -p "$FIGURES"
ids=(); for r in "${runs[@]}"; do ids+=(--run-id "$r"); done
"$PY" report.py loss "${ids[@]}" --out "$FIGURES/loss.png"
traces=(); for d in "${datasets[@]}"; do traces+=(--dataset "$d"); done
"$PY" report.py traces "${traces[@]}" --first "$TASKS" --run-id "$PREFIX-search" --run-id "$prev" --out "$FIGURES/traces.png"
"$PY" report.py metrics "${ids[@]}" --out "$FIGURES/metrics.png"
"$PY" admin.py list-all
stamp done
