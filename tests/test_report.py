"""report.py: each plot rendered from a tiny trained and evaluated run is a valid, non-trivial PNG;
the comparisons of runs on hand-made evaluations written into the database; bad input gets a
one-line error and writes nothing."""
import datetime
import json

import matplotlib.image
import numpy as np
import pytest

import dataset as data
import metrics
import report
import rollouts
from bootstrap import write_bootstrap
from eval import response_key, store_responses
from conftest import call, run_cli
from hparams import TrainConfig

MAZE = "maze.10-by-10-deterministic.simple"
TRAIN = ["--train-name", MAZE, "--model-size", "tiny", "--warmup-steps", "2", "--lr", "1e-3", "--log-interval", "2",
         "--eval-interval", "4", "--checkpoint-interval", "4", "--num-test-sequences", "8", "--batch-size", "4",
         "--train-steps", "8"]


def assert_real_png(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    pixels = matplotlib.image.imread(path)  # rows x columns x RGBA in [0, 1]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20  # lines, bars, text in several colours


@pytest.fixture
def evaluated(store):
    """A tiny model trained 8 steps on 10x10 mazes and evaluated on 4 test tasks, two of which hold a
    planted A* response (as if the model had sampled it: optimal, with A*'s trace length)."""
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "8", "--chunk", "2", "--workers", "1")
    run_cli("train.py", "single", "--run-id", "tiny", *TRAIN)
    test = data.load_split(store.db, MAZE, "test")
    key = response_key("tiny", 8, data.get_dataset(store.db, MAZE), "test", rollouts.Opts(temperature=1.0, max_tokens=150))
    planted = [((row, 0), np.concatenate([test.get(row, "trace"), test.get(row, "plan")]), True) for row in (0, 3)]
    store_responses(store.db, key, test, planted)
    run_cli("eval.py", "--run-id", "tiny", "--num-tasks", "4", "--samples", "2", "--max-tokens", "150")
    return test


def test_each_plot_is_a_valid_non_trivial_png(store, evaluated, tmp_path):
    res = store.results.find_one({"run_id": "tiny"})
    assert sorted(res["optimal_trace_lens"]) == sorted(int(evaluated.lens["trace"][r]) for r in (0, 3))
    assert res["metrics"]["optimal_pct"] == 50.0
    by = res["optimal_by_task"]  # the planted tasks, with their traces and t* (here the stored trace)
    assert by["rows"] == [0, 3] and by["trace"] == by["astar"] == [float(evaluated.lens["trace"][r]) for r in (0, 3)]
    assert by["tasks"] == metrics.new_by_task(evaluated, range(4))["tasks"] != metrics.new_by_task(evaluated, [0, 1])["tasks"]
    train = data.load_split(store.db, MAZE, "train")  # a bootstrapped dataset's copied test split names the same tasks
    write_bootstrap(store.db, "boot", data.get_dataset(store.db, MAZE), MAZE, train, range(4), {}, {}, False)
    assert metrics.new_by_task(data.load_split(store.db, "boot", "test"), range(4))["tasks"] == by["tasks"]
    for argv in (["loss", "--run-id", "tiny"],
                 ["traces", "--dataset", MAZE, "--run-id", "tiny"],
                 ["metrics", "--run-id", "tiny"]):
        out = tmp_path / f"{argv[0]}.png"
        code, stdout, err = call(report.main, *argv, "--out", out)
        assert code == 0, err
        assert f"wrote {out}" in stdout
        assert_real_png(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    # the trace diagnostics: the planted A* responses are optimal, all legal A* steps and A*'s trace
    d = res["diagnostics"]
    assert d["failure_pct"]["optimal"] == 50.0 and sum(d["failure_pct"].values()) == pytest.approx(100)
    assert d["trace_valid"] >= 2 / 8 and d["trace_agreement"] >= 2 / 8 and d["valid_trace_pct"] >= 100 * 2 / 8
    # a task drawn alone, then with the planted response beside it (sample 0 of task 0)
    task = int(evaluated.ids[0])
    for extra in ([], ["--run-id", "tiny"]):
        out = tmp_path / f"task{len(extra)}.png"
        code, stdout, err = call(report.main, "task", "--dataset", MAZE, "--id", task, *extra, "--out", out)
        assert code == 0 and f"wrote {out}" in stdout, err
        assert_real_png(out)


SOKOBAN = "sokoban.7-by-7-walls-2-boxes-2"


def test_a_sokoban_task_drawn_with_a_fresh_greedy_response_and_bad_input(store, tmp_path):
    run_cli("data.py", "sokoban", "--num-train", "12", "--num-test", "4", "--max-trace-tokens", "1500", "--workers", "1")
    run_cli("train.py", "single", "--run-id", "soko", *TRAIN, "--train-name", SOKOBAN, "--train-steps", "2")
    for extra in ([], ["--run-id", "soko", "--max-tokens", "60"]):  # nothing stored: a fresh greedy response
        out = tmp_path / f"soko{len(extra)}.png"
        code, stdout, err = call(report.main, "task", "--dataset", SOKOBAN, "--id", 1, *extra, "--out", out)
        assert code == 0 and f"wrote {out}" in stdout, err
        assert_real_png(out)
    for argv, msg in ((["--dataset", "nope", "--id", "0"], "dataset 'nope' does not exist"),
                      (["--dataset", SOKOBAN, "--id", "99"], "has no test task 99 (ids 0..3)"),
                      (["--dataset", SOKOBAN, "--id", "0", "--run-id", "nope"], "no run with id 'nope'"),
                      (["--dataset", SOKOBAN, "--id", "0", "--run-id", "soko", "--split", "train", "--sample", "-1"],
                       "--sample must not be negative"),
                      (["--dataset", SOKOBAN, "--id", "0", "--run-id", "soko", "--checkpoint", "best"],
                       "run 'soko' has no best checkpoint")):
        out = tmp_path / "bad.png"
        code, _, err = call(report.main, "task", *argv, "--out", out)
        assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not out.exists()


def test_a_run_trained_on_another_dataset_is_refused(store, tmp_path):
    run_cli("data.py", "maze", "--size", "10", "--num-train", "4", "--num-test", "2", "--workers", "1")
    store.runs.insert_one({"_id": "other", "config": {"train_name": SOKOBAN, "test_name": None}, "status": "finished",
                           "step": 0, "lease": None, "error": None})
    code, _, err = call(report.main, "task", "--dataset", MAZE, "--id", "0", "--run-id", "other", "--out",
                        tmp_path / "t.png")
    assert code == 1 and f"samples its test tasks from dataset '{SOKOBAN}', not '{MAZE}'" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "t.png").exists()


