# The experiment scripts' shared bookkeeping, sourced by data_efficiency.sh and schedule_pilot.sh after
# they set PY, NPROC and RESULTS: stages recorded in $RESULTS/stages.tsv (name, wall seconds of the launch
# that finished it, finish time, the commits it ran at), torchrun, and two questions to a stored run.
mkdir -p "$RESULTS"
STAGES=$RESULTS/stages.tsv
LAUNCHES=$RESULTS/stage-launches.tsv  # each start of a stage: one resumed in a later sitting ran at each commit
[ -f "$STAGES" ] || printf 'stage\tseconds\tfinished\tcommit\n' > "$STAGES"
[ -f "$LAUNCHES" ] || printf 'stage\tstarted\tcommit\n' > "$LAUNCHES"
# the commit a stage runs (-dirty: with uncommitted changes outside the results)
commit() { echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!experiments/results' || echo -dirty)"; }
# every commit a stage was launched at, in order, joined by +
commits() { awk -F '\t' -v s="$1" '$1 == s && !seen[$3]++ { c = c (c ? "+" : "") $3 } END { print c }' "$LAUNCHES"; }
script_start=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - script_start )) s] $*"; }
recorded() { cut -f1 "$STAGES" | grep -qx "$1"; }
forget() { awk -F '\t' -v s="$1" '$1 != s' "$STAGES" > "$STAGES.tmp" && mv "$STAGES.tmp" "$STAGES"; }
# stage NAME CMD...: run CMD and record its wall time, unless NAME is recorded as done
stage() {
    local name=$1; shift
    if recorded "$name"; then return 0; fi
    stamp "$name"
    local t0; t0=$(date +%s)
    printf '%s\t%s\t%s\n' "$name" "$(date -u +%FT%TZ)" "$(commit)" >> "$LAUNCHES"
    "$@"
    printf '%s\t%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$(date -u +%FT%TZ)" "$(commits "$name")" >> "$STAGES"
}
torchrun() { "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" "$@"; }
have_dataset() { "$PY" data.py list | awk '{print $1}' | grep -qx "$1"; }
have_run() { "$PY" admin.py show "$1" > /dev/null 2>&1; }
run_status() { "$PY" -c "import store,sys; d=store.connect().get_run(sys.argv[1]); print(d['status'] if d else '')" "$1"; }
# the step of a run's best checkpoint (train.py --patience), and the learning rate its schedule gives at a step
best_step() { "$PY" -c "import store,sys; print(store.connect().get_run(sys.argv[1])['best']['step'])" "$1"; }
lr_at() { "$PY" -c "import store,sys; from hparams import TrainConfig
print(TrainConfig.from_stored(store.connect().get_run(sys.argv[1])['config']).lr_at(int(sys.argv[2])))" "$1" "$2"; }
# the length of a cooldown over a fraction of a step count, in hundreds, at least 200
cooldown_steps() { awk -v s="$1" -v f="$2" 'BEGIN { c = int(s * f / 100 + 0.5) * 100; print (c < 200 ? 200 : c) }'; }
