#!/usr/bin/env bash
# The schedule pilot of the data-efficiency experiment (docs/laptop.md, "Data efficiency"; issue 29): at one
# training-task count, for the solution-only and the search-augmented kind, three ways to end training,
# each selected on the validation tasks alone (train.py --patience), its selected checkpoint then
# evaluated on the test tasks as every result is:
#   patience  a cosine to the cap (MAX_STEPS), stopped by --patience: its best sits high on the schedule;
#   cooldown  from patience's best checkpoint, the LR it had there decayed (cosine) to the schedule's
#             floor over COOLDOWN_FRAC of that step (at least 200 steps), evaluated every EVAL_EVERY/2;
#   second    a fresh run (same seed) whose cosine ends at patience's best step: decayed by then.
# Run from the repository root after `bash .ci/setup` (the data stage of experiments/data_efficiency.sh
# makes the same dataset, with the same knobs); every stage skips what is done, so a relaunch continues.
# Results: $RESULTS/pilot.tsv (one line per candidate: validation and test figures) and stages.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-6}
MODEL=${MODEL:-xs}
COUNT=${COUNT:-1000}
SEED=${SEED:-0}
KINDS=${KINDS:-"solution-only search"}
PATIENCE=${PATIENCE:-3}
EVAL_EVERY=${EVAL_EVERY:-200}
MAX_STEPS=${MAX_STEPS:-8000}
BATCH=${BATCH:-32}
LR=${LR:-2e-3}
MIN_LR_RATIO=${MIN_LR_RATIO:-0.1}
COOLDOWN_FRAC=${COOLDOWN_FRAC:-0.2}
VAL_TASKS=${VAL_TASKS:-300}
TEST_TASKS=${TEST_TASKS:-500}
SAMPLES=${SAMPLES:-8}
EVAL_SAMPLES=${EVAL_SAMPLES-$SAMPLES}  # validation: samples a task at temperature 1 (0: greedy), as results are reported
NPROC=${NPROC:-2}
NUM_TRAIN=${NUM_TRAIN:-4000}        # the dataset's training tasks (the experiment's largest count: the same dataset)
PREFIX=${PREFIX:-eff${SIZE}v2}   # data_efficiency.sh's: one results folder, one dataset
RESULTS=${RESULTS:-experiments/results/$PREFIX}
DATA=maze.$SIZE-by-$SIZE-deterministic.simple
NUM_TEST=$(( TEST_TASKS + VAL_TASKS + 200 ))
MAX_TOKENS=$(( SIZE * SIZE * 16 ))
export OMP_NUM_THREADS=1

mkdir -p "$RESULTS"
STAGES=$RESULTS/stages.tsv
[ -f "$STAGES" ] || printf 'stage\tseconds\tfinished\tcommit\n' > "$STAGES"
commit() { echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!experiments/results' || echo -dirty)"; }
recorded() { cut -f1 "$STAGES" | grep -qx "$1"; }
stage() {
    local name=$1; shift
    if recorded "$name"; then return 0; fi
    echo "=== $name"
    local t0; t0=$(date +%s)
    "$@"
    printf '%s\t%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$(date -u +%FT%TZ)" "$(commit)" >> "$STAGES"
}
torchrun() { "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" "$@"; }
train() {
    torchrun train.py single --model-size "$MODEL" --batch-size $(( BATCH / NPROC )) --log-interval 50 \
        --num-test-sequences 200 --eval-tasks "$VAL_TASKS" --eval-samples "$EVAL_SAMPLES" --train-name "$DATA" --num-train-sequences "$COUNT" \
        --seed "$SEED" --patience "$PATIENCE" --min-lr-ratio "$MIN_LR_RATIO" "$@"
}
evaluate() { torchrun eval.py --run-id "$1" --checkpoint best --num-tasks "$TEST_TASKS" --samples "$SAMPLES" --max-tokens "$MAX_TOKENS"; }
best_step() { "$PY" -c "import store,sys; print(store.connect().get_run(sys.argv[1])['best']['step'])" "$1"; }
lr_at() { "$PY" -c "import store,sys; from hparams import TrainConfig
print(TrainConfig.from_stored(store.connect().get_run(sys.argv[1])['config']).lr_at(int(sys.argv[2])))" "$1" "$2"; }

"$PY" data.py list | awk '{print $1}' | grep -qx "$DATA" || \
    stage "data $DATA" "$PY" data.py maze --size "$SIZE" --num-train "$NUM_TRAIN" --num-test "$NUM_TEST"

for kind in $KINDS; do
    flags=(); [ "$kind" = solution-only ] && flags=(--plan-only)
    base=$PREFIX-pilot-$kind-$COUNT-s$SEED
    stage "pilot $base-patience" train --run-id "$base-patience" --lr "$LR" --warmup-steps 100 --train-steps "$MAX_STEPS" \
        --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY" "${flags[@]}"
    stage "evaluate $base-patience" evaluate "$base-patience"
    s=$(best_step "$base-patience")
    cool=$(awk -v s="$s" -v f="$COOLDOWN_FRAC" 'BEGIN { c = int(s * f / 100 + 0.5) * 100; print (c < 200 ? 200 : c) }')
    lr=$(lr_at "$base-patience" "$s")
    floor=$("$PY" -c "print(min(1.0, $LR * $MIN_LR_RATIO / $lr))")
    stage "pilot $base-cooldown" train --run-id "$base-cooldown" --start-checkpoint "$base-patience" --start-from best \
        --lr "$lr" --warmup-steps 0 --min-lr-ratio "$floor" --train-steps "$cool" --eval-interval $(( EVAL_EVERY / 2 )) \
        --checkpoint-interval $(( EVAL_EVERY / 2 )) "${flags[@]}"
    stage "evaluate $base-cooldown" evaluate "$base-cooldown"
    stage "pilot $base-second" train --run-id "$base-second" --lr "$LR" --warmup-steps 100 --train-steps "$s" \
        --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY" --patience 1000 "${flags[@]}"  # to its end
    stage "evaluate $base-second" evaluate "$base-second"
    # the three on the same test tasks, with their selection records: paired differences from patience's
    "$PY" report.py compare --run-id "$base-patience" --run-id "$base-cooldown" --run-id "$base-second" \
        --json "$RESULTS/pilot-$kind-$COUNT-s$SEED.json"
done
echo "=== pilot done"
