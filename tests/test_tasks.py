"""tasks.py and grid.py: every kind answers the whole interface, and the shared plan format parses
exactly as the two task modules' own parsers did before they were merged (transcribed here)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hs

import grid
import maze
import sokoban
import tasks

INTERFACE = ("parse_prompt", "parse_plan", "check", "check_reference", "render", "mean_trace_len")


def old_maze_parse_plan(tokens):
    """maze.parse_plan before grid.py."""
    def coord(tok):
        if not isinstance(tok, str) or not tok.isdigit() or tok != str(int(tok)):
            raise ValueError(tok)
        return int(tok)
    if len(tokens) % 3 or any(t != "plan" for t in tokens[::3]):
        return None
    try:
        return [(coord(x), coord(y)) for x, y in zip(tokens[1::3], tokens[2::3])]
    except ValueError:
        return None


def old_sokoban_parse_plan(tokens):
    """sokoban.parse_plan before grid.py."""
    num = {str(i): i for i in range(sokoban.SIZE)}
    tokens = list(tokens)
    if len(tokens) % 3:
        return None
    triples = []
    for i in range(0, len(tokens), 3):
        name, x, y = tokens[i:i + 3]
        if x not in num or y not in num:
            return None
        triples.append((name, (num[x], num[y])))
    if not triples or any(name != "plan" for name, _ in triples):
        return None
    return [cell for _, cell in triples]


tokens = hs.lists(hs.sampled_from(["plan", "wall", "0", "1", "6", "7", "10", "01", "+1", "-1", " 1", "²", "x"]),
                  max_size=12)


@settings(max_examples=500, deadline=None)
@given(tokens)
def test_shared_plan_parser_parses_as_each_task_did(toks):
    assert maze.parse_plan(toks) == old_maze_parse_plan(toks)
    assert sokoban.parse_plan(toks) == old_sokoban_parse_plan(toks)


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 30), hs.integers(0, 30)), max_size=10))
def test_plan_tokens_round_trip(plan):
    assert grid.parse_plan(grid.plan_tokens(plan)) == plan
    assert maze.plan_tokens is grid.plan_tokens is sokoban.plan_tokens  # one definition


def test_every_kind_answers_the_interface_on_its_own_tasks():
    found = {"maze": maze.generate(6, 3, 0, nondeterministic=False)[0][1][0], "sokoban": sokoban.generate(1, 0)[0]}
    params = {"maze": {"n": 6, "nondeterministic": False}, "sokoban": {}}
    assert set(tasks.KINDS) == set(found)
    for kind, task in found.items():
        t = tasks.of(kind, params[kind])
        assert t.kind == kind and all(callable(getattr(t, name)) for name in INTERFACE)
        problem, plan = t.parse_prompt(task["prompt"]), t.parse_plan(task["plan"])
        assert plan and t.check(problem, plan) and t.check_reference(problem, plan)
        assert not t.check(problem, plan[:-1])
        board = t.render(problem, plan)
        assert isinstance(board, str) and "o" in board
        # deterministic maze A* has one trace; Sokoban's is a mean over seeded runs, each one a full trace
        mean = t.mean_trace_len(problem, 3, 0)
        assert mean == len(task["trace"]) if kind == "maze" else mean > 0
    assert tasks.of("imported", {}) is None


def test_maze_mean_trace_len_matches_repeated_astar():
    m = maze.parse_prompt(maze.generate(6, 1, 0, nondeterministic=True)[0][1][0]["prompt"], 6)
    rng = np.random.default_rng(5)
    want = np.mean([len(maze.trace_tokens(maze.astar(m, rng)[0])) for _ in range(4)])
    assert tasks.of("maze", {"n": 6, "nondeterministic": True}).mean_trace_len(m, 4, 5) == want
