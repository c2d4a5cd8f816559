#!/usr/bin/env bash
# Searchformer's two claims measured the paper's way at laptop scale (docs/laptop.md, "Data efficiency"):
#   (a) with the same training tasks, a search-augmented model plans optimally more often than a
#       solution-only one: solution-only, search-augmented and shuffled-trace (each task carries another
#       task's A* trace) models at several training-task counts, each trained to its best (--patience on
#       the validation tasks), its best checkpoint evaluated on the same test tasks;
#   (b) bootstrapping shortens the traces and keeps the optimal rate: BOOT_STEPS steps from the best
#       search-augmented model at the largest count, and a control fine-tuned from the same checkpoint
#       for the same steps on the original A* data.
# Run from the repository root, after `bash .ci/setup`:
#
#   bash experiments/data_efficiency.sh            # embedded database (or MONGODB_URI)
#
# Every stage skips what is done (a finished run, a stored evaluation, an existing dataset), so an
# interrupted script continues where it stopped when started again, also in a later sitting. Each
# finished stage appends its wall time to $RESULTS/stages.tsv and rewrites the small results files
# (JSON tables, PNG plots) in $RESULTS, which the write-up reads: commit them as they come.
# Knobs (environment): SIZE TRACES MODEL ARCHS COUNTS SEEDS KINDS SHUFFLED_COUNTS EXTRA_SEEDS EXTRA_COUNTS SCHEDULE
# FROM_PREFIX PATIENCE EVAL_EVERY MAX_STEPS BATCH LR MIN_LR_RATIO VAL_TASKS TEST_TASKS SAMPLES BOOT_STEPS BOOT_SAMPLES
# FT_STEPS NPROC COMPILE DATA_TRAIN PREFIX RESULTS; PLAN=1 lists the models in training order and exits.
# Selection reads the validation tasks alone (the last VAL_TASKS test tasks, 300 over 11 wall layouts at 6x6),
# results are reported on the first TEST_TASKS (18 layouts), errors clustered by layout (report.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
SIZE=${SIZE:-6}                     # maze side
TRACES=${TRACES:-deterministic}     # deterministic | nondeterministic A* traces
MODEL=${MODEL:-xs}
COUNTS=${COUNTS:-"2000 500 1000 4000"}  # training-task counts (the first N tasks of one dataset), trained in this order: 500
                                         # early, so the curve spans 4x and the smallest stage can be re-run soon
SEEDS=${SEEDS:-"0"}                 # every kind at every count (shuffled: at SHUFFLED_COUNTS) with each
KINDS=${KINDS:-"solution-only search shuffled"}
SHUFFLED_COUNTS=${SHUFFLED_COUNTS:-"2000 4000"}  # the shuffled-trace control at these counts only
EXTRA_SEEDS=${EXTRA_SEEDS-1}           # more seeds of solution-only and search-augmented, at EXTRA_COUNTS, after the rest
EXTRA_COUNTS=${EXTRA_COUNTS:-"1000"}
ARCHS=${ARCHS:-"decoder encdec"}  # decoder-only (model.py) and the reference's encoder-decoder (--arch encdec), at each count
SCHEDULE=${SCHEDULE:-cooldown}      # patience | cooldown | second (experiments/schedule_pilot.sh chose cooldown; docs/laptop.md)
MIN_LR_RATIO=${MIN_LR_RATIO:-0.1}   # the cosine's floor, a fraction of LR
COOLDOWN_FRAC=${COOLDOWN_FRAC:-0.2} # SCHEDULE=cooldown: the decay's length, a fraction of the selected step
PATIENCE=${PATIENCE:-3}             # evaluations without a better validation optimal rate before stopping
FROM_PREFIX=${FROM_PREFIX:-}        # continue each model's first run from this prefix's (e.g. with a raised PATIENCE)
EVAL_EVERY=${EVAL_EVERY:-200}       # steps between evaluations (and checkpoints)
MAX_STEPS=${MAX_STEPS:-8000}        # the cap; patience normally stops a run well before it
BATCH=${BATCH:-32}                  # sequences per step, over all processes
LR=${LR:-2e-3}
VAL_TASKS=${VAL_TASKS:-300}         # greedy validation tasks: the last ones of the test split
TEST_TASKS=${TEST_TASKS:-500}       # reported test tasks: the first ones, never validation tasks
SAMPLES=${SAMPLES:-8}               # responses per test task, the same for every model
EVAL_SAMPLES=${EVAL_SAMPLES-$SAMPLES}  # validation: samples a task at temperature 1 (0: greedy), as results are reported
BOOT_STEPS=${BOOT_STEPS:-2}
BOOT_SAMPLES=${BOOT_SAMPLES:-16}    # responses per training prompt when bootstrapping (the paper: 64)
FT_STEPS=${FT_STEPS:-500}           # fine-tuning steps per bootstrapping step (and per control step)
NPROC=${NPROC:-2}                   # processes of one thread each (DDP, gloo)
COMPILE=${COMPILE:-}                # --compile to torch.compile training
PREFIX=${PREFIX:-eff${SIZE}v2}           # v2: validation-only selection (the v1 results in experiments/results/eff6)
RESULTS=${RESULTS:-experiments/results/$PREFIX}
DATA=maze.$SIZE-by-$SIZE-$TRACES.simple
SHUFFLED=shuffled.$DATA
NUM_TRAIN=$(for c in $COUNTS; do echo "$c"; done | sort -n | tail -1)
FIRST_SEED=$(echo "$SEEDS" | awk '{print $1}')  # claim (b)'s base model and the seed others are paired with
DATA_TRAIN=${DATA_TRAIN:-$(( NUM_TRAIN > 4000 ? NUM_TRAIN : 4000 ))}  # the dataset's (schedule_pilot.sh's too)
NUM_TEST=$(( TEST_TASKS + VAL_TASKS + 200 ))   # room for whole wall layouts between the two parts
MAX_TOKENS=$(( SIZE * SIZE * 16 ))  # generated tokens per response (the longest 6x6 A* response of 12,000 tasks: 306)
export OMP_NUM_THREADS=1

