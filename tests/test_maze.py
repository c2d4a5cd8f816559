"""Tests for maze.py: A* optimality and trace consistency against an independent BFS, task rules,
token round trips, plan checking and reproducible generation."""
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maze  # noqa: E402
from maze import Maze  # noqa: E402


def bfs(m, src):
    """Independent shortest-path distances from src to every reachable free cell."""
    dist, queue = {src: 0}, deque([src])
    while queue:
        x, y = queue.popleft()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nx < m.n and 0 <= ny < m.n and (nx, ny) not in m.walls and (nx, ny) not in dist:
                dist[(nx, ny)] = dist[(x, y)] + 1
                queue.append((nx, ny))
    return dist


def tasks(n, count, seed):
    """The first task of each of `count` layouts that have one."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        found = maze.layout_tasks(n, rng)[1]
        out += found[:1]
    return out


TASKS = {10: tasks(10, 300, 0), 20: tasks(20, 30, 1), 30: tasks(30, 15, 2)}
ALL = [m for ms in TASKS.values() for m in ms]


def check_trace(m, trace, dist):
    manhattan = lambda x, y: abs(x - m.goal[0]) + abs(y - m.goal[1])  # noqa: E731
    assert trace[0] == ("create", *m.start, 0, manhattan(*m.start))
    assert trace[-1][:3] == ("close", *m.goal)
    created, closed = {}, set()
    for kind, x, y, g, h in trace:
        assert kind in ("create", "close")
        assert h == manhattan(x, y)
        assert (x, y) not in closed  # consistent heuristic: nothing is re-opened or re-closed
        if kind == "create":
            assert g >= dist[(x, y)]
            assert g < created.get((x, y), g + 1)  # re-created only with a lower g
            created[(x, y)] = g
        else:
            assert (x, y) in created
            assert g == dist[(x, y)] == created[(x, y)]
            closed.add((x, y))


@pytest.mark.parametrize("mode", ["det", "nondet"])
def test_astar_optimal_and_trace_consistent(mode):
    for k, m in enumerate(ALL):
        rng = np.random.default_rng(k) if mode == "nondet" else None
        trace, plan = maze.astar(m, rng)
        dist = bfs(m, m.start)
        assert maze.check_plan(m, plan)
        assert len(plan) == dist[m.goal] + 1 == maze.bfs_distance(m, m.start, m.goal) + 1
        check_trace(m, trace, dist)


def test_astar_unsolvable_and_trivial():
    m = Maze(3, frozenset({(1, 0), (1, 1), (1, 2)}), (0, 0), (2, 2))
    trace, plan = maze.astar(m)
    assert plan == [] and maze.bfs_distance(m, m.start, m.goal) is None
    assert {s[1:3] for s in trace} == {(0, 0), (0, 1), (0, 2)}


def test_nondeterminism():
    m = max(TASKS[10], key=lambda t: len(maze.astar(t)[0]))
    assert maze.astar(m) == maze.astar(m)
    traces = {tuple(maze.astar(m, np.random.default_rng(s))[0]) for s in range(10)}
    assert len(traces) > 1
    plans = {len(maze.astar(m, np.random.default_rng(s))[1]) for s in range(10)}
    assert plans == {len(maze.astar(m)[1])}
    # the same rng state gives the same trace
    assert maze.astar(m, np.random.default_rng(5)) == maze.astar(m, np.random.default_rng(5))


@pytest.mark.parametrize("n", [10, 20, 30])
def test_layout_tasks_rule(n):
    rng = np.random.default_rng(n)
    for _ in range(20 if n == 10 else 4):
        walls, found = maze.layout_tasks(n, rng)
        assert n * n // 10 * 3 <= len(walls) <= n * n // 10 * 5
        assert all(0 <= x < n and 0 <= y < n for x, y in walls)
        assert len(found) <= maze.TRIES and len({(m.start, m.goal) for m in found}) == len(found)
        for m in found:
            assert m.walls == walls and m.n == n
            assert m.start != m.goal and m.start not in m.walls and m.goal not in m.walls
            assert bfs(m, m.start)[m.goal] + 1 >= n


def test_random_layout_fraction():
    rng = np.random.default_rng(3)
    counts = [len(maze.random_layout(10, rng)) for _ in range(500)]
    assert min(counts) >= 30 and max(counts) <= 50 and max(counts) - min(counts) > 10


def test_layout_key():
    a, b = TASKS[10][0], TASKS[10][1]
    assert a.layout_key() == Maze(a.n, a.walls, a.goal, a.start).layout_key()
    assert a.layout_key() != b.layout_key()
    assert isinstance(a.layout_key(), bytes)


def test_round_trips():
    for m in ALL[:50] + TASKS[30]:
        assert maze.parse_prompt(maze.prompt_tokens(m), m.n) == m
        plan = maze.astar(m)[1]
        assert maze.parse_plan(maze.plan_tokens(plan)) == plan
    assert maze.parse_plan([]) == []
    p = maze.prompt_tokens(TASKS[10][0])
    walls = [(int(p[k + 1]), int(p[k + 2])) for k in range(6, len(p), 3)]
    assert walls == sorted(walls, key=lambda c: (c[1], c[0]))


@pytest.mark.parametrize("tokens", [
    [], ["start", "1", "2"], ["goal", "1", "2", "start", "3", "4"],
    ["start", "1", "2", "goal", "3", "4", "wall", "5"],
    ["start", "1", "2", "goal", "3", "4", "plan", "5", "5"],
    ["start", "1", "2", "goal", "3", "10"], ["start", "-1", "2", "goal", "3", "4"],
    ["start", "01", "2", "goal", "3", "4"], ["start", "x", "2", "goal", "3", "4"],
    ["start", "1", "2", "goal", "1", "2"],
    ["start", "1", "2", "goal", "3", "4", "wall", "1", "2"],
    ["start", "1", "2", "goal", "3", "4", "wall", "5", "5", "wall", "5", "5"],
])
def test_parse_prompt_malformed(tokens):
    with pytest.raises(ValueError):
        maze.parse_prompt(tokens, 10)


@pytest.mark.parametrize("tokens", [
    ["plan", "1"], ["plan", "1", "2", "plan"], ["wall", "1", "2"], ["plan", "a", "2"],
    ["plan", "1", "-2"], ["plan", "1", "c3"], ["plan", "1", "2", "close", "1", "3"],
])
def test_parse_plan_malformed(tokens):
    assert maze.parse_plan(tokens) is None


def test_check_plan_rejects():
    m = Maze(4, frozenset({(1, 1)}), (0, 0), (2, 0))
    assert maze.check_plan(m, [(0, 0), (1, 0), (2, 0)])
    assert not maze.check_plan(m, [])
    assert not maze.check_plan(m, [(0, 1), (0, 0), (1, 0), (2, 0)])  # wrong start
    assert not maze.check_plan(m, [(0, 0), (1, 0)])  # wrong end
    assert not maze.check_plan(m, [(0, 0), (2, 0)])  # jump
    assert not maze.check_plan(m, [(0, 0), (1, 0), (1, 0), (2, 0)])  # standing still
    assert not maze.check_plan(m, [(0, 0), (0, 1), (1, 1), (2, 1), (2, 0)])  # through a wall
    m = Maze(4, frozenset(), (0, 0), (3, 0))
    assert not maze.check_plan(m, [(0, 0), (0, -1), (1, -1), (2, -1), (3, -1), (3, 0)])  # off grid
    m = Maze(4, frozenset(), (0, 0), (0, 3))
    assert not maze.check_plan(m, [(0, 0), (-1, 0), (-1, 1), (-1, 2), (-1, 3), (0, 3)])


def test_vocabulary():
    v = maze.vocabulary(10)
    assert len(v) == len(set(v)) == 6 + 10 + 101
    assert v == maze.vocabulary(10) and v[:6] == list(maze.KEYWORDS)


@pytest.mark.parametrize("n", [10, 20, 30])
@pytest.mark.parametrize("nondet", [False, True])
def test_generate(n, nondet):
    out = maze.generate(n, 3, 123, nondet)
    assert 1 <= len(out) <= 3
    vocab = set(maze.vocabulary(n))
    for layout, tasks in out:
        assert tasks
        for t in tasks:
            assert set(t) == {"prompt", "trace", "plan"}
            for part in ("prompt", "trace", "plan"):
                assert set(t[part]) <= vocab
            assert len(t["trace"]) % 5 == 0 and len(t["plan"]) % 3 == 0
            m = maze.parse_prompt(t["prompt"], n)
            assert layout == m.layout_key()
            plan = maze.parse_plan(t["plan"])
            assert maze.check_plan(m, plan) and len(plan) == bfs(m, m.start)[m.goal] + 1
            if not nondet:
                assert t["trace"] == maze.trace_tokens(maze.astar(m)[0])
    assert out == maze.generate(n, 3, 123, nondet)
    other = maze.generate(n, 3, 124, nondet)
    assert [k for k, _ in other] != [k for k, _ in out]


def test_maze_render():
    m = maze.Maze(3, frozenset({(1, 1)}), (0, 0), (2, 2))
    assert maze.render(m, [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]) == "Soo\n.#o\n..G"
    assert maze.render(m) == "S..\n.#.\n..G"
