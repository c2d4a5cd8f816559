"""experiments/data_efficiency.sh end to end at toy scale: every stage runs once, its results files
are written, a second launch runs no stage, a stage whose run the database lost runs again, and a lost
run whose record was kept is restored from it instead."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "data_efficiency.sh"
TOY = {"SIZE": "5", "MODEL": "tiny", "COUNTS": "16 8", "SEEDS": "0", "PATIENCE": "1", "EVAL_EVERY": "4",
       "MAX_STEPS": "8", "BATCH": "4", "VAL_TASKS": "4", "TEST_TASKS": "4", "SAMPLES": "2", "BOOT_STEPS": "1",
       "BOOT_SAMPLES": "2", "FT_STEPS": "4", "NPROC": "1", "SHUFFLED_COUNTS": "16", "EXTRA_SEEDS": "1", "EXTRA_COUNTS": "8",
       "DATA_TRAIN": "16", "PREFIX": "eff5", "ARCHS": "decoder", "SCHEDULE": "patience"}  # the others: below


def launch(results, **knobs):
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, **TOY, "PY": sys.executable, "RESULTS": str(results), **knobs})
    assert r.returncode == 0, f"data_efficiency.sh exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def stages(results):
    return [line.split("\t")[0] for line in (results / "stages.tsv").read_text().splitlines()[1:]]


def test_data_efficiency_script_runs_every_stage_once_and_resumes(env, tmp_path):
    results = tmp_path / "results"
    launch(results)
    kinds = {"solution-only": "solution-only", "search": "search-augmented", "shuffled": "shuffled-trace"}
    # every kind at each count (the shuffled-trace control at 16 only), then the extra seed's two kinds at 8
    models = [f"eff5-{k}-{n}-s0" for n in (16, 8) for k in kinds if k != "shuffled" or n == 16] + \
        [f"eff5-{k}-8-s1" for k in ("solution-only", "search")]
    boot = ["bootstrap dataset from eff5-search-16-s0", "fine-tune eff5-search-16-s0-boot-1",
            "evaluate eff5-search-16-s0-boot-1", "fine-tune eff5-search-16-s0-control-1",
            "evaluate eff5-search-16-s0-control-1"]
    done = stages(results)
    assert done[1:] == [f"model {m}" for m in models] + boot, done
    table = json.loads((results / "efficiency.json").read_text())
    assert {(r["run"], r["kind"], r["train_tasks"]) for r in table["runs"]} == {
        (m, kinds[m.split("-")[1] if "only" not in m else "solution-only"], int(m.split("-")[-2])) for m in models}
    assert table["evaluation"]["checkpoint"] == "best" and table["evaluation"]["num_tasks"] == 4
    for r in table["runs"]:  # trained to a patience stop or the cap, its best checkpoint evaluated
        assert 4 <= r["step"] <= r["steps_trained"] <= 8 and r["wall_s"] > 0 and r["tokens_at_eval"] > 0, r
    three = json.loads((results / "compare-16-s0.json").read_text())
    two = json.loads((results / "compare-16-s0-search-solution.json").read_text())
    assert [r["run"] for r in three["runs"]] == [f"eff5-{k}-16-s0" for k in ("search", "solution-only", "shuffled")]
    assert [r["run"] for r in two["runs"]] == [f"eff5-{k}-16-s0" for k in ("search", "solution-only")]
    for seed in (0, 1):  # no shuffled-trace control at 8: the pair alone
        pair = json.loads((results / f"compare-8-s{seed}.json").read_text())
        assert [r["run"] for r in pair["runs"]] == [f"eff5-{k}-8-s{seed}" for k in ("search", "solution-only")]
        assert all(r["selected"]["plan_loss"] > 0 for r in pair["runs"])  # what selected each, from validation
    for kind in ("search", "solution-only"):  # the second seed against the first, paired on the same tasks
        seeds = json.loads((results / f"compare-seeds-decoder-{kind}-8-s1.json").read_text())
        assert [r["run"] for r in seeds["runs"]] == [f"eff5-{kind}-8-s{seed}" for seed in (0, 1)]
        assert "optimal_pct_diff_se" in seeds["runs"][1]
    bootstrap = json.loads((results / "bootstrap.json").read_text())
    assert "eff5-search-16-s0-control-1" in json.dumps(bootstrap)
    step1 = next(r for r in bootstrap["runs"] if r["run"] == "eff5-search-16-s0-boot-1")
    data = step1["data"]  # what the step trained on, in the results file: shrinkage and the training-task solve rate
    assert data["sampled_run"] == "eff5-search-16-s0" and data["sequences"] == 16 and 0 <= data["shorter"] <= 16
    assert data["train_optimal_pct"] is not None and data["trace_len_after"] >= 0
    for png in ("efficiency.png", "bootstrap.png"):
        assert (results / png).stat().st_size > 0

    # a second launch finds every stage done
    out = launch(results)
    started = [line for line in out.splitlines() if line.startswith("=== ") and not line.endswith("] done")]
    assert stages(results) == done and not started, out[-2000:]

    # every model stage and bootstrapping or control evaluation left its run's record
    runs = models + ["eff5-search-16-s0-boot-1", "eff5-search-16-s0-control-1"]
    assert sorted(p.stem for p in (results / "runs").glob("*.json")) == sorted(runs)

    # a model the database lost without a record is trained again, and a bootstrapping chain is done
    # again from the first stage whose run was lost (the later stages built on it); the others stay done
    for lost in ("eff5-solution-only-8-s0", "eff5-search-16-s0-boot-1"):
        run_cli("admin.py", "drop-run", "--run-id", lost)
        (results / "runs" / f"{lost}.json").unlink()
    out = launch(results)
    started = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("=== [")]
    assert started == ["model eff5-solution-only-8-s0", *boot[1:], "done"], out[-3000:]
    assert "=== fine-tune eff5-search-16-s0-control-1: recorded, but run eff5-search-16-s0-boot-1 is not" in out
    assert sorted(stages(results)) == sorted(done)
    for run in ("eff5-solution-only-8-s0", "eff5-search-16-s0-boot-1"):
        run_cli("admin.py", "show", run)
    assert sorted(p.stem for p in (results / "runs").glob("*.json")) == sorted(runs)

    # runs lost with their records kept (a fresh database, the datasets made again) come back from the
    # records: nothing is trained, and the reports say the same; the bootstrapping chain's base model and
    # runs too, as no stage of the chain is left to need their checkpoints
    lost = ["eff5-solution-only-16-s0", "eff5-search-16-s0", "eff5-search-16-s0-control-1"]
    shown = {run: run_cli("admin.py", "show", run).stdout for run in lost}
    reports = {name: (results / name).read_text() for name in ("compare-16-s0.json", "bootstrap.json")}
    for run in lost:
        run_cli("admin.py", "drop-run", "--run-id", run)
    out = launch(results)
    started = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("=== [")]
    assert started == ["done"], out[-3000:]
    for run in lost:
        assert f"=== run {run} was not in the database: restored from its record" in out
        assert run_cli("admin.py", "show", run).stdout == shown[run]
    assert {name: (results / name).read_text() for name in reports} == reports  # written again, the same

    # a fresh database: the datasets are made again and the claim (a) models restored from their
    # records; the bootstrapping dataset is gone, so the chain is done again, and its base model,
    # whose checkpoint it starts from, trained again
    shown = run_cli("admin.py", "show", "eff5-search-8-s1").stdout
    reports = (results / "compare-8-s0.json").read_text()
    from store import connect
    db = connect().db
    db.client.drop_database(db.name)
    out = launch(results)
    started = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("=== [")]
    assert started == [done[0], "model eff5-search-16-s0", *boot, "done"], out[-3000:]
    assert run_cli("admin.py", "show", "eff5-search-8-s1").stdout == shown
    assert (results / "compare-8-s0.json").read_text() == reports


def test_both_architectures_are_trained_and_compared_at_equal_tasks(env, tmp_path):
    """ARCHS="decoder encdec": each kind of each architecture at each count, kind by kind with the two in
    turn, the encoder-decoder's runs named -encdec- and plotted apart, and the two compared at equal tasks."""
    results = tmp_path / "results"
    launch(results, ARCHS="decoder encdec", COUNTS="8", KINDS="solution-only search", EXTRA_SEEDS="", BOOT_STEPS="0")
    assert stages(results)[1:] == ["model eff5-solution-only-8-s0", "model eff5-encdec-solution-only-8-s0",
                                   "model eff5-search-8-s0", "model eff5-encdec-search-8-s0"]
    assert run_cli("admin.py", "show", "eff5-encdec-search-8-s0").stdout.count("encdec") >= 1
    for arch, run in (("", "eff5-search-8-s0"), ("-encdec", "eff5-encdec-search-8-s0")):
        table = json.loads((results / f"efficiency{arch}.json").read_text())
        assert [r["run"] for r in table["runs"]][-1] == run
    pair = json.loads((results / "compare-arch-search-8-s0.json").read_text())
    assert [r["run"] for r in pair["runs"]] == ["eff5-search-8-s0", "eff5-encdec-search-8-s0"]
    assert "optimal_pct_diff" in pair["runs"][1]