# the models of claim (a), "kind count seed arch" a line, in training order: count by count, every kind with
# the SEEDS (the shuffled-trace control at SHUFFLED_COUNTS alone), then, at EXTRA_COUNTS, solution-only and
# search-augmented with the EXTRA_SEEDS, so that the second seed comes before the next count. Within a
# count the architectures take turns, kind by kind, so a sitting that ends part way leaves the two
# compared at the same kinds.
models() {
    local seed count kind arch
    for count in $COUNTS $(for c in $EXTRA_COUNTS; do [[ " $COUNTS " == *" $c "* ]] || echo "$c"; done); do
        if [[ " $COUNTS " == *" $count "* ]]; then
            for seed in $SEEDS; do for kind in $KINDS; do for arch in $ARCHS; do
                [ "$kind" = shuffled ] && ! [[ " $SHUFFLED_COUNTS " == *" $count "* ]] && continue
                echo "$kind $count $seed $arch"
            done; done; done
        fi
        [[ " $EXTRA_COUNTS " == *" $count "* ]] || continue
        for seed in $EXTRA_SEEDS; do for kind in solution-only search; do for arch in $ARCHS; do
            [[ " $KINDS " == *" $kind "* ]] && echo "$kind $count $seed $arch"
        done; done; done
    done
}
if [ -n "${PLAN:-}" ]; then models; exit 0; fi  # PLAN=1: the models in training order, nothing run or written

# shellcheck source=experiments/stages.sh
source experiments/stages.sh
# a stage recorded as done whose run the database lost (a new machine, say) gets the run back from its
# record (below) when it has one and no later stage needs its checkpoint, else is done again; its
# recorded figures stay in the committed results files until the new ones replace them
forget_lost() {
    if recorded "$1" && ! have_run "$2"; then
        if { [ "$2" != "$base" ] || [ -n "$intact" ]; } && restore "$2"; then return 0; fi
        echo "=== $1: recorded, but run $2 is not in the database: running it again"
        forget "$1"
    fi
}

