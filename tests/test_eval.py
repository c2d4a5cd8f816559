"""Rollouts, metrics, stored responses and search dynamics bootstrapping."""
import json

import numpy as np
import pytest
import torch

import bootstrap
import dataset
import eval as ev
import maze
import metrics
import rollouts
from checkpoint_store import put_checkpoint
from conftest import run_cli
from dataset import SPECIALS
from model import ModelConfig, Transformer
from test_decode import naive_greedy


# --- hand-made maze responses -------------------------------------------------------------------

VOCAB = [*SPECIALS, *maze.vocabulary(5)]
INDEX = {t: i for i, t in enumerate(VOCAB)}
DOC = {"_id": "hand", "task": "maze", "params": {"n": 5}, "vocabulary": VOCAB}
TASK = maze.Maze(5, frozenset({(1, 1)}), (0, 0), (2, 0))  # optimal plan: 2 moves along the top row


def ids(tokens):
    return np.array([INDEX[t] for t in tokens], dataset.DTYPE)


def response(trace_steps, cells):
    """A response: trace_steps 5-token trace steps, then a plan through cells."""
    trace = ["close", "0", "0", "c0", "c2"] * trace_steps
    return ids(trace + maze.plan_tokens(cells))


OPTIMAL = [(0, 0), (1, 0), (2, 0)]
DETOUR = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0)]  # around the wall: 6 moves
JUMP = [(0, 0), (2, 0)]


def judge(resp, eos=True):
    checker = metrics.Checker(DOC)
    return checker.judge(TASK, resp, eos, optimal_moves=2)


def test_verdicts_on_hand_made_responses():
    assert judge(response(2, OPTIMAL)) == metrics.Verdict("optimal", 10, 2)
    assert judge(response(1, DETOUR)) == metrics.Verdict("correct", 5, 6)
    assert judge(response(0, JUMP)).kind == "invalid"
    assert judge(response(2, OPTIMAL), eos=False).kind == "malformed"  # no <eos> within the limit
    assert judge(ids(["close", "0", "0", "c0", "c2"])).kind == "malformed"  # no plan
    assert judge(ids(["plan", "0"])).kind == "malformed"  # a plan that does not parse
    assert judge(np.array([dataset.SEP], dataset.DTYPE)).kind == "malformed"  # a special token


def test_metrics_on_hand_made_responses():
    """Three tasks, all with optimal length 2 (l* = 2): A* trace lengths t* = 20, 10, 30."""
    v = {"a": [judge(response(2, OPTIMAL)), judge(response(1, DETOUR))],  # optimal (trace 10) + long (5)
         "b": [judge(response(4, DETOUR)), judge(response(0, JUMP))],  # long only (trace 20) + invalid
         "c": [judge(response(2, OPTIMAL), eos=False), judge(ids(["close", "0", "0", "c0", "c2"]))]}  # malformed
    sums = dict.fromkeys(metrics.SUM_FIELDS, 0.0)
    for task, t_star in (("a", 20.0), ("b", 10.0), ("c", 30.0)):
        for k, x in metrics.task_sums(v[task], 2, t_star).items():
            sums[k] += x
    m = metrics.summarize(sums, plan_only=False)
    assert m["tasks"] == 3 and m["responses"] == 6
    assert m["optimal_pct"] == pytest.approx(100 / 3)
    assert m["correct_pct"] == pytest.approx(200 / 3)
    assert m["swc"] == pytest.approx((1 + 3 / 7 + 0) / 3)  # plan lengths in states: l* = 3, detour 7
    assert m["ilr_solved"] == pytest.approx((20 / 7.5 + 10 / 20 + 0) / 3)  # a: mean trace of (10, 5)
    assert m["ilr_optimal"] == pytest.approx((20 / 10) / 3)
    assert m["malformed_pct"] == pytest.approx(100 * 2 / 6)
    assert m["trace_ratio"] == pytest.approx(10 / 20)
    plan_only = metrics.summarize(sums, plan_only=True)
    assert "ilr_solved" not in plan_only and plan_only["swc"] == m["swc"]


