"""Judging responses (strict and the reference's checker) and the paper's metrics, on hand-made maze
and Sokoban responses."""
import numpy as np
import pytest

import dataset
import maze
import metrics
import sokoban
from dataset import SPECIALS


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