# --- run records -------------------------------------------------------------------------------------
# After each model stage, each bootstrapping or control evaluation, and each bootstrapped dataset (its
# sampling stores an evaluation on the train split with the run sampled), the run's record (its run
# document, logs and evaluations, no checkpoint: admin.py export-record) goes to $RECORDS/<run id>.json,
# committed with the results. A fresh database gets a lost run back from it (admin.py import-record)
# instead of training it again; such a run has no checkpoint, so the bootstrapping chain's runs and its
# base model are restored only when the whole chain is done and its datasets are in the database.
RECORDS=$RESULTS/runs
save_record() { "$PY" admin.py export-record --run-id "$1" --out "$RECORDS/$1.json"; }
# a record for a stage recorded as done before records were written, while its run is still here
backfill_record() { if recorded "$1" && [ ! -f "$RECORDS/$2.json" ] && have_run "$2"; then save_record "$2"; fi; }
restore() {
    [ -f "$RECORDS/$1.json" ] || return 1
    "$PY" admin.py import-record "$RECORDS/$1.json" || return 1
    echo "=== run $1 was not in the database: restored from its record $RECORDS/$1.json (no checkpoint)"
}
with_record() { local id=$1; shift; "$@"; save_record "$id"; }  # with_record RUN CMD...: CMD, then RUN's record
# whether every stage of the bootstrapping chain is recorded, its datasets are in the database and each
# of its runs is in the database or has a record: then no checkpoint of the chain is needed again
chain_intact() {
    local k prev=$base r
    for k in $(seq 1 "$BOOT_STEPS"); do
        { recorded "bootstrap dataset from $prev" && have_dataset "bootstrap.$prev"; } || return 1
        for r in "$base-boot-$k" "$base-control-$k"; do
            { recorded "fine-tune $r" && recorded "evaluate $r"; } || return 1
            have_run "$r" || [ -f "$RECORDS/$r.json" ] || return 1
        done
        prev=$base-boot-$k
    done
}
# --- end of run records ------------------------------------------------------------------------------

train() {
    # shellcheck disable=SC2086
    torchrun train.py single --model-size "$MODEL" --batch-size $(( BATCH / NPROC )) --lr "$LR" --warmup-steps 100 \
        --log-interval 50 --num-test-sequences 200 --eval-tasks "$VAL_TASKS" --eval-samples "$EVAL_SAMPLES" $COMPILE "$@"
}
evaluate() { torchrun eval.py --run-id "$1" --checkpoint "$2" --num-tasks "$TEST_TASKS" --samples "$SAMPLES" --max-tokens "$MAX_TOKENS"; }
# kind, count, seed[, arch]: a decoder-only model's id names no arch
run_id() { local a=; [ "${4:-decoder}" = decoder ] || a=-$4; echo "$PREFIX$a-$1-$2-s$3"; }