def test_bootstrap_without_a_common_task_reports_optimal_pct_only(store, tmp_path):
    add_dataset(store, "plain")
    add_run(store, "a", [0, 1])
    add_run(store, "none", [5])
    out, js = tmp_path / "boot.png", tmp_path / "boot.json"
    code, _, err = call(report.main, "bootstrap", "--run-id", "a", "--run-id", "none", "--out", out, "--json", js)
    assert code == 0 and "trace/A* is not compared" in err, err
    assert_real_png(out)
    doc = json.loads(js.read_text())
    assert doc["common_tasks"] == 0 and [r["trace_ratio"] for r in doc["runs"]] == [None, None]
    assert doc["runs"][1]["optimal_pct_diff"] == pytest.approx(-10)  # 1 of 10 tasks against 2 of 10


@pytest.mark.parametrize("argv, msg", [
    (["loss", "--run-id", "nope"], "no run with id 'nope'"),
    (["metrics", "--run-id", "bare"], "run 'bare' has no evaluation on the test split"),
    (["traces", "--run-id", "bare"], "run 'bare' has no evaluation on the test split"),
    (["loss", "--run-id", "bare"], "run 'bare' has no logs yet"),
    (["traces", "--dataset", "nope"], "dataset 'nope' does not exist"),
    (["traces"], "nothing to plot"),
    (["traces", "--dataset", "nope", "--first", "-1"], "--first must not be negative"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/missing/plot.png"], "missing does not exist"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/file.txt/plot.png"], "file.txt is not a folder"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/plot.jpg"], "must name a .png file"),
])
def test_bad_input_gives_one_line_errors_and_writes_nothing(store, tmp_path, argv, msg):
    store.runs.insert_one({"_id": "bare", "config": {}, "status": "running", "step": 0, "lease": None, "error": None})
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    (tmp_path / "file.txt").write_text("x")
    if "--out" not in argv:
        argv = argv + ["--out", "{tmp}/plot.png"]
    code, _, err = call(report.main, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# --- comparisons of runs on hand-made evaluations -----------------------------------------------

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)