def test_astar_trace_length_is_the_stored_mean_where_present():
    lens = {"prompt": np.array([6, 6]), "trace": np.array([50, 60]), "plan": np.array([9, 9])}
    split = dataset.Split(np.arange(2), lens, {}, {"astar_mean_trace_len": np.array([42.5, np.nan])})
    assert metrics.astar_trace_len(split, 0) == 42.5 and metrics.astar_trace_len(split, 1) == 60.0
    assert metrics.astar_trace_len(dataset.Split(np.arange(2), lens, {}, {}), 0) == 50.0
    assert metrics.optimal_moves(split, 0) == 2  # three states


def test_reduction_keeps_the_shortest_correct_optimal_response():
    verdicts = [judge(response(0, JUMP)),  # invalid, shortest
                judge(response(1, DETOUR)),  # correct but not optimal
                judge(response(6, OPTIMAL)),  # optimal, trace 30
                judge(response(3, OPTIMAL)),  # optimal, trace 15: the one
                judge(response(3, OPTIMAL)),  # a tie: the first one wins
                judge(response(1, OPTIMAL), eos=False)]  # truncated
    assert bootstrap.shortest_optimal(verdicts, trace_len=40) == 3
    # the reference's rule: the shortest optimal response even when longer than the sequence's own trace
    assert bootstrap.shortest_optimal(verdicts, trace_len=15) == 3 and bootstrap.shortest_optimal(verdicts, trace_len=5) == 3
    assert bootstrap.shortest_optimal(verdicts, trace_len=40, only_shorter=True) == 3
    assert bootstrap.shortest_optimal(verdicts, trace_len=15, only_shorter=True) is None  # not shorter than its own
    for only_shorter in (False, True):
        assert bootstrap.shortest_optimal(verdicts[:2] + verdicts[5:], 40, only_shorter) is None  # fall back to the original
        assert bootstrap.shortest_optimal([], 40, only_shorter) is None


def judge_both(resp, eos=True):
    checker = metrics.Checker(DOC)
    return checker.judge(TASK, resp, eos, 2).kind, checker.judge_reference(TASK, resp, eos, 2).kind


def test_reference_scoring_of_maze_responses_is_more_lenient():
    assert judge_both(response(2, OPTIMAL)) == ("optimal", "optimal")
    assert judge_both(response(2, OPTIMAL), eos=False) == ("malformed", "optimal")  # no <eos> needed
    sep_in_trace = np.concatenate([np.array([dataset.SEP], dataset.DTYPE), response(1, OPTIMAL)])
    assert judge_both(sep_in_trace) == ("malformed", "optimal")  # tokens before the plan are not checked
    keyword = ids(["close", "0", "0", "c0", "c2", "plan", "0", "0", "wall", "1", "0", "plan", "2", "0"])
    assert judge_both(keyword) == ("malformed", "optimal")  # a triple's keyword is not checked
    assert judge_both(response(1, DETOUR)) == ("correct", "correct")
    assert judge_both(response(0, JUMP)) == ("invalid", "invalid")
    assert judge_both(np.concatenate([response(0, OPTIMAL), ids(["close", "0", "0"])])) == ("malformed", "invalid")
    assert judge_both(np.concatenate([response(0, OPTIMAL), ids(["plan", "2"])])) == ("malformed", "malformed")
    assert judge_both(ids(["plan", "0", "c0"])) == ("malformed", "malformed")  # not a coordinate
    assert judge_both(ids(["close", "0", "0", "c0", "c2"])) == ("malformed", "malformed")  # no plan
    assert judge_both(response(0, [(0, 0), (0, 1), (1, 1), (2, 1), (2, 0)])) == ("invalid", "invalid")  # a wall