data() {
    local flags=(); [ "$TRACES" = nondeterministic ] && flags=(--nondeterministic)
    have_dataset "$DATA" || "$PY" data.py maze --size "$SIZE" "${flags[@]}" --num-train "$DATA_TRAIN" --num-test "$NUM_TEST"
    have_dataset "$SHUFFLED" || "$PY" data.py shuffle-traces "$DATA" --name "$SHUFFLED" --seed 0
}
# one model of claim (a): trained to its best by the validation tasks (SCHEDULE patience: a cosine to MAX_STEPS
# stopped by --patience; cooldown: that run, <id>-p, then from its best the LR it had there decayed to the
# floor over COOLDOWN_FRAC of its steps; second: <id>-p, then a fresh run whose cosine ends at <id>-p's best
# step), then its best checkpoint evaluated
model() {
    local kind=$1 count=$2 seed=$3 arch=$4 flags=(--arch "$4") name=$DATA
    case $kind in
        solution-only) flags+=(--plan-only) ;;
        shuffled) name=$SHUFFLED ;;
        search) ;;
        *) echo "error: unknown kind $kind in KINDS; use solution-only, search or shuffled" >&2; exit 1 ;;
    esac
    local id; id=$(run_id "$kind" "$count" "$seed" "$arch")
    local common=(--train-name "$name" --test-name "$DATA" --num-train-sequences "$count" --seed "$seed"
                  --min-lr-ratio "$MIN_LR_RATIO" "${flags[@]}")
    local first=$id; [ "$SCHEDULE" = patience ] || first=$id-p
    # FROM_PREFIX: this model's first run under that prefix, copied (admin.py copy-run) and continued here, a
    # raised PATIENCE going on from its stop exactly as a run launched with it would (train.py); a killed
    # copy (status importing) is copied again
    if [ -n "$FROM_PREFIX" ]; then
        local from=$FROM_PREFIX${first#"$PREFIX"} st; st=$(run_status "$first")
        if { [ -z "$st" ] || [ "$st" = importing ]; } && have_run "$from"; then
            "$PY" admin.py copy-run --run-id "$from" --to "$first"
        fi
    fi
    train --run-id "$first" "${common[@]}" --lr "$LR" --warmup-steps 100 --train-steps "$MAX_STEPS" \
        --patience "$PATIENCE" --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY"
    local s lr cool floor; s=$(best_step "$first")
    case $SCHEDULE in
        patience) ;;
        cooldown)
            cool=$(cooldown_steps "$s" "$COOLDOWN_FRAC")
            lr=$(lr_at "$first" "$s")
            floor=$("$PY" -c "print(min(1.0, $LR * $MIN_LR_RATIO / $lr))")
            train --run-id "$id" "${common[@]}" --start-checkpoint "$first" --start-from best --lr "$lr" --warmup-steps 0 \
                --min-lr-ratio "$floor" --train-steps "$cool" --patience "$PATIENCE" \
                --eval-interval $(( EVAL_EVERY / 2 )) --checkpoint-interval $(( EVAL_EVERY / 2 )) ;;
        second)
            train --run-id "$id" "${common[@]}" --lr "$LR" --warmup-steps 100 --train-steps "$s" --patience 1000000 \
                --eval-interval "$EVAL_EVERY" --checkpoint-interval "$EVAL_EVERY" ;;
        *) echo "error: unknown SCHEDULE $SCHEDULE; use patience, cooldown or second" >&2; exit 1 ;;
    esac
    evaluate "$id" best
    save_record "$id"
    [ "$first" = "$id" ] || save_record "$first"  # the validation curve that chose where the second part starts
}
# optimal % against training tasks, one plot per architecture (efficiency.png: decoder-only;
# efficiency-encdec.png)
efficiency_report() {
    local ids=() seed count kind id arch=$1  # local: the main loop's own variables must survive this
    while read -r kind count seed a; do
        id=$(run_id "$kind" "$count" "$seed" "$a")
        [ "$a" = "$arch" ] && recorded "model $id" && ids+=(--run-id "$id")
    done < <(models)
    [ ${#ids[@]} -gt 0 ] || return 0
    local out=$RESULTS/efficiency; [ "$arch" = decoder ] || out=$RESULTS/efficiency-$arch
    "$PY" report.py efficiency "${ids[@]}" --out "$out.png" --json "$out.json"
}

# the paired comparison at one count and seed, search-augmented first: Δ optimal % on the same tasks,
# of all kinds (compare-<count>-s<seed>.json) and of the search-augmented and solution-only models
# alone (…-search-solution.json: a shuffled-trace model that solves nothing leaves no common tasks)
# (an encdec model's files are named compare-encdec-…); and each kind of the two architectures at equal tasks
# (compare-arch-<kind>-<count>-s<seed>.json: Δ encdec − decoder); and a later seed's model against the first
# seed's (compare-seeds-<arch>-<kind>-<count>-s<seed>.json: Δ this seed − the first, on the same tasks)
compare_report() {
    local ids=() kind id name=$1-s$2; [ "$3" = decoder ] || name=$3-$name
    for kind in search solution-only shuffled; do
        id=$(run_id "$kind" "$1" "$2" "$3")
        recorded "model $id" && ids+=(--run-id "$id")
    done
    if [ ${#ids[@]} -ge 4 ]; then  # two runs or more
        "$PY" report.py compare "${ids[@]}" --json "$RESULTS/compare-$name.json"
        [ ${#ids[@]} -lt 6 ] || "$PY" report.py compare "${ids[@]:0:4}" --json "$RESULTS/compare-$name-search-solution.json"
    fi
    for kind in search solution-only shuffled; do
        local dec enc; dec=$(run_id "$kind" "$1" "$2" decoder) enc=$(run_id "$kind" "$1" "$2" encdec)
        if recorded "model $dec" && recorded "model $enc"; then
            "$PY" report.py compare --run-id "$dec" --run-id "$enc" --json "$RESULTS/compare-arch-$kind-$1-s$2.json"
        fi
    done
    [ "$2" != "$FIRST_SEED" ] || return 0
    local a b
    for kind in search solution-only; do
        a=$(run_id "$kind" "$1" "$FIRST_SEED" "$3") b=$(run_id "$kind" "$1" "$2" "$3")
        if recorded "model $a" && recorded "model $b"; then
            "$PY" report.py compare --run-id "$a" --run-id "$b" --json "$RESULTS/compare-seeds-$3-$kind-$1-s$2.json"
        fi
    done
}

# a fresh database (a new machine) lacks the datasets: made again (the same flags make the same data,
# which the run records' import checks)
if recorded "data $DATA and $SHUFFLED" && ! { have_dataset "$DATA" && have_dataset "$SHUFFLED"; }; then
    forget "data $DATA and $SHUFFLED"
fi
stage "data $DATA and $SHUFFLED" data

base=$(run_id search "$NUM_TRAIN" "$FIRST_SEED")  # claim (b) starts from it
intact=; if [ "$BOOT_STEPS" -eq 0 ] || chain_intact; then intact=1; fi  # no checkpoint of the chain's needed
# first, so that no report names a lost run
while read -r kind count seed arch; do
    id=$(run_id "$kind" "$count" "$seed" "$arch")
    forget_lost "model $id" "$id"
    backfill_record "model $id" "$id"
    # the run a cooldown started from: its tokens and time count in the reports (report.py efficiency)
    if [ "$SCHEDULE" != patience ] && recorded "model $id" && ! have_run "$id-p"; then restore "$id-p" || true; fi
done < <(models)
stale=; recorded "model $base" || stale="base model $base is trained in this launch"
while read -r kind count seed arch <&3; do  # the list on fd 3: no command in the loop can read it
    id=$(run_id "$kind" "$count" "$seed" "$arch")
    recorded "model $id" && continue
    stage "model $id" model "$kind" "$count" "$seed" "$arch"
    efficiency_report "$arch"
    compare_report "$count" "$seed" "$arch"
done 3< <(models)

# claim (b): bootstrapping from the best search-augmented model at the largest count, the first seed's
[ "$BOOT_STEPS" -gt 0 ] || { stamp "done (BOOT_STEPS=0: no bootstrapping)"; exit 0; }
# chained NAME dataset|run|- THING CMD...: a stage of the bootstrapping chain (making THING, or - for an
# evaluation), each built on the one before; from the first whose dataset or run the database lost, or
# from the start when the base model was trained in this launch, every recorded stage is done again
# (the stale run it made dropped first)
chained() {
    local name=$1 what=$2 thing=$3; shift 3
    if recorded "$name"; then
        if [ -z "$stale" ]; then
            case $what in
                dataset) have_dataset "$thing" || stale="dataset $thing is not in the database" ;;
                run) have_run "$thing" || { [ -n "$intact" ] && restore "$thing"; } ||
                     stale="run $thing is not in the database" ;;
            esac
        fi
        if [ -n "$stale" ]; then
            echo "=== $name: recorded, but $stale: doing it again"
            forget "$name"
            if [ "$what" = run ] && have_run "$thing"; then "$PY" admin.py drop-run --run-id "$thing"; fi
        fi
    fi
    stage "$name" "$@"
}
steps=("$base") controls=()
prev=$base prev_control=$base checkpoint=best
for k in $(seq 1 "$BOOT_STEPS"); do
    run=$base-boot-$k control=$base-control-$k
    chained "bootstrap dataset from $prev" dataset "bootstrap.$prev" \
        with_record "$prev" torchrun eval.py bootstrap --run-id "$prev" --checkpoint "$checkpoint" \
        --samples "$BOOT_SAMPLES" --max-tokens "$MAX_TOKENS" --name "bootstrap.$prev" --overwrite
    common=(--num-train-sequences "$NUM_TRAIN" --test-name "$DATA" --train-steps "$FT_STEPS" --eval-interval "$FT_STEPS"
            --checkpoint-interval "$FT_STEPS")
    chained "fine-tune $run" run "$run" \
        train --run-id "$run" --train-name "bootstrap.$prev" --start-checkpoint "$prev" --start-from "$checkpoint" "${common[@]}"
    chained "evaluate $run" - - with_record "$run" evaluate "$run" latest
    chained "fine-tune $control" run "$control" \
        train --run-id "$control" --train-name "$DATA" --start-checkpoint "$prev_control" --start-from "$checkpoint" "${common[@]}"
    chained "evaluate $control" - - with_record "$control" evaluate "$control" latest
    backfill_record "evaluate $run" "$run"
    backfill_record "evaluate $control" "$control"
    steps+=("$run") controls+=("$control")
    prev=$run prev_control=$control checkpoint=latest
done
boot=(); for r in "${steps[@]}"; do boot+=(--run-id "$r"); done
for c in "${controls[@]}"; do boot+=(--control "$c"); done
"$PY" report.py bootstrap "${boot[@]}" --out "$RESULTS/bootstrap.png" --json "$RESULTS/bootstrap.json"
stamp done