def add_dataset(store, name, train=1000, **params):
    store.db.datasets.insert_one({"_id": name, "uid": "u1", "task": "maze", "params": {"n": 10, **params},
                                  "vocabulary": [], "counts": {"train": train, "test": 10}})


def add_run(store, run_id, solved, trace=None, train_name="plain", num_train=0, seed=0, plan_only=False, step=100,
            wall_s=600, tokens=(1000, 2000), checkpoint=None, tasks="d1", time=T0):
    """A run trained to step 100 (train logs at 50 and 100 with their loss tokens) and its evaluation
    on 10 test tasks solving `solved` optimally with traces `trace` (t* = 100 each)."""
    cfg = TrainConfig(train_name=train_name, num_train_sequences=num_train, seed=seed, plan_only=plan_only).to_dict()
    if not store.runs.find_one({"_id": run_id}):
        store.runs.insert_one({"_id": run_id, "config": cfg, "status": "finished", "step": 100, "lease": None,
                               "error": None, "created": T0})
        for s, n in zip((50, 100), tokens):
            store.log(run_id, s, "train", {"loss": 1.0, "tokens": n})
        store.runs.update_one({"_id": run_id}, {"$set": {"updated": T0 + datetime.timedelta(seconds=wall_s)}})
    trace = trace or [0.0 if plan_only else 50.0] * len(solved)
    params = {"dataset": "plain", "split": "test", "num_tasks": 10, "samples": 4, "temperature": 1.0,
              "max_tokens": 150, "seed": 0, **({"checkpoint": checkpoint} if checkpoint else {})}
    m = {"tasks": 10, "optimal_pct": 10.0 * len(solved), **({} if plan_only else {"trace_ratio": 0.5})}
    store.results.insert_one({"run_id": run_id, "step": step, "params": params, "metrics": m, "time": time,
                              "optimal_by_task": {"tasks": tasks, "rows": list(solved), "trace": trace,
                                                  "astar": [100.0] * len(solved)}})


def test_efficiency_groups_runs_by_kind_and_training_tasks(store, tmp_path):
    add_dataset(store, "plain")
    add_dataset(store, "shuffled", shuffled_traces={"source": "plain", "seed": 1})
    later = T0 + datetime.timedelta(hours=1)
    add_run(store, "s100a", range(4), num_train=100, step=80, checkpoint="best")
    add_run(store, "s100a", range(9), num_train=100, checkpoint="latest", time=later)  # newer, but not the best
    add_run(store, "s100b", range(6), num_train=100, seed=1)
    add_run(store, "s1000", range(8), wall_s=900)  # num_train_sequences 0: the dataset's 1000
    add_run(store, "p100", range(2), num_train=100, plan_only=True)
    add_run(store, "x100", range(3), num_train=100, train_name="shuffled")
    out, js = tmp_path / "eff.png", tmp_path / "eff.json"
    code, stdout, err = call(report.main, "efficiency", *[a for r in ("s100a", "s100b", "s1000", "p100", "x100")
                                                          for a in ("--run-id", r)], "--out", out, "--json", js)
    assert code == 0, err
    assert_real_png(out)
    doc = json.loads(js.read_text())
    assert doc["evaluation"]["checkpoint"] == "mixed" and "s100a" in stdout
    runs = {r["run"]: r for r in doc["runs"]}
    assert runs["s100a"]["step"] == 80 and runs["s100a"]["checkpoint"] == "best" and runs["s100a"]["optimal_pct"] == 40
    assert runs["s100a"]["tokens_at_eval"] == 1000 and runs["s100a"]["tokens"] == 3000
    assert runs["s1000"]["wall_s"] == 900 and runs["s1000"]["steps_trained"] == 100 and runs["s1000"]["seed"] == 0
    assert {r["arch"] for r in doc["runs"]} == {"decoder"}  # a run stored before --arch existed: decoder-only
    assert {r: runs[r]["kind"] for r in runs} == {"s100a": "search-augmented", "s100b": "search-augmented",
                                                 "s1000": "search-augmented", "p100": "solution-only",
                                                 "x100": "shuffled-trace"}
    points = {(p["kind"], p["train_tasks"]): p for p in doc["points"]}
    assert sorted(points) == [("search-augmented", 100), ("search-augmented", 1000), ("shuffled-trace", 100),
                              ("solution-only", 100)]
    seeds = points[("search-augmented", 100)]  # two seeds: their spread and the runs' own error, combined
    assert seeds["runs"] == ["s100a", "s100b"] and seeds["error"] == "seeds and binomial"
    own = np.mean([runs[r]["optimal_pct_se"] for r in ("s100a", "s100b")])
    spread = np.std([40, 60], ddof=1) / np.sqrt(2)
    assert seeds["optimal_pct"] == 50 and seeds["optimal_pct_se"] == pytest.approx(np.sqrt(spread ** 2 + own ** 2))
    assert seeds["optimal_pct_se"] > max(spread, own)  # neither alone
    single = points[("solution-only", 100)]  # one run: the binomial error
    assert single["error"] == "binomial" and single["optimal_pct_se"] == pytest.approx(metrics.binomial_se(2, 10))