@pytest.mark.parametrize("schedule", ["cooldown", "second"])
def test_the_schedules_end_training_from_the_selected_step(env, tmp_path, schedule):
    """SCHEDULE cooldown: <id>-p trained to its patience stop, then <id> from its best checkpoint, the LR
    it had there decayed to the floor (warm-up 0); second: a fresh <id> whose cosine ends at <id>-p's best
    step. The reported run is <id> either way."""
    results = tmp_path / "results"
    launch(results, ARCHS="decoder", COUNTS="8", KINDS="search", EXTRA_SEEDS="", BOOT_STEPS="0", SCHEDULE=schedule)
    assert stages(results)[1:] == ["model eff5-search-8-s0"]
    from store import connect
    from hparams import TrainConfig
    store = connect()
    first, run = store.get_run("eff5-search-8-s0-p"), store.get_run("eff5-search-8-s0")
    best = first["best"]["step"]
    cfg = run["config"]
    if schedule == "cooldown":
        lr = TrainConfig.from_stored(first["config"]).lr_at(best)
        assert cfg["start_checkpoint"] == "eff5-search-8-s0-p" and cfg["start_from"] == "best"
        assert cfg["warmup_steps"] == 0 and cfg["lr"] == pytest.approx(lr) and cfg["train_steps"] == 200
        floor = first["config"]["lr"] * first["config"]["min_lr_ratio"]  # the schedule's floor, or lr when below it
        assert cfg["lr"] * cfg["min_lr_ratio"] == pytest.approx(min(lr, floor))
    else:
        assert not cfg["start_checkpoint"] and cfg["train_steps"] == best and cfg["lr"] == first["config"]["lr"]
    table = json.loads((results / "efficiency.json").read_text())
    assert [r["run"] for r in table["runs"]] == ["eff5-search-8-s0"]
    if schedule == "cooldown":  # what it cost counts the patience run it started from
        assert table["runs"][0]["steps_trained"] == first["step"] + run["step"]
        # the docs' table of the models, from the results folder alone: both runs' stops, the test rate
        rows = run_cli("experiments/models_table.py", str(results)).stdout.splitlines()
        assert len(rows) == 3 and rows[2].startswith("| decoder-only search-augmented, 8 tasks |"), rows
        cells = [c.strip() for c in rows[2].split("|")[1:-1]]
        assert cells[1].startswith(f"{best:,} of {first['step']:,} (") and \
            cells[2].startswith(f"{run['best']['step']:,} of {run['step']:,} (")
        r = table["runs"][0]
        assert cells[3] == (f"{r['optimal_pct']:.1f} ± {r['optimal_pct_se']:.1f}" if r["optimal"] else
                            f"0 of 4 (95% upper bound {r['optimal_pct_upper95']:.1f})")
        assert cells[4] == f"{r['steps_trained']:,}"
    assert sorted(p.stem for p in (results / "runs").glob("*.json")) == ["eff5-search-8-s0", "eff5-search-8-s0-p"]

    # a fresh database: the reported run comes back from its record (the run it started from need not)
    shown = run_cli("admin.py", "show", "eff5-search-8-s0").stdout
    store.db.client.drop_database(store.db.name)
    out = launch(results, ARCHS="decoder", COUNTS="8", KINDS="search", EXTRA_SEEDS="", BOOT_STEPS="0", SCHEDULE=schedule)
    started = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("=== [")]
    data = "data maze.5-by-5-deterministic.simple and shuffled.maze.5-by-5-deterministic.simple"
    assert started == [data, "done (BOOT_STEPS=0: no bootstrapping)"], out[-3000:]  # trains nothing
    assert run_cli("admin.py", "show", "eff5-search-8-s0").stdout == shown
    assert json.loads((results / "efficiency.json").read_text()) == table


