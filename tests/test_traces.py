"""traces.py: every A* trace of generated datasets (and of the reference's own code) reads as legal
A* steps and agrees with itself; hand-corrupted traces fail at the token that breaks the rule;
hand-made responses are sorted into each failure kind."""
import json
from pathlib import Path

import numpy as np
import pytest

import maze
import metrics
import sokoban
import tasks
import traces
from dataset import SPECIALS

GOLDEN = Path(__file__).resolve().parent / "golden" / "reference-cases.json"


def assert_all_valid(task, sequences):
    for s in sequences:
        problem = task.parse_prompt(s["prompt"])
        c = traces.check(task.search_space(problem), s["trace"])
        assert c.complete and c.valid == len(s["trace"]) and c.why == "", (s["prompt"], c.valid, c.why)
        assert len(c.steps) == sum(t in ("create", "close") for t in s["trace"])
        assert traces.agreement(s["trace"], s["trace"]) == (len(s["trace"]), 1.0)
        if task.kind == "maze" and not task.nondeterministic:
            assert task.astar_trace(problem) == s["trace"]


@pytest.mark.parametrize("nondeterministic", [False, True])
def test_every_maze_astar_trace_is_valid(nondeterministic):
    task = tasks.of("maze", {"n": 10, "nondeterministic": nondeterministic})
    sequences = [s for _, seqs in maze.generate(10, 20, 7, nondeterministic) for s in seqs]  # as data.py maze writes
    assert len(sequences) > 200
    assert_all_valid(task, sequences)


def test_every_sokoban_astar_trace_is_valid():
    assert_all_valid(tasks.of("sokoban", {}), sokoban.generate(60, 5))  # as data.py sokoban writes


def test_every_trace_of_the_reference_code_is_valid():
    for c in json.loads(GOLDEN.read_text())["maze_deterministic"]:
        m = maze.Maze(c["n"], frozenset(map(tuple, c["walls"])), tuple(c["start"]), tuple(c["goal"]))
        tokens = [t for a, x, y, g, h in c["trace"] for t in (a, str(x), str(y), f"c{g}", f"c{h}")]
        assert traces.check(maze.search_space(m), tokens).complete


# --- a 4x4 maze worked by hand ------------------------------------------------------------------
#   y=0  S # . G
#   y=1  . # . .      start (0, 0), goal (3, 0), walls (1, 0) and (1, 1)
#   y=2  . . . .
#   y=3  . . . .
SMALL = maze.Maze(4, frozenset({(1, 0), (1, 1)}), (0, 0), (3, 0))
# A* by hand: children in the order (x, y+1), (x, y-1), (x-1, y), (x+1, y); (0, 0) is not created
# again from (0, 1) (closed at f 3 <= 5); from (0, 2) both (0, 3) (f 9) and (1, 2) (f 7) are created,
# then (1, 2) closes first: its f is the least
HEAD = "create 0 0 c0 c3 close 0 0 c0 c3 create 0 1 c1 c4 close 0 1 c1 c4 create 0 2 c2 c5 close 0 2 c2 c5 " \
       "create 0 3 c3 c6 create 1 2 c3 c4 close 1 2 c3 c4".split()


def small_trace():
    return maze.trace_tokens(maze.astar(SMALL)[0])


def test_the_hand_worked_maze():
    assert small_trace()[:len(HEAD)] == HEAD
    assert traces.check(maze.search_space(SMALL), small_trace()).complete


@pytest.mark.parametrize("at, replace, bad, why", [
    (10, ["create", "0", "1", "c2", "c4"], 13, "a wrong g"),  # g of (0, 1) is 1
    (10, ["create", "0", "1", "c1", "c5"], 14, "a wrong h"),  # h of (0, 1) is 4
    (40, ["close", "0", "3", "c3", "c6"], 41, "not an open node of least f"),  # f 9 while (1, 2) has 7
    (20, ["create", "1", "1", "c2", "c3"], 21, "not a child that A* pushes"),  # (1, 1) is a wall
    (20, ["create", "0", "0", "c2", "c3"], 22, "not a child that A* pushes"),  # closed at f 3: A* skips it
    (30, ["close", "0", "2", "c2", "c5"], 30, "a close before every child"),  # (0, 3), (1, 2) not yet created
    (0, ["close", "0", "0", "c0", "c3"], 0, "does not begin by creating the start"),
])
def test_a_corrupted_trace_fails_at_the_token_that_breaks_the_rule(at, replace, bad, why):
    tokens = small_trace()
    tokens[at:at + 5] = replace
    c = traces.check(maze.search_space(SMALL), tokens)
    assert not c.complete and c.valid == bad and why in c.why, (c.valid, c.why)
    assert len(c.steps) == at // 5  # the legal steps before it


