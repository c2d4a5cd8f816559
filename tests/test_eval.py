"""eval.py end to end on tiny mazes: sampling, stored responses, scoring, bootstrap, average; its
refusals."""
import json
import re

import numpy as np
import pytest

import dataset
import eval as ev
import metrics
import rollouts
from checkpoint_store import put_checkpoint
from conftest import run_cli


# --- end to end on tiny mazes -------------------------------------------------------------------

MAZE = "maze.10-by-10-deterministic.simple"
TRAIN = ["--train-name", MAZE, "--model-size", "tiny", "--warmup-steps", "2", "--lr", "1e-3", "--log-interval", "5",
         "--eval-interval", "5", "--checkpoint-interval", "5", "--num-test-sequences", "8", "--batch-size", "4"]


def test_sample_score_bootstrap_and_fine_tune_on_tiny_mazes(store):
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "8", "--chunk", "2", "--workers", "1")
    r = run_cli("train.py", "single", "--run-id", "base", *TRAIN, "--train-steps", "5", "--eval-tasks", "3")
    assert "optimal" in r.stdout and "of 3 tasks" in r.stdout
    assert store.get_logs("base", "test")[-1]["rollout_tasks"] == 3

    # plant two responses, as if an interrupted bootstrap had sampled them: for sequence 1 the A*
    # sequence with its last trace step cut (correct, optimal, shorter), for sequence 2 an empty
    # trace with a plan that stops one cell short of the goal (incorrect: ignored)
    train = dataset.load_split(store.db, MAZE, "train")
    doc = dataset.get_dataset(store.db, MAZE)
    opts = rollouts.Opts(temperature=1.0, max_tokens=200)
    key = ev.response_key("base", 5, doc, "train", opts)
    short = np.concatenate([train.get(1, "trace")[:-5], train.get(1, "plan")])
    wrong = train.get(2, "plan")[:-3]
    ev.store_responses(store.db, key, train, [((1, 0), short, True), ((2, 0), wrong, True)])

    # and for sequence 3 an optimal response whose trace is longer than A*'s (its last step repeated)
    longer = np.concatenate([train.get(3, "trace"), train.get(3, "trace")[-5:], train.get(3, "plan")])
    ev.store_responses(store.db, key, train, [((3, 0), longer, True)])

    r = run_cli("eval.py", "bootstrap", "--run-id", "base", "--num-tasks", "6", "--samples", "2",
                "--max-tokens", "200")
    assert "3 stored, 9 to generate" in r.stdout
    assert store.responses.count_documents({"run_id": "base"}) == 12
    r2 = run_cli("eval.py", "bootstrap", "--run-id", "base", "--num-tasks", "6", "--samples", "2",
                 "--max-tokens", "200", "--only-shorter", "--name", "bootstrap.base-shorter")
    assert "12 stored, 0 to generate" in r2.stdout
    for name, rule in (("bootstrap.base", "reference"), ("bootstrap.base-shorter", "only-shorter")):
        new = dataset.load_split(store.db, name, "train")
        assert len(new.ids) == 6 and len(dataset.load_split(store.db, name, "test").ids) == 8
        assert dataset.get_dataset(store.db, name)["params"]["bootstrap"]["rule"] == rule
        checker = metrics.Checker(dataset.get_dataset(store.db, name))
        for row in range(6):
            assert np.array_equal(new.get(row, "prompt"), train.get(row, "prompt"))
            verdict = checker.judge(checker.problem(new.get(row, "prompt")),
                                    np.concatenate([new.get(row, "trace"), new.get(row, "plan")]), True,
                                    metrics.optimal_moves(train, row))
            assert verdict.kind == "optimal" and verdict.trace_len == new.lens["trace"][row]
        assert new.lens["trace"][1] == train.lens["trace"][1] - 5  # the planted short response was kept
        # the longer optimal response replaces the A* sequence under the reference's rule only
        assert new.lens["trace"][3] == train.lens["trace"][3] + (5 if rule == "reference" else 0)
        if rule == "only-shorter":
            assert (new.lens["trace"] <= train.lens["trace"][:6]).all()
    # (an untrained model's samples hold no optimal plan: only the planted responses count)
    assert "6 train sequences, 2 replaced" in r.stdout and "(1 shorter than the original)" in r.stdout
    assert "6 train sequences, 1 replaced" in r2.stdout

    r = run_cli("train.py", "single", "--run-id", "step1", *TRAIN, "--train-name", "bootstrap.base", "--test-name", MAZE,
                "--start-checkpoint", "base", "--train-steps", "5")
    assert "initialised from base (latest checkpoint, step 5): weights and optimizer state" in r.stdout

    # evaluate, then again: the second run only reads stored responses
    args = ["eval.py", "--run-id", "step1", "--num-tasks", "4", "--samples", "2", "--max-tokens", "150"]
    first = run_cli(*args).stdout
    again = run_cli(*args).stdout
    assert "8 stored, 0 to generate" in again
    assert first.splitlines()[-1] == again.splitlines()[-1]  # same metrics
    assert "optimal %" in first and "ILR-solved" in first
    assert "traces: " in first and "tasks by their best response: optimal" in first  # the trace diagnostics
    summary = json.loads(run_cli(*args, "--json").stdout.splitlines()[-1])  # the summary as one JSON object
    assert summary["run_id"] == "step1" and summary["params"]["num_tasks"] == 4 and "optimal_pct" in summary["metrics"]
    assert set(summary["diagnostics"]) == {"failure_pct", "trace_valid", "valid_trace_pct", "trace_agreement"}
    assert sum(summary["diagnostics"]["failure_pct"].values()) == pytest.approx(100)
    assert store.results.count_documents({"run_id": "step1"}) == 1
    # the reference's checker beside the strict one: stored with the same result, shown in a second row
    out = run_cli(*args, "--scoring", "reference").stdout
    assert "8 stored, 0 to generate" in out and "step1 (reference scoring)" in out
    res = store.results.find_one({"run_id": "step1"})
    assert store.results.count_documents({"run_id": "step1"}) == 1 and set(res["reference_metrics"]) == set(res["metrics"])
    assert res["reference_metrics"]["correct_pct"] >= res["metrics"]["correct_pct"]
    # rollouts from a trace prefix are stored under their own key, each starting with that prefix
    test = dataset.load_split(store.db, MAZE, "test")
    out = run_cli("eval.py", "--run-id", "step1", "--num-tasks", "4", "--samples", "1", "--temperature", "0",
                  "--max-tokens", "150", "--prefix-len", "7").stdout
    assert "0 stored, 4 to generate" in out and "starting after 7 trace tokens" in out
    docs = list(store.responses.find({"run_id": "step1", "pkey": {"$regex": "prefix_len"}}))
    assert len(docs) == 4 and all(json.loads(d["pkey"])["prefix_len"] == 7 for d in docs)
    for d in docs:
        row = int(np.flatnonzero(test.ids == d["task"])[0])
        assert np.array_equal(np.frombuffer(d["tokens"], dataset.DTYPE)[:7], test.get(row, "trace")[:7])
    assert store.results.count_documents({"run_id": "step1"}) == 2
    assert "evaluations (eval.py)" in run_cli("admin.py", "show", "--run-id", "step1").stdout
    assert "opt %" in run_cli("admin.py", "list-all").stdout
    run_cli("admin.py", "drop-run", "--run-id", "step1")
    assert store.responses.count_documents({"run_id": "step1"}) == 0