PILOT = ROOT / "experiments" / "schedule_pilot.sh"
PILOT_TOY = {"SIZE": "5", "MODEL": "tiny", "COUNT": "8", "KINDS": "search", "PATIENCE": "1", "EVAL_EVERY": "4",
             "MAX_STEPS": "8", "BATCH": "4", "VAL_TASKS": "4", "TEST_TASKS": "4", "SAMPLES": "2", "NPROC": "1",
             "NUM_TRAIN": "16", "PREFIX": "eff5"}


def test_the_schedule_pilot_runs_its_three_candidates_and_resumes_on_a_fresh_database(env, tmp_path):
    """schedule_pilot.sh: patience, a cooldown from its best and a second pass ending there, each selected
    on validation and evaluated, compared in one file; on a fresh database (a new machine) a relaunch
    makes the dataset again, restores every run from its record, trains nothing and writes the same file."""
    results = tmp_path / "results"

    def pilot():
        r = subprocess.run(["bash", str(PILOT)], capture_output=True, text=True, timeout=1800,
                           env={**os.environ, **PILOT_TOY, "PY": sys.executable, "RESULTS": str(results)})
        assert r.returncode == 0, f"schedule_pilot.sh exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return [line.split("] ", 1)[1] for line in r.stdout.splitlines() if line.startswith("=== [")]

    started = pilot()
    runs = [f"eff5-pilot-search-8-s0-{r}" for r in ("patience", "cooldown", "second")]
    assert started == ["data maze.5-by-5-deterministic.simple"] + [f"{s} {r}" for r in runs for s in ("pilot", "evaluate")]
    table = json.loads((results / "pilot-search-8-s0.json").read_text())
    assert [r["run"] for r in table["runs"]] == runs and all(r["selected"] for r in table["runs"])
    assert sorted(p.stem for p in (results / "runs").glob("*.json")) == sorted(runs)
    from store import connect
    db = connect().db
    db.client.drop_database(db.name)
    assert pilot() == ["data maze.5-by-5-deterministic.simple"]
    assert json.loads((results / "pilot-search-8-s0.json").read_text()) == table


def test_same_records_tells_a_reproduced_stage_from_one_that_differs(tmp_path):
    """experiments/same_records.py: two copies of a committed record that differ only in what the clock
    decides are identical; one changed validation rate or loss is named, and the exit status says so."""
    src = ROOT / "experiments" / "results" / "eff6v2" / "runs" / "eff6v2-solution-only-2000-s0-p.json"
    record = json.loads(src.read_text())
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "runs").mkdir(parents=True)
    (a / "runs" / src.name).write_text(json.dumps(record))
    record["run"]["updated"] = {"$date": "2030-01-01T00:00:00+00:00"}
    for log in record["logs"]:
        log["time"], log["tokens_per_s"] = {"$date": "2030-01-01T00:00:00+00:00"}, 1.0
    (b / "runs" / src.name).write_text(json.dumps(record))
    script = ROOT / "experiments" / "same_records.py"
    r = run_cli(script, a, b)
    assert r.stdout.strip() == "eff6v2-solution-only-2000-s0-p: identical"
    test = next(i for i, log in enumerate(record["logs"]) if log["split"] == "test")
    record["logs"][test]["rollout_optimal_pct"] += 1 / 3
    (b / "runs" / src.name).write_text(json.dumps(record))
    r = run_cli(script, a, b, check=False)
    assert r.returncode == 1 and f".logs[{test}].rollout_optimal_pct:" in r.stdout
    r = run_cli(script, a, tmp_path, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "share no run record" in r.stderr


def test_same_records_pairs_two_runs_under_other_ids(tmp_path):
    """--pair A=B: a run copied under another id, with another configuration and one more evaluation,
    computed the same; one changed per-task result is named; a malformed pair is one line and exit 2."""
    src = ROOT / "experiments" / "results" / "eff6v2" / "runs" / "eff6v2-search-1000-s0.json"
    record = json.loads(src.read_text())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text(json.dumps(record))
    record["run_id"] = record["run"]["_id"] = "b"
    record["run"]["config"]["test_name"] = "added later"
    for row in record["logs"] + record["results"]:
        row["run_id"] = "b"
    record["results"].append({**record["results"][0], "pkey": "another evaluation", "optimal_by_task": {}})
    (tmp_path / "runs" / "b.json").write_text(json.dumps(record))
    script = ROOT / "experiments" / "same_records.py"
    assert run_cli(script, tmp_path, tmp_path, "--pair", "a=b").stdout.strip() == "b: identical"
    record["results"][0]["optimal_by_task"]["rows"][0] += 1
    (tmp_path / "runs" / "b.json").write_text(json.dumps(record))
    r = run_cli(script, tmp_path, tmp_path, "--pair", "a=b", check=False)
    assert r.returncode == 1 and ".optimal_by_task.rows[0]:" in r.stdout
    r = run_cli(script, tmp_path, tmp_path, "--pair", "a", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "RECORDED=RERUN" in r.stderr
    (tmp_path / "runs" / "b.json").write_text("{")  # a truncated record: one line, no traceback
    r = run_cli(script, tmp_path, tmp_path, "--pair", "a=b", check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "b.json" in r.stderr


def test_a_stage_resumed_in_a_later_sitting_records_every_commit_it_ran_at(tmp_path):
    """experiments/stages.sh: a stage interrupted under one commit and finished under another lists both
    in stages.tsv (its launches in stage-launches.tsv); a stage launched once lists its one commit."""
    script = f"""set -e; PY={sys.executable}; RESULTS={tmp_path}; NPROC=1; cd {ROOT}; source experiments/stages.sh
printf 'model a\\t2026-01-01T00:00:00Z\\tabc1234\\n' >> "$LAUNCHES"   # an earlier sitting, stopped part way
stage "model a" true; stage "model b" true; stage "model b" false; commit"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    now = r.stdout.split()[-1]
    rows = [line.split("\t") for line in (tmp_path / "stages.tsv").read_text().splitlines()[1:]]
    assert [(row[0], row[3]) for row in rows] == [("model a", f"abc1234+{now}"), ("model b", now)]


def test_the_plan_lists_the_models_in_training_order_and_touches_nothing(tmp_path):
    """PLAN=1: count by count, kind by kind with the architectures in turn, the shuffled-trace control at
    its counts alone and the second seed right after its count; no results folder, no database."""
    results = tmp_path / "results"
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **TOY, "PY": sys.executable, "RESULTS": str(results), "PLAN": "1",
                            "COUNTS": "16 8 4", "EXTRA_COUNTS": "8", "ARCHS": "decoder encdec",
                            "KINDS": "solution-only search shuffled", "MONGODB_URI": "mongodb://127.0.0.1:1/none"})
    assert r.returncode == 0, r.stderr
    both = lambda kinds, count, seed: [f"{k} {count} {seed} {a}" for k in kinds for a in ("decoder", "encdec")]
    main = ("solution-only", "search")
    assert r.stdout.splitlines() == both((*main, "shuffled"), 16, 0) + both(main, 8, 0) + both(main, 8, 1) + \
        both(main, 4, 0)
    assert not results.exists()


def test_the_comparisons_table_names_each_paired_difference_once(tmp_path):
    """experiments/models_table.py --comparisons: a row per pair in the compare files, named from the
    efficiency files (kinds within an architecture, then the architectures, then the seeds, count by count),
    a pair found in two files printed once, Δ / se computed from the file."""
    def run(name, arch, kind, count, seed):
        return {"run": name, "arch": arch, "kind": kind, "train_tasks": count, "seed": seed}
    meta = [run("s8", "decoder", "search-augmented", 8, 0), run("o8", "decoder", "solution-only", 8, 0),
            run("o8b", "decoder", "solution-only", 8, 1), run("s4", "decoder", "search-augmented", 4, 0),
            run("e8", "encdec", "search-augmented", 8, 0)]
    (tmp_path / "efficiency.json").write_text(json.dumps({"evaluation": {}, "runs": meta[:4]}))
    (tmp_path / "efficiency-encdec.json").write_text(json.dumps({"evaluation": {}, "runs": meta[4:]}))
    pair = lambda a, b, diff, se: {"runs": [{"run": a}, {"run": b, "optimal_pct_diff": diff, "optimal_pct_diff_se": se}]}
    files = {"compare-8-s0.json": pair("s8", "o8", 3.0, 2.0), "compare-8-s0-search-solution.json": pair("s8", "o8", 3.0, 2.0),
             "compare-arch-search-8-s0.json": pair("s8", "e8", -1.5, 0.5),
             "compare-seeds-decoder-solution-only-8-s1.json": pair("o8", "o8b", 0.0, 1.0)}
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    out = run_cli("experiments/models_table.py", str(tmp_path), "--comparisons").stdout.splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out[2:]]
    assert [row[:4] for row in cells] == [
        ["8", "decoder-only: solution-only − search-augmented", "+3.0 ± 2.0", "+1.5"],
        ["8", "search-augmented: encoder-decoder − decoder-only", "−1.5 ± 0.5", "−3.0"],
        ["8", "decoder-only solution-only: seed 1 − seed 0", "+0.0 ± 1.0", "+0.0"]]
    (tmp_path / "compare-4-s0.json").write_text(json.dumps(pair("s4", "gone", 1.0, 1.0)))  # a run no efficiency file has
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "models_table.py"), str(tmp_path), "--comparisons"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "compare-4-s0.json" in r.stderr
    (tmp_path / "compare-4-s0.json").write_text("{")  # a truncated file: one line, no traceback
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "models_table.py"), str(tmp_path), "--comparisons"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "compare-4-s0.json" in r.stderr


def test_claim_a_adds_the_training_randomness_the_seed_pairs_measure(tmp_path):
    """experiments/models_table.py --claim-a, against a hand computation: a seed pair's difference d (se)
    gives (d² − se²) / 2, and σ² is their mean at its count, floored at 0; a count's claim (a) is the mean over its
    seeds, its test-task error their mean se and its full error hypot(that, √(2σ² / seeds)); a count
    without seed pairs takes σ from all of them, marked assumed; the search-first order is read either way."""
    def run(name, kind, count, seed):
        return {"run": name, "arch": "decoder", "kind": kind, "train_tasks": count, "seed": seed}
    kinds = {"s": "search-augmented", "o": "solution-only"}
    meta = [run(f"{k}{c}-{s}", kinds[k], c, s) for k in "so" for c, seeds in ((10, (0, 1)), (20, (0,)), (30, (0, 1)))
            for s in seeds]
    (tmp_path / "efficiency.json").write_text(json.dumps({"evaluation": {}, "runs": meta}))
    pair = lambda a, b, diff, se: {"runs": [{"run": a}, {"run": b, "optimal_pct_diff": diff, "optimal_pct_diff_se": se}]}
    files = {"compare-10-s0.json": pair("s10-0", "o10-0", 3.0, 1.0),
             "compare-10-s1.json": pair("o10-1", "s10-1", -1.0, 2.0),  # solution-only first: Δ read as +1.0
             "compare-seeds-decoder-solution-only-10-s1.json": pair("o10-0", "o10-1", 5.0, 3.0),  # (25 − 9) / 2 = 8
             "compare-seeds-decoder-search-10-s1.json": pair("s10-0", "s10-1", -2.0, 2.0),  # (4 − 4) / 2 = 0
             "compare-20-s0.json": pair("s20-0", "o20-0", 6.0, 2.0),
             "compare-30-s0.json": pair("s30-0", "o30-0", 4.0, 2.0),
             "compare-seeds-decoder-solution-only-30-s1.json": pair("o30-0", "o30-1", 1.0, 3.0)}  # (1 − 9) / 2 = −4
    for name, doc in files.items():
        (tmp_path / name).write_text(json.dumps(doc))
    out = run_cli("experiments/models_table.py", str(tmp_path), "--claim-a").stdout.splitlines()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out[2:]]
    # 10: σ² = (8 + 0) / 2 = 4, Δ = (3 + 1) / 2, se_test = 1.5, full √(2.25 + 2·4/2) = 2.5
    # 20: σ² = (8 + 0 − 4) / 3 from all pairs, √(4 + 2·4/3) ≈ 2.58; 30: σ² = −4 floored to 0, full = 2.0
    assert cells == [["10", "decoder-only", "0, 1", "+2.0", "1.5", "2.0", "2.5", "+0.8"],
                     ["20", "decoder-only", "0", "+6.0", "2.0", "1.2 (assumed)", "2.6", "+2.3"],
                     ["30", "decoder-only", "0", "+4.0", "2.0", "0.0", "2.0", "+2.0"]]


def test_from_prefix_continues_each_model_from_the_earlier_prefix_as_a_fresh_launch_would(env, tmp_path):
    """FROM_PREFIX with a raised PATIENCE: each model's first run is copied from the earlier prefix's and
    continued; the models end as those of a fresh launch with that PATIENCE (resumes are exact)."""
    one = {"ARCHS": "decoder", "COUNTS": "8", "KINDS": "solution-only", "EXTRA_SEEDS": "", "BOOT_STEPS": "0",
           "SCHEDULE": "cooldown", "MAX_STEPS": "16"}
    launch(tmp_path / "a", **one, PREFIX="effa", PATIENCE="1")
    launch(tmp_path / "b", **one, PREFIX="effb", PATIENCE="2", FROM_PREFIX="effa")
    launch(tmp_path / "c", **one, PREFIX="effc", PATIENCE="2")
    from store import connect
    store = connect()
    assert store.get_run("effb-solution-only-8-s0-p")["copied_from"]["run_id"] == "effa-solution-only-8-s0-p"
    assert "copied_from" not in store.get_run("effc-solution-only-8-s0-p")
    timing = lambda k: k in ("run_id", "time") or k.endswith("_s") or "second" in k  # noqa: E731
    logs = lambda rid: [{k: v for k, v in d.items() if not timing(k)} for d in store.get_logs(rid)]  # noqa: E731
    for suffix in ("-p", ""):
        assert logs(f"effb-solution-only-8-s0{suffix}") == logs(f"effc-solution-only-8-s0{suffix}")
    b, c = (json.loads((tmp_path / x / "efficiency.json").read_text())["runs"][0] for x in "bc")
    assert b["optimal_pct"] == c["optimal_pct"] and b["step"] == c["step"]
