"""Judging responses (strict and the reference's checker) and the paper's metrics, on hand-made maze
and Sokoban responses."""
import math
import re

import numpy as np
import pytest

import dataset
import maze
import metrics
import sokoban
from dataset import SPECIALS
from errors import ConfigError, StoreError


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


# --- comparing stored evaluations on their common tasks -------------------------------------

def result(rows, trace, astar=None, tasks=10, digest="d1", samples=4, plan_only=False, step=100):
    """A stored evaluation as eval.py's report() writes it: rows solved optimally with t_i and t*_i."""
    astar = astar or [100.0] * len(rows)
    metrics_ = {"tasks": tasks, "optimal_pct": 100 * len(rows) / tasks}
    if not plan_only:
        metrics_["trace_ratio"] = sum(trace) / sum(astar) if rows else None
    return {"run_id": "r", "step": step, "metrics": metrics_,
            "params": {"dataset": "ds", "split": "test", "num_tasks": tasks, "samples": samples, "temperature": 1.0},
            "optimal_by_task": {"tasks": digest, "rows": list(rows), "trace": list(trace), "astar": list(astar)}}


def test_binomial_standard_error():
    assert metrics.binomial_se(3, 10) == pytest.approx(100 * np.sqrt(0.3 * 0.7 / 10))
    assert metrics.binomial_se(0, 10) == 0 and metrics.binomial_se(10, 10) == 0


def test_ratio_of_sums_and_its_delta_method_error():
    r, se = metrics.ratio_of_sums([10, 20], [20, 20])
    assert r == 0.75  # residuals t - r t* = -5, 5: sqrt(50 / (2 * 1)) / mean t* = 5 / 20
    assert se == pytest.approx(0.25)
    assert metrics.ratio_of_sums([30], [60]) == (0.5, None)
    assert metrics.ratio_of_sums([], []) is None
    rng = np.random.default_rng(0)  # the error matches the spread of the ratio over resampled task sets
    t_star = rng.uniform(50, 150, 400)
    t = t_star * rng.normal(0.7, 0.2, 400)
    draws = [metrics.ratio_of_sums(t[i], t_star[i])[0] for i in rng.integers(0, 400, (2000, 400))]
    assert metrics.ratio_of_sums(t, t_star)[1] == pytest.approx(np.std(draws), rel=0.1)


def test_compare_uses_the_tasks_every_run_solves_optimally():
    a = result([0, 1, 2, 5], [50, 60, 70, 999], [100, 100, 100, 100])
    b = result([1, 2, 3, 5, 7, 8], [40, 30, 1, 80, 1, 1], [100, 100, 100, 100, 100, 100])
    c = result([1, 2, 4, 5, 9], [0, 0, 0, 0, 0], plan_only=True)
    rows, stats = metrics.compare([("a", a), ("b", b), ("c", c)])
    assert rows == [1, 2, 5]  # task 0 only a solves, 3 only b: neither is compared
    sa, sb, sc = stats
    assert [s["common"] for s in stats] == [3, 3, 3] and [s["optimal"] for s in stats] == [4, 6, 5]
    assert sa["trace_ratio"][0] == pytest.approx((60 + 70 + 999) / 300)
    assert sb["trace_ratio"][0] == pytest.approx((40 + 30 + 80) / 300)
    assert "trace_ratio" not in sc  # plan-only: no trace, but its tasks still bound the common set
    assert sb["optimal_pct"] == pytest.approx((60, metrics.binomial_se(6, 10)))
    # paired from a: per task solved (1) or not (0), b - a over the 10 tasks: 0, 3, 7, 8 differ
    d = np.array([-1, 0, 0, 1, 0, 0, 0, 1, 1, 0])
    assert sb["optimal_pct_diff"] == pytest.approx((100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(10)))
    assert sb["trace_ratio_diff"] == pytest.approx(metrics.ratio_of_sums([-20, -40, -919], [100] * 3))
    assert "optimal_pct_diff" not in sa and "trace_ratio_diff" not in sc


def test_compare_over_a_runs_own_tasks_is_its_stored_trace_ratio():
    a = result([0, 3, 4], [30, 90, 45], [60, 100, 90])
    assert metrics.compare([("a", a)])[1][0]["trace_ratio"][0] == pytest.approx(a["metrics"]["trace_ratio"])


