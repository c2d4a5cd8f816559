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
# Results: $RESULTS/pilot-<kind>-<count>-s<seed>.json (report.py compare of the three: the test figures,
# paired differences from patience's, and the validation figures that selected each), the runs' records
# in $RESULTS/runs/ (admin.py export-record: their logs and evaluations), and stages.tsv.
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

# shellcheck source=experiments/stages.sh
source experiments/stages.sh
train() {
    torchrun train.py single --model-size "$MODEL" --batch-size $(( BATCH / NPROC )) --log-interval 50 \
        --num-test-sequences 200 --eval-tasks "$VAL_TASKS" --eval-samples "$EVAL_SAMPLES" --train-name "$DATA" --num-train-sequences "$COUNT" \
        --seed "$SEED" --patience "$PATIENCE" --min-lr-ratio "$MIN_LR_RATIO" "$@"
}
evaluate() { torchrun eval.py --run-id "$1" --checkpoint best --num-tasks "$TEST_TASKS" --samples "$SAMPLES" --max-tokens "$MAX_TOKENS"; }

record() { "$PY" admin.py export-record --run-id "$1" --out "$RESULTS/runs/$1.json"; }
evaluated() { evaluate "$1" && record "$1"; }  # the record: its logs (the validation curves) and evaluation
restored() { "$PY" -c "import store,sys; sys.exit(0 if (store.connect().get_run(sys.argv[1]) or {}).get('record') else 1)" "$1"; }
# a run gone from the database (a new machine): back from its record when its evaluation was recorded,
# else its stages are done again
recover() {
    if ! have_run "$1"; then
        if recorded "evaluate $1" && [ -f "$RESULTS/runs/$1.json" ]; then "$PY" admin.py import-record "$RESULTS/runs/$1.json"
        else forget "pilot $1"; forget "evaluate $1"; fi
    fi
}

# a fresh database: the dataset made again (the same flags make the same data)
have_dataset "$DATA" || { forget "data $DATA"; stage "data $DATA" "$PY" data.py maze --size "$SIZE" \
    --num-train "$NUM_TRAIN" --num-test "$NUM_TEST"; }

for kind in $KINDS; do
    flags=(); [ "$kind" = solution-only ] && flags=(--plan-only)
    base=$PREFIX-pilot-$kind-$COUNT-s$SEED
    for r in patience cooldown second; do recover "$base-$r"; done
    # the cooldown starts from patience's best checkpoint, which a run restored from its record lacks
    if ! recorded "pilot $base-cooldown" && have_run "$base-patience" && restored "$base-patience"; then
        "$PY" admin.py drop-run --run-id "$base-patience"
        forget "pilot $base-patience"; forget "evaluate $base-patience"
    fi
    stage "pilot $base-patience" train --run-id "$base-patience" --lr "$LR" --warmup-steps 100 --train-steps "$MAX_STEPS" \
        --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY" "${flags[@]}"
    stage "evaluate $base-patience" evaluated "$base-patience"
    s=$(best_step "$base-patience")
    cool=$(cooldown_steps "$s" "$COOLDOWN_FRAC")
    lr=$(lr_at "$base-patience" "$s")
    floor=$("$PY" -c "print(min(1.0, $LR * $MIN_LR_RATIO / $lr))")
    stage "pilot $base-cooldown" train --run-id "$base-cooldown" --start-checkpoint "$base-patience" --start-from best \
        --lr "$lr" --warmup-steps 0 --min-lr-ratio "$floor" --train-steps "$cool" --eval-interval $(( EVAL_EVERY / 2 )) \
        --checkpoint-interval $(( EVAL_EVERY / 2 )) "${flags[@]}"
    stage "evaluate $base-cooldown" evaluated "$base-cooldown"
    stage "pilot $base-second" train --run-id "$base-second" --lr "$LR" --warmup-steps 100 --train-steps "$s" \
        --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY" --patience 1000 "${flags[@]}"  # to its end
    stage "evaluate $base-second" evaluated "$base-second"
    # the three on the same test tasks, with their selection records: paired differences from patience's
    "$PY" report.py compare --run-id "$base-patience" --run-id "$base-cooldown" --run-id "$base-second" \
        --json "$RESULTS/pilot-$kind-$COUNT-s$SEED.json"
done
echo "=== pilot done"