def test_bootstrap_and_compare_on_the_common_tasks(store, tmp_path):
    add_dataset(store, "plain")
    add_run(store, "step0", [0, 1, 2, 3], [80.0, 80.0, 80.0, 80.0])
    add_run(store, "step1", [1, 2, 3, 4], [60.0, 60.0, 50.0, 10.0])
    add_run(store, "ctrl1", [1, 2, 3], [75.0, 80.0, 70.0])
    out, js = tmp_path / "boot.png", tmp_path / "boot.json"
    code, stdout, err = call(report.main, "bootstrap", "--run-id", "step0", "--run-id", "step1", "--control", "ctrl1",
                             "--out", out, "--json", js)
    assert code == 0, err
    assert_real_png(out)
    doc = json.loads(js.read_text())
    assert doc["common_tasks"] == 3  # tasks 1, 2, 3
    runs = {r["run"]: r for r in doc["runs"]}
    assert [(r["line"], r["bootstrap_step"]) for r in doc["runs"]] == [("bootstrap", 0), ("bootstrap", 1),
                                                                        ("control", 1)]
    assert runs["step1"]["trace_ratio"] == pytest.approx(170 / 300)
    assert runs["step1"]["trace_ratio_diff"] == pytest.approx(-70 / 300)  # from step 0
    assert runs["step1"]["control_trace_ratio_diff"] == pytest.approx((170 - 225) / 300)  # from the control
    assert runs["step1"]["control_optimal_pct_diff"] == pytest.approx(10)
    code, stdout, err = call(report.main, "compare", "--run-id", "ctrl1", "--run-id", "step1", "--json",
                             tmp_path / "cmp.json")
    assert code == 0, err
    assert "3 solved optimally by every run" in stdout and "-0.183" in stdout  # (170 - 225) / 300
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["runs"][1]["trace_ratio_diff"] == runs["step1"]["control_trace_ratio_diff"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boot.json", "boot.png", "cmp.json"]


@pytest.mark.parametrize("argv, msg", [
    (["efficiency", "--run-id", "a", "--run-id", "other"], "a and other were evaluated on different tasks"),
    (["bootstrap", "--run-id", "a", "--control", "other"], "a and other were evaluated on different tasks"),
    (["compare", "--run-id", "a", "--run-id", "old"], "old's evaluation at step 100 predates per-task results"),
    (["bootstrap", "--run-id", "a", "--run-id", "plan"], "run 'plan' is plan-only"),
    (["efficiency", "--run-id", "a", "--json", "{tmp}/eff.txt"], "--json '{tmp}/eff.txt' must name a .json file"),
])
def test_comparisons_refuse_unlike_runs_and_write_nothing(store, tmp_path, argv, msg):
    add_dataset(store, "plain")
    add_run(store, "a", [0, 1])
    add_run(store, "other", [0, 1], tasks="d2")
    add_run(store, "old", [0, 1])
    store.results.update_one({"run_id": "old"}, {"$unset": {"optimal_by_task": ""}})
    add_run(store, "plan", [0, 1], plan_only=True)
    add_run(store, "none", [5])
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--json" not in argv:
        argv += ["--json", f"{tmp_path}/figures.json"]
    if argv[0] != "compare":
        argv += ["--out", f"{tmp_path}/plot.png"]
    code, _, err = call(report.main, *argv)
    assert code == 1 and msg.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