def test_reference_scoring_of_sokoban_plans_replays_moves_from_the_worker():
    import sokoban
    border = {(x, y) for x in range(7) for y in range(7) if x in (0, 6) or y in (0, 6)}
    level = sokoban.Level(walls=frozenset(border | {(5, 5), (1, 5)}), boxes=((3, 2), (3, 4)), docks=((4, 2), (4, 4)),
                          worker=(2, 2))
    doc = {"_id": "sok", "task": "sokoban", "params": {}, "vocabulary": [*SPECIALS, *sokoban.vocabulary()]}
    checker = metrics.Checker(doc)
    index = {t: i for i, t in enumerate(doc["vocabulary"])}

    def both(cells, eos=True):
        toks = np.array([index[t] for c in cells for t in ("plan", str(c[0]), str(c[1]))], dataset.DTYPE)
        return checker.judge(level, toks, eos, 5).kind, checker.judge_reference(level, toks, eos, 5).kind

    solution = [(2, 2), (3, 2), (3, 3), (2, 3), (2, 4), (3, 4)]  # push right, round, push right: 5 moves
    assert sokoban.simulate(level, solution)
    assert both(solution) == ("optimal", "optimal")
    assert both(solution, eos=False) == ("malformed", "optimal")
    # the same moves from another start cell: the plan's start is not checked
    assert both([(x - 1, y - 1) for x, y in solution]) == ("invalid", "optimal")
    # a move into the border wall changes nothing; the plan's cells then run one row off the worker's
    bumped = [(2, 2), (2, 1), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (3, 3)]
    assert both(bumped) == ("invalid", "correct")
    assert both(solution[:-1]) == ("invalid", "invalid")  # a box left off its dock
    assert both([(2, 2), (4, 2), (4, 3)]) == ("invalid", "invalid")  # a jump


def test_rollouts_from_a_trace_prefix_continue_prompt_and_prefix():
    """--prefix-len K: the model continues `<bos> prompt <sep>` and the first K trace tokens; the
    response holds the prefix, then what was generated."""
    torch.manual_seed(2)
    model = Transformer(ModelConfig(vocab_size=12, d_model=32, n_head=2, d_ff=64, n_layer=2)).double().eval()
    rng = np.random.default_rng(0)
    lens = {"prompt": np.array([4, 6, 3]), "trace": np.array([9, 2, 7]), "plan": np.array([3, 3, 3])}
    flat = {p: rng.integers(4, 12, int(v.sum())).astype(dataset.DTYPE) for p, v in lens.items()}
    split = dataset.Split(np.arange(3), lens, flat, {})
    for k in (0, 5):
        opts = rollouts.Opts(0.0, 12, 0, prefix_len=k)
        got = {p: (list(i), e) for p, i, e in rollouts.rollouts(model, split, [(0, 0), (1, 0), (2, 0)], opts, 4,
                                                           torch.device("cpu"))}
        for r in range(3):
            prefix = split.get(r, "trace")[:k]  # row 1's trace is shorter than 5: all of it
            assert np.array_equal(rollouts.prompt_ids(split, r, k), np.concatenate([[dataset.BOS], split.get(r, "prompt"),
                                                                               [dataset.SEP], prefix]))
            out, eos = naive_greedy(model, rollouts.prompt_ids(split, r, k), 12)
            assert got[(r, 0)] == ([*prefix.tolist(), *out], eos)


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
    ev.store_responses(store.responses, key, train, [((1, 0), short, True), ((2, 0), wrong, True)])

    # and for sequence 3 an optimal response whose trace is longer than A*'s (its last step repeated)
    longer = np.concatenate([train.get(3, "trace"), train.get(3, "trace")[-5:], train.get(3, "plan")])
    ev.store_responses(store.responses, key, train, [((3, 0), longer, True)])

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
    assert "initialised from base (step 5): weights and optimizer state" in r.stdout

    # evaluate, then again: the second run only reads stored responses
    args = ["eval.py", "--run-id", "step1", "--num-tasks", "4", "--samples", "2", "--max-tokens", "150"]
    first = run_cli(*args).stdout
    again = run_cli(*args).stdout
    assert "8 stored, 0 to generate" in again
    assert first.splitlines()[-1] == again.splitlines()[-1]  # same metrics
    assert "optimal %" in first and "ILR-solved" in first
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
    (["--run-id", "x", "--samples", "0"], "--samples >= 1"), (["--run-id", "nope", "--samples", "1"], "no run"),
])
def test_bad_input_gives_one_line_errors(store, flags, msg):
    r = run_cli("eval.py", *flags, check=False)
    assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


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
