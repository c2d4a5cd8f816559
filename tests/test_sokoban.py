"""Tests for sokoban.py, checked against an independent breadth-first solver written here."""
import os
import sys
from collections import deque

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sokoban as S  # noqa: E402

MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))


def border():
    return frozenset((x, y) for x in range(7) for y in range(7) if x in (0, 6) or y in (0, 6))


def make(walls=(), boxes=(), docks=(), worker=(1, 1)):
    return S.Level(walls=border() | frozenset(walls), boxes=tuple(sorted(boxes)),
                   docks=tuple(sorted(docks)), worker=worker)


def step(walls, worker, boxes, d):
    """Own move rule: returns the next (worker, boxes) or None if the move is illegal."""
    nx, ny = worker[0] + d[0], worker[1] + d[1]
    if (nx, ny) in walls:
        return None
    if (nx, ny) in boxes:
        bx, by = nx + d[0], ny + d[1]
        if (bx, by) in walls or (bx, by) in boxes:
            return None
        boxes = (boxes - {(nx, ny)}) | {(bx, by)}
    return (nx, ny), boxes


def bfs(level):
    """Optimal number of worker moves, or None when unsolvable."""
    walls, docks = set(level.walls), frozenset(level.docks)
    start = (level.worker, frozenset(level.boxes))
    dist, queue = {start: 0}, deque([start])
    while queue:
        state = queue.popleft()
        if state[1] == docks:
            return dist[state]
        for d in MOVES:
            nxt = step(walls, state[0], state[1], d)
            if nxt is not None and nxt not in dist:
                dist[nxt] = dist[state] + 1
                queue.append(nxt)
    return None


def replay(level, plan):
    """Own simulator: True when the plan is legal and solves the level."""
    if not plan or plan[0] != level.worker:
        return False
    worker, boxes = level.worker, frozenset(level.boxes)
    for a, b in zip(plan, plan[1:]):
        d = (b[0] - a[0], b[1] - a[1])
        if d not in MOVES:
            return False
        nxt = step(set(level.walls), worker, boxes, d)
        if nxt is None:
            return False
        worker, boxes = nxt
    return boxes == frozenset(level.docks)


@pytest.fixture(scope="module")
def generated():
    return S.generate(40, seed=123)


def test_generated_plans_valid_and_optimal(generated):
    for item in generated:
        level = S.parse_prompt(item["prompt"])
        plan = S.parse_plan(item["plan"])
        assert S.simulate(level, plan) and replay(level, plan)
        assert len(plan) - 1 == bfs(level)
        assert len(item["trace"]) < 10000 and item["tries"] >= 1
        assert level.key() == item["key"]


def test_astar_agrees_with_bfs_on_random_levels():
    rng = np.random.default_rng(7)
    unsolvable = 0
    for _ in range(60):
        level = S.random_level(rng)
        best = bfs(level)
        res = S.astar(level, rng)
        if best is None:
            unsolvable += 1
            assert res is None
        else:
            trace, plan = res
            assert len(plan) - 1 == best and replay(level, plan) and S.simulate(level, plan)
            assert trace[0][4] <= best  # admissible at the start
    assert unsolvable > 0


def test_unsolvable_levels_give_none():
    rng = np.random.default_rng(0)
    cornered = make(boxes=[(1, 5), (3, 3)], docks=[(3, 2), (4, 4)], worker=(2, 2))
    along_wall = make(boxes=[(1, 3), (3, 3)], docks=[(3, 2), (4, 4)], worker=(4, 3))
    for level in (cornered, along_wall):
        assert bfs(level) is None
        assert S.astar(level, rng) is None


def test_trace_consistency(generated):
    rng = np.random.default_rng(5)
    for item in generated[:15]:
        level = S.parse_prompt(item["prompt"])
        trace, plan = S.astar(level, rng)
        docks = set(level.docks)
        kind, worker, boxes, g, h = trace[0]
        assert (kind, worker, g) == ("create", level.worker, 0)
        assert set(boxes) == set(level.boxes) - docks
        created = set()
        for kind, worker, boxes, g, h in trace:
            assert kind in ("create", "close") and not set(boxes) & docks
            assert list(boxes) == sorted(boxes)  # x, then y, as the reference sorts
            state = (worker, boxes)
            if kind == "create":
                created.add(state)
            else:
                assert state in created
        kind, worker, boxes, g, h = trace[-1]
        assert kind == "close" and boxes == () and h == 0
        assert worker == plan[-1] and g == len(plan) - 1


def test_random_level_rules():
    rng = np.random.default_rng(1)
    inner_walls = 0
    for _ in range(300):
        level = S.random_level(rng)
        assert border() <= level.walls and len(level.walls) == len(border()) + 2
        inner = level.walls - border()
        assert all(1 <= x <= 5 and 1 <= y <= 5 for x, y in inner)
        assert len(level.boxes) == 2 and len(level.docks) == 2
        assert all(2 <= x <= 4 and 2 <= y <= 4 for x, y in level.boxes)
        cells = list(inner) + list(level.boxes) + list(level.docks) + [level.worker]
        assert len(set(cells)) == 7
        assert list(level.boxes) == sorted(level.boxes) and list(level.docks) == sorted(level.docks)
        inner_walls += any(2 <= x <= 4 and 2 <= y <= 4 for x, y in inner)
    assert inner_walls > 50  # walls are drawn before the boxes, so they may take inner cells