def test_a_trace_cut_short_or_run_on_is_not_complete():
    tokens = small_trace()
    space = maze.search_space(SMALL)
    cut = traces.check(space, tokens[:-5])
    assert cut.valid == len(tokens) - 5 and not cut.complete and "before the goal" in cut.why
    more = traces.check(space, tokens + tokens[-5:])
    assert more.valid == len(tokens) and not more.complete and "after the goal" in more.why


def test_a_sokoban_trace_with_a_wrong_h_fails_at_the_h():
    task = tasks.of("sokoban", {})
    seq = sokoban.generate(1, 11)[0]
    tokens = list(seq["trace"])
    last = max(i for i, t in enumerate(tokens) if t == "create")
    end = next(i for i in range(last, len(tokens)) if tokens[i][1:].isdigit()) + 1  # the h token
    tokens[end] = f"c{int(tokens[end][1:]) + 1}"
    c = traces.check(task.search_space(task.parse_prompt(seq["prompt"])), tokens)
    assert c.valid == end and "a wrong h" in c.why


def test_agreement_is_the_share_before_the_first_difference():
    a = small_trace()
    assert traces.agreement(a[:10] + ["close"], a) == (10, 10 / len(a))
    assert traces.agreement(a[:10], a) == (10, 10 / len(a))  # cut short: the longer trace counts
    assert traces.agreement([], a) == (0, 0.0)


# --- failure kinds ------------------------------------------------------------------------------

def small_checker():
    return metrics.Checker({"_id": "small", "task": "maze", "params": {"n": 4},
                            "vocabulary": [*SPECIALS, *maze.vocabulary(4)]})


OPTIMAL = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (3, 0)]
RESPONSES = {  # kind -> (plan tokens after the A* trace, ends with <eos>)
    "optimal": (maze.plan_tokens(OPTIMAL), True),
    "correct": (maze.plan_tokens([(0, 0), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2), *OPTIMAL[4:]]), True),
    "wrong_end": (maze.plan_tokens(OPTIMAL[:-1]), True),
    "invalid_move": (maze.plan_tokens([(0, 0), (1, 0), (2, 0), (3, 0)]), True),  # into the wall (1, 0)
    "malformed": (maze.plan_tokens(OPTIMAL)[:-1], True),  # a plan cut inside its last triple
    "no_plan": ([], True),
}


def response(checker, plan, eos=True):
    return np.array([checker.vocab.index(t) for t in small_trace() + plan]), eos


@pytest.mark.parametrize("kind", traces.FAILURES)
def test_each_failure_kind_has_its_response(kind):
    checker = small_checker()
    plan, eos = RESPONSES[kind]
    ids, eos = response(checker, plan, eos)
    verdict = checker.judge(SMALL, ids, eos, len(OPTIMAL) - 1)
    got, fault = traces.failure_kind(checker.task, SMALL, [checker.vocab[i] for i in ids], verdict)
    assert got == kind
    if kind == "invalid_move":
        assert fault == (1, "into a wall")
    if kind == "wrong_end":
        assert fault == (len(OPTIMAL) - 2, maze.WRONG_END)


def test_without_eos_a_plan_is_malformed_and_a_task_counts_under_its_best_response():
    checker = small_checker()
    ids, _ = response(checker, RESPONSES["optimal"][0])
    verdict = checker.judge(SMALL, ids, False, len(OPTIMAL) - 1)
    assert traces.failure_kind(checker.task, SMALL, [checker.vocab[i] for i in ids], verdict)[0] == "malformed"
    diag = traces.Diagnostics(checker)
    prompt = np.array([checker.vocab.index(t) for t in maze.prompt_tokens(SMALL)])
    for kinds in (["no_plan", "wrong_end", "malformed"], ["invalid_move", "correct"], ["no_plan"]):
        resp = [response(checker, *RESPONSES[k]) for k in kinds]
        diag.add(prompt, resp, [checker.judge(SMALL, i, e, len(OPTIMAL) - 1) for i, e in resp])
    d = diag.summary()
    assert d["failure_pct"] == pytest.approx({"optimal": 0, "correct": 100 / 3, "wrong_end": 100 / 3,
                                              "invalid_move": 0, "malformed": 0, "no_plan": 100 / 3})
    # every response above carries A*'s whole trace: all valid, all in agreement
    assert d["trace_valid"] == d["trace_agreement"] == 1.0 and d["valid_trace_pct"] == 100.0
    assert "correct, not optimal 33.3%" in traces.describe(d)