@pytest.mark.parametrize("other, error, msg", [
    (result([1], [5], digest="d2"), ConfigError, "a and b were evaluated on different tasks"),
    (result([1], [5], samples=8), ConfigError, "a and b were evaluated differently (samples 4 vs 8)"),
    ({**result([1], [5]), "optimal_by_task": None}, StoreError, "b's evaluation at step 100 predates per-task"),
    (result([1], [5], astar=[120.0]), ConfigError, "different A* trace lengths"),
])
def test_compare_refuses_runs_evaluated_otherwise(other, error, msg):
    if other["optimal_by_task"] is None:
        del other["optimal_by_task"]
    with pytest.raises(error, match=re.escape(msg)):
        metrics.compare([("a", result([1, 2], [5, 6])), ("b", other)])


def test_the_clustered_standard_error_matches_a_hand_computation():
    """Tasks of one wall layout are one cluster: SE = sqrt(G/(G-1) sum_g (sum_i in g (y_i - mean))^2) / n."""
    y = [1, 0, 0, 1, 1, 0, 0, 0]
    layout = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    # by hand: mean 3/8; cluster residual sums 1 - 9/8, 2 - 9/8, 0 - 6/8
    by_hand = math.sqrt(3 / 2 * ((-1 / 8) ** 2 + (7 / 8) ** 2 + (-6 / 8) ** 2)) / 8
    mean, se = metrics.mean_se(y, layout)
    assert mean == pytest.approx(3 / 8) and se == pytest.approx(by_hand)
    # every task a cluster of its own: the usual s / sqrt(n)
    assert metrics.mean_se(y, np.arange(8))[1] == pytest.approx(np.std(y, ddof=1) / math.sqrt(8))
    # a cluster's tasks standing or falling together widen the error against counting them alike
    assert metrics.mean_se([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1])[1] > metrics.mean_se([1, 1, 1, 0, 0, 0], range(6))[1]
    # optimal % as (percentage, SE) by layout; none solved: 0 with the 95% upper bound counting layouts
    pct = metrics.optimal_pct([0, 3, 4], 8, layout)
    assert pct[0] == pytest.approx(37.5) and pct[1] == pytest.approx(100 * by_hand)
    assert metrics.optimal_pct([], 8, layout) == (0.0, None, pytest.approx(100 * (1 - 0.05 ** (1 / 3))))
    # the ratio of sums: residuals t_i - r t*_i summed by cluster, over sum t*
    t, ts = np.array([10.0, 20, 30, 40]), np.array([20.0, 20, 20, 40])
    r = t.sum() / ts.sum()
    e = t - r * ts
    assert metrics.ratio_of_sums(t, ts, [0, 0, 1, 1]) == (pytest.approx(r), pytest.approx(
        math.sqrt(2 * ((e[0] + e[1]) ** 2 + (e[2] + e[3]) ** 2)) / ts.sum()))
    # singletons: the delta-method error as before
    assert metrics.ratio_of_sums(t, ts)[1] == pytest.approx(math.sqrt((e ** 2).sum() / 12) / ts.mean())


def test_paired_differences_are_clustered_by_layout():
    """Per task d_i = solved by b - solved by a, its SE clustered as any mean's."""
    layout = np.array([0, 0, 1, 1, 2, 2])
    a = ("a", {"metrics": {"tasks": 6}, "optimal_by_task": {"rows": [0, 2], "trace": [], "astar": []}})
    b = ("b", {"metrics": {"tasks": 6}, "optimal_by_task": {"rows": [0, 1, 3, 4], "trace": [], "astar": []}})
    d = [0, 1, -1, 1, 1, 0]
    diff = metrics.paired(a, b, [], layout)["optimal_pct_diff"]
    assert diff[0] == pytest.approx(100 * 2 / 6) and diff[1] == pytest.approx(100 * metrics.mean_se(d, layout)[1])
    assert metrics.paired(a, b, [])["optimal_pct_diff"][1] == pytest.approx(100 * np.std(d, ddof=1) / math.sqrt(6))