def test_token_round_trips(generated):
    for item in generated[:10]:
        level = S.parse_prompt(item["prompt"])
        assert S.prompt_tokens(level) == item["prompt"]
        plan = S.parse_plan(item["plan"])
        assert S.plan_tokens(plan) == item["plan"]
    assert S.prompt_tokens(make(boxes=[(3, 3)], docks=[(2, 2)], worker=(1, 1)))[:9] == [
        "worker", "1", "1", "box", "3", "3", "dock", "2", "2"]
    walls = S.prompt_tokens(make(boxes=[(3, 3)], docks=[(2, 2)], worker=(1, 1)))[9:]
    cells = [(int(x), int(y)) for x, y in zip(walls[1::3], walls[2::3])]
    assert cells == sorted(cells) and cells[:2] == [(0, 0), (0, 1)]  # x, then y, as the reference sorts


def test_malformed_input():
    good = S.prompt_tokens(make(boxes=[(3, 3)], docks=[(2, 2)], worker=(1, 1)))
    bad = [good[:-1], ["box", "3", "3"] + good, good[:3] + ["box", "7", "3"] + good[3:],
           good[:3] + ["crate", "3", "3"] + good[3:], good + ["worker", "4", "4"],
           good[:3] + good[6:],  # no box
           good + ["wall", "3", "3"],  # wall on a box
           good[:3] + ["box", "x", "3"] + good[3:]]
    for tokens in bad:
        with pytest.raises(ValueError):
            S.parse_prompt(tokens)
    for tokens in ([], ["plan", "1"], ["plan", "1", "9"], ["plan", "1", "1", "box", "2", "2"],
                   ["step", "1", "1"]):
        assert S.parse_plan(tokens) is None


def test_simulate_rejects_bad_plans():
    level = make(walls=[(4, 2)], boxes=[(3, 2), (3, 3)], docks=[(2, 2), (2, 3)], worker=(4, 3))
    good = [(4, 3), (3, 3), (4, 3), (4, 4), (3, 4)]
    assert not S.simulate(level, good)  # valid moves but ends unsolved
    solve = [(4, 3), (3, 3), (3, 4), (4, 4), (4, 3), (4, 2)]  # (4, 2) is a wall
    assert not S.simulate(level, solve)
    level = make(boxes=[(3, 3)], docks=[(2, 3)], worker=(4, 3))
    assert S.simulate(level, [(4, 3), (3, 3)]) and replay(level, [(4, 3), (3, 3)])
    assert not S.simulate(level, [(5, 3), (4, 3), (3, 3)])  # wrong start
    assert not S.simulate(level, [(4, 3), (2, 3)])  # not a neighbour step
    assert not S.simulate(level, [(4, 3), (4, 3)])  # standing still
    assert not S.simulate(level, [])
    wall_push = make(boxes=[(2, 3)], docks=[(4, 4)], worker=(3, 3))
    assert not S.simulate(wall_push, [(3, 3), (2, 3)])  # box would go into the border
    two = make(boxes=[(2, 3), (3, 3)], docks=[(4, 4), (4, 5)], worker=(4, 3))
    assert not S.simulate(two, [(4, 3), (3, 3)])  # box would go into a box
    into_wall = make(walls=[(3, 2)], boxes=[(3, 3)], docks=[(4, 4)], worker=(3, 4))
    assert not S.simulate(into_wall, [(3, 4), (3, 3)])  # pushed into an interior wall


def test_vocabulary_covers_tokens(generated):
    vocab = S.vocabulary()
    assert len(vocab) == len(set(vocab)) == 7 + 7 + S.COST_MAX + 1
    assert vocab[:7] == list(S.KEYWORDS)
    vocab = set(vocab)
    for item in generated:
        assert set(item["prompt"]) <= vocab and set(item["trace"]) <= vocab
        assert set(item["plan"]) <= vocab


def test_generate_reproducible(generated):
    again = S.generate(40, seed=123)
    assert again == generated
    other = S.generate(5, seed=124)
    assert [x["key"] for x in other] != [x["key"] for x in generated[:5]]
    small = S.generate(3, seed=9, max_trace_tokens=300)
    assert all(len(x["trace"]) < 300 for x in small)


def test_astar_nondeterministic_but_optimal(generated):
    level = S.parse_prompt(generated[0]["prompt"])
    runs = [S.astar(level, np.random.default_rng(s)) for s in range(8)]
    assert len({len(plan) for _, plan in runs}) == 1
    assert len({tuple(trace) for trace, _ in runs}) > 1


def test_max_steps_and_mean_trace_len(generated):
    level = S.parse_prompt(generated[0]["prompt"])
    assert S.astar(level, np.random.default_rng(0), max_steps=2) is None
    m = S.mean_trace_len(level, runs=4, seed=3)
    assert m == S.mean_trace_len(level, runs=4, seed=3) and m > 0
    rng = np.random.default_rng(3)
    expected = sum(len(S.trace_tokens(S.astar(level, rng)[0])) for _ in range(4)) / 4
    assert m == expected


def test_render():
    level = make(walls=[(4, 2)], boxes=[(3, 2), (2, 4)], docks=[(2, 4), (5, 5)], worker=(3, 3))
    text = S.render(level, plan=[(3, 3), (3, 4)])
    rows = text.split("\n")
    assert len(rows) == 7 and all(len(r) == 7 for r in rows)
    assert rows[0] == "#######" and rows[2][4] == "#" and rows[2][3] == "$"
    assert rows[4][2] == "*" and rows[5][5] == "." and rows[3][3] == "@" and rows[4][3] == "o"
    on_dock = make(boxes=[(3, 2)], docks=[(3, 3)], worker=(3, 3))
    assert S.render(on_dock).split("\n")[3][3] == "+"