def test_the_default_limit_follows_the_longest_stored_response_and_the_tail_is_shown(store):
    """Without --max-tokens a response stops at twice the longest stored response of the split (plan
    for a plan-only run, trace and plan otherwise) and its <eos>, never above the reference's limit,
    which --max-tokens reference gives; the progress line shows the rows still running and how far
    the furthest has come, not an estimate, when none waits."""
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "8", "--chunk", "2", "--workers", "1")
    run_cli("train.py", "single", "--run-id", "lim", *TRAIN, "--plan-only", "--train-steps", "1")
    test, doc = dataset.load_split(store.db, MAZE, "test"), dataset.get_dataset(store.db, MAZE)
    limit = 2 * int(test.lens["plan"].max()) + 1
    r = run_cli("eval.py", "--run-id", "lim", "--num-tasks", "2", "--samples", "2", "--batch-size", "64")
    assert f"up to {limit} tokens" in r.stdout
    assert all(d["n"] <= limit for d in store.responses.find({"run_id": "lim"}))
    assert re.search(rf"responses: 0/4 \(.*the last 4 running, the longest at 0 of {limit} tokens\)", r.stderr), r.stderr
    for flags, plan_only, want in (([], False, 2 * int((test.lens["plan"] + test.lens["trace"]).max()) + 1),
                                   (["--max-tokens", "reference"], True, 10000),
                                   (["--max-tokens", "reference"], False, 10000), (["--max-tokens", "77"], True, 77)):
        args = ev.parse_args(["--run-id", "lim", *flags])
        assert ev.resolve_opts(args, doc, test, plan_only).max_tokens == min(want, 10000)
    long = dataset.Split(test.ids, {**test.lens, "plan": test.lens["plan"] * 100}, test.flat, {})  # past the cap
    assert ev.resolve_opts(ev.parse_args(["--run-id", "lim"]), {**doc, "task": "sokoban"}, long, True).max_tokens == 2000


def test_best_checkpoint_is_evaluated_apart_and_never_on_validation_tasks(store):
    """eval.py --checkpoint best samples the run's best checkpoint, stores its responses and result
    under their own key (the latest's are sampled anew), and eval.py reports on no validation task
    of the run (train.py --eval-tasks: the last ones of the test split) nor any of their wall layout."""
    from checkpoint_store import load_checkpoint, save_checkpoint
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "40", "--chunk", "2", "--workers", "1")
    common = [*TRAIN, "--plan-only", "--eval-interval", "5"]
    run_cli("train.py", "single", "--run-id", "other", *common, "--train-steps", "5")
    run_cli("train.py", "single", "--run-id", "sel", *common, "--train-steps", "10", "--eval-tasks", "5",
            "--patience", "3")
    assert store.get_logs("sel", "test")[-1]["rollout_tasks"] == 5
    # the best checkpoint: here the weights of run `other`, at step 3 (the latest is at step 10)
    sel = load_checkpoint(store, "sel")
    save_checkpoint(store, "sel", 3, {**load_checkpoint(store, "other"), "run_id": "sel", "step": 3,
                                      "config": sel["config"]}, which="best", metrics={"step": 3, "loss": 1.0,
                                                                                       "optimal_pct": 0.0})
    test = dataset.load_split(store.db, MAZE, "test")
    walls = [test.get(r, "prompt")[6:].tobytes() for r in range(40)]  # a maze prompt: start x y goal x y walls
    allowed = rollouts.reportable_tasks(dataset.get_dataset(store.db, MAZE), test, 5)
    assert allowed <= 35 and walls[allowed - 1] != walls[35] and set(walls[allowed:35]) <= {walls[35]}

    greedy = ["--samples", "1", "--temperature", "0", "--max-tokens", "60"]
    out = run_cli("eval.py", "--run-id", "sel", "--checkpoint", "best", "--num-tasks", "4", *greedy).stdout
    assert "run sel at step 3 (best checkpoint): 4 test tasks" in out and "0 stored, 4 to generate" in out
    run_cli("eval.py", "--run-id", "other", "--num-tasks", "4", *greedy)
    best = {d["task"]: d["tokens"] for d in store.responses.find({"run_id": "sel"})}
    assert len(best) == 4 and best == {d["task"]: d["tokens"] for d in store.responses.find({"run_id": "other"})}
    assert all(json.loads(d["pkey"])["checkpoint"] == "best" and d["step"] == 3 for d in store.responses.find({"run_id": "sel"}))
    out = run_cli("eval.py", "--run-id", "sel", "--num-tasks", "4", *greedy).stdout  # the latest: its own responses
    assert "run sel at step 10: 4 test tasks" in out and "0 stored, 4 to generate" in out
    assert sorted((r["step"], r["params"].get("checkpoint")) for r in store.results.find({"run_id": "sel"})) == \
        [(3, "best"), (10, None)]
    assert "sel @3" in run_cli("eval.py", "average", "--run-id", "sel", "--checkpoint", "best").stdout
    assert "sel @10" in run_cli("eval.py", "average", "--run-id", "sel").stdout

    r = run_cli("eval.py", "--run-id", "sel", "--num-tasks", allowed + 1, *greedy, check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "validates on the last 5 test tasks" in r.stderr and f"--num-tasks {allowed} or less" in r.stderr
    out = run_cli("eval.py", "--run-id", "sel", "--num-tasks", "0", *greedy).stdout
    assert f"{allowed} test tasks" in out
    for flags, msg in ((["--checkpoint", "newest"], "unknown checkpoint 'newest'"),
                       (["--checkpoint", "best"], "no best checkpoint")):
        r = run_cli("eval.py", "--run-id", "other", *flags, *greedy, check=False)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, r.stderr


def test_average_gives_mean_and_standard_error(store):
    from hparams import TrainConfig
    for i, opt in enumerate([80.0, 90.0, 100.0]):
        put_checkpoint(store, f"seed-{i}", TrainConfig().to_dict(), {"step": 7}, 7)
        store.results.insert_one({"run_id": f"seed-{i}", "step": 7, "params": {"split": "test", "samples": 64},
                               "metrics": {"optimal_pct": opt, "correct_pct": 100.0, "swc": 0.5},
                               "time": i})
    # newer results with a trace prefix, and reference-scored ones, are only taken when asked for
    for i in range(3):
        store.results.insert_one({"run_id": f"seed-{i}", "step": 7, "params": {"split": "test", "samples": 64, "prefix_len": 5},
                               "metrics": {"optimal_pct": 1.0, "correct_pct": 1.0, "swc": 0.1}, "time": 10 + i})
    store.results.update_one({"run_id": "seed-0", "time": 0}, {"$set": {"reference_metrics": {"optimal_pct": 50.0}}})
    out = run_cli("eval.py", "average", "--pattern", "seed-.*", "--samples", "64").stdout
    assert "90.0 ± 5.8" in out and "100.0 ± 0.0" in out and "3 runs" in out
    assert "1.0 ± 0.0" in run_cli("eval.py", "average", "--pattern", "seed-.*", "--prefix-len", "5").stdout
    assert "50.0" in run_cli("eval.py", "average", "--run-id", "seed-0", "--scoring", "reference").stdout
    r = run_cli("eval.py", "average", "--pattern", "seed-.*", "--scoring", "reference", check=False)
    assert r.returncode != 0 and "seed-1" in r.stderr and "--scoring reference" in r.stderr
    r = run_cli("eval.py", "average", "--pattern", "seed-.*", "--samples", "32", check=False)
    assert r.returncode != 0 and "no evaluation result" in r.stderr


@pytest.mark.parametrize("flags,msg", [
    (["--run-id", "a/b"], "invalid run id"), (["--run-id", "x", "--temperature", "0"], "greedy"),
    (["--run-id", "x", "--samples", "0"], "--samples must be >= 1"), (["--run-id", "nope", "--samples", "1"], "no run"),
])
def test_bad_input_gives_one_line_errors(store, flags, msg):
    r = run_cli("eval.py", *flags, check=False)
    assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


BAD_SAMPLING = {"--num-tasks": "-1", "--samples": "0", "--temperature": "-0.5", "--max-tokens": "-2",
                "--batch-size": "-3", "--prefix-len": "-1"}


def test_a_bad_sampling_flag_is_named_alone():
    import eval as evaluate
    from conftest import call
    for flag, value in BAD_SAMPLING.items():
        code, out, err = call(evaluate.main, "--run-id", "x", flag, value)
        assert code == 1 and err.startswith(f"error: {flag} must be >= ") and f"got {value}" in err, err
        assert not any(other in err for other in BAD_SAMPLING if other != flag), err


@pytest.mark.slow
def test_two_ranks_share_the_work_without_duplicates(store):
    run_cli("data.py", "maze", "--size", "10", "--num-train", "8", "--num-test", "6", "--chunk", "2", "--workers", "1")
    run_cli("train.py", "single", "--run-id", "r", *TRAIN, "--train-steps", "5")
    args = ["eval.py", "--run-id", "r", "--num-tasks", "5", "--samples", "3", "--max-tokens", "60", "--batch-size", "4"]
    r = run_cli(*args, nproc=2)
    assert "0 stored, 9 to generate on rank 0 of 15 over 2 ranks" in r.stdout  # tasks 0, 2 and 4
    docs = list(store.responses.find({"run_id": "r"}, {"task": 1, "sample": 1}))
    assert sorted((d["task"], d["sample"]) for d in docs) == [(t, s) for t in range(5) for s in range(3)]
    assert "15 stored, 0 to generate" in run_cli(*args).stdout
