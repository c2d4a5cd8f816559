"""Random n x n mazes, an A* solver that logs its search, and the token format.

A maze is an n x n grid (n in {10, 20, 30}) with 30-50% of its cells walls, a start and a goal.
x is the column, y the row; coordinates are the tokens "0".."n-1", costs the tokens "c0".."c{n*n}".

Token format (one sequence per task):
  prompt: `start x y goal x y`, then `wall x y` for every wall in row-major order (by y, then x).
  trace:  one 5-token step per A* event: `create x y cG cH` when a node is pushed on the frontier
          (the start first, with g=0) or `close x y cG cH` when it is expanded. G is the cost from
          the start, H the Manhattan distance to the goal. The trace ends with the close of the goal.
  plan:   `plan x y` for every cell from the start to the goal, inclusive.

A* uses unit step costs and the 4-neighbourhood; Manhattan distance is consistent there, so a
closed node is never re-opened. A frontier node may be re-created with a lower g (logged as a
new `create`); the older, worse entry is skipped when popped.
Tie-breaks: deterministic A* pops the lowest f, then the lowest h (i.e. the highest g), then the
first cell in row-major order (lowest y, then lowest x); children are visited up, right, down,
left. Nondeterministic A* shuffles the child order at every expansion and breaks ties on f by a
random number, both drawn from the caller's numpy Generator.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

KEYWORDS = ("start", "goal", "wall", "create", "close", "plan")
TRIES = 100  # (start, goal) pairs tried per wall layout


def vocabulary(n: int) -> list[str]:
    return list(KEYWORDS) + [str(i) for i in range(n)] + [f"c{i}" for i in range(n * n + 1)]


@dataclass(frozen=True)
class Maze:
    n: int
    walls: frozenset  # of (x, y)
    start: tuple
    goal: tuple

    def layout_key(self) -> bytes:
        """The wall layout only: n, then the row-major wall bitmap packed into bytes."""
        grid = np.zeros(self.n * self.n, dtype=bool)
        grid[[y * self.n + x for x, y in self.walls]] = True
        return self.n.to_bytes(2, "little") + np.packbits(grid).tobytes()


# --- padded grid: cell (x, y) is index (y + 1) * (n + 2) + x + 1, the border is all wall, so
# neighbour look-ups need no bounds checks; index order is row-major order


@lru_cache(maxsize=None)
def _tables(n):
    """(xs, ys, interior, orders) for the padded grid: cell coordinates per index, the wall-free
    grid, and the 24 orders of the neighbour offsets up, right, down, left (first one unshuffled)."""
    w = n + 2
    xs = [i % w - 1 for i in range(w * w)]
    ys = [i // w - 1 for i in range(w * w)]
    interior = bytes(1 if 0 <= xs[i] < n and 0 <= ys[i] < n else 0 for i in range(w * w))
    orders = [tuple((-w, 1, w, -1)[k] for k in p) for p in itertools.permutations(range(4))]
    return xs, ys, interior, orders


def _free(n, walls) -> bytearray:
    free = bytearray(_tables(n)[2])
    w = n + 2
    for x, y in walls:
        free[(y + 1) * w + x + 1] = 0
    return free


def _distances(free, w, a) -> dict:
    """BFS steps from index a to every index reachable from it on the padded grid."""
    dist, queue = {a: 0}, [a]
    for i in queue:  # the list grows while we walk it: a FIFO queue
        for j in (i - w, i + 1, i + w, i - 1):
            if free[j] and j not in dist:
                dist[j] = dist[i] + 1
                queue.append(j)
    return dist


def bfs_distance(maze: Maze, a, b) -> int | None:
    """Shortest number of steps from cell a to cell b, None if unreachable."""
    w = maze.n + 2
    free = _free(maze.n, maze.walls)
    ia, ib = (a[1] + 1) * w + a[0] + 1, (b[1] + 1) * w + b[0] + 1
    return _distances(free, w, ia).get(ib) if free[ia] else None


# --- task generation


def random_layout(n: int, rng: np.random.Generator) -> frozenset:
    k = int(rng.integers((3 * n * n + 9) // 10, n * n // 2 + 1))  # 30%..50% of the cells
    cells = rng.choice(n * n, size=k, replace=False)
    return frozenset((int(c) % n, int(c) // n) for c in cells)


def make_task(n: int, rng: np.random.Generator) -> Maze | None:
    """One random layout; the first of up to 100 random (start, goal) pairs that is solvable with
    an optimal plan of at least n states, or None if there is none."""
    walls = random_layout(n, rng)
    w = n + 2
    free = _free(n, walls)
    cells = [i for i in range(w * w) if free[i]]
    # all pairs are drawn up front so the rng use per layout does not depend on the outcome
    a = rng.integers(len(cells), size=TRIES)
    b = rng.integers(len(cells) - 1, size=TRIES)
    b += b >= a  # distinct and uniform over ordered pairs
    comp = {}  # free index -> a representative of its connected component
    for c in cells:
        if c not in comp:
            comp.update(dict.fromkeys(_distances(free, w, c), c))
    xs, ys = _tables(n)[:2]
    for s, g in zip(a.tolist(), b.tolist()):
        s, g = cells[s], cells[g]
        if comp[s] != comp[g]:
            continue
        # a plan never beats the Manhattan distance, so BFS is only needed for close pairs
        if abs(xs[s] - xs[g]) + abs(ys[s] - ys[g]) >= n - 1 or _distances(free, w, s)[g] >= n - 1:
            return Maze(n, walls, (xs[s], ys[s]), (xs[g], ys[g]))
    return None


# --- A*


def astar(maze: Maze, rng: np.random.Generator | None = None):
    """Returns (trace, plan): trace steps ("create" | "close", x, y, g, h) and the plan as (x, y)
    cells from start to goal ([] if unsolvable). Deterministic when rng is None."""
    n, w = maze.n, maze.n + 2
    xs, ys, _, orders = _tables(n)
    free = _free(n, maze.walls)
    gx, gy = maze.goal
    start, goal = (maze.start[1] + 1) * w + maze.start[0] + 1, (gy + 1) * w + gx + 1
    nondet = rng is not None
    if nondet:
        # drawn up front in bulk (cheaper than per push): each node is pushed at most once per
        # neighbour plus the start, and expanded at most once
        keys = rng.random(4 * n * n + 1).tolist()
        shuffles = rng.integers(24, size=n * n).tolist()
    best = [n * n + 1] * (w * w)
    parent, closed = {}, bytearray(w * w)
    h = abs(xs[start] - gx) + abs(ys[start] - gy)
    best[start] = 0
    heap = [(h, keys[0] if nondet else h, start, 0)]
    trace = [("create", xs[start], ys[start], 0, h)]
    pushes = expansions = 0
    while heap:
        _, _, i, gi = heapq.heappop(heap)
        if closed[i] or gi > best[i]:  # stale: i was re-created with a lower g or already closed
            continue
        closed[i] = 1
        trace.append(("close", xs[i], ys[i], gi, abs(xs[i] - gx) + abs(ys[i] - gy)))
        if i == goal:
            plan = [i]
            while plan[-1] != start:
                plan.append(parent[plan[-1]])
            return trace, [(xs[j], ys[j]) for j in reversed(plan)]
        order = orders[shuffles[expansions] if nondet else 0]
        expansions += 1
        gj = gi + 1
        for d in order:
            j = i + d
            if free[j] and not closed[j] and gj < best[j]:
                best[j], parent[j] = gj, i
                hj = abs(xs[j] - gx) + abs(ys[j] - gy)
                pushes += 1
                heapq.heappush(heap, (gj + hj, keys[pushes] if nondet else hj, j, gj))
                trace.append(("create", xs[j], ys[j], gj, hj))
    return trace, []


# --- tokens


def prompt_tokens(maze: Maze) -> list[str]:
    out = ["start", str(maze.start[0]), str(maze.start[1]), "goal", str(maze.goal[0]), str(maze.goal[1])]
    walls = sorted(maze.walls, key=lambda c: (c[1], c[0]))  # row-major
    return out + [t for x, y in walls for t in ("wall", str(x), str(y))]


def trace_tokens(trace) -> list[str]:
    return [t for kind, x, y, g, h in trace for t in (kind, str(x), str(y), f"c{g}", f"c{h}")]


def plan_tokens(plan) -> list[str]:
    return [t for x, y in plan for t in ("plan", str(x), str(y))]


def _coord(tok, n=None) -> int:
    # plain non-negative decimal only, so "+1", " 1" or "01" cannot sneak through int()
    if not isinstance(tok, str) or not tok.isdigit() or tok != str(int(tok)):
        raise ValueError(f"bad coordinate {tok!r}")
    v = int(tok)
    if n is not None and v >= n:
        raise ValueError(f"coordinate {v} outside a {n}x{n} grid")
    return v


def parse_prompt(tokens: list[str], n: int) -> Maze:
    """Inverse of prompt_tokens; raises ValueError on malformed input."""
    tokens = list(tokens)
    if len(tokens) < 6 or len(tokens) % 3 or tokens[0] != "start" or tokens[3] != "goal":
        raise ValueError("prompt must be `start x y goal x y` followed by `wall x y` triples")
    start = (_coord(tokens[1], n), _coord(tokens[2], n))
    goal = (_coord(tokens[4], n), _coord(tokens[5], n))
    walls = []
    for k in range(6, len(tokens), 3):
        if tokens[k] != "wall":
            raise ValueError(f"expected 'wall' at {k}, got {tokens[k]!r}")
        walls.append((_coord(tokens[k + 1], n), _coord(tokens[k + 2], n)))
    wallset = frozenset(walls)
    if len(wallset) != len(walls) or start in wallset or goal in wallset or start == goal:
        raise ValueError("duplicate walls, or start/goal on a wall or equal")
    return Maze(n, wallset, start, goal)


def parse_plan(tokens: list[str]) -> list[tuple[int, int]] | None:
    """`plan x y` triples -> [(x, y), ...]; None if malformed."""
    if len(tokens) % 3 or any(t != "plan" for t in tokens[::3]):
        return None
    try:
        return [(_coord(x), _coord(y)) for x, y in zip(tokens[1::3], tokens[2::3])]
    except ValueError:
        return None


def check_plan(maze: Maze, plan) -> bool:
    """True if plan goes from start to goal in 4-neighbour moves over free in-grid cells."""
    if not plan or tuple(plan[0]) != maze.start or tuple(plan[-1]) != maze.goal:
        return False
    n = maze.n
    for k, (x, y) in enumerate(plan):
        if not (0 <= x < n and 0 <= y < n) or (x, y) in maze.walls:
            return False
        if k and abs(x - plan[k - 1][0]) + abs(y - plan[k - 1][1]) != 1:
            return False
    return True


def render(maze: Maze, plan=None) -> str:
    """The maze as text: walls '#', start 'S', goal 'G', plan cells 'o', free cells '.'."""
    grid = [["."] * maze.n for _ in range(maze.n)]
    for x, y in plan or ():
        if 0 <= x < maze.n and 0 <= y < maze.n:  # a malformed plan may leave the grid
            grid[y][x] = "o"
    for x, y in maze.walls:
        grid[y][x] = "#"
    grid[maze.start[1]][maze.start[0]] = "S"
    grid[maze.goal[1]][maze.goal[0]] = "G"
    return "\n".join("".join(row) for row in grid)


def generate(n: int, count: int, seed: int, nondeterministic: bool) -> list[dict]:
    """Up to `count` tasks with A* traces, reproducible from the arguments (one pool job)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(100 * count):  # guard: give up rather than loop forever on hopeless settings
        if len(out) >= count:
            break
        maze = make_task(n, rng)
        if maze is None:
            continue
        trace, plan = astar(maze, rng if nondeterministic else None)
        out.append({"layout": maze.layout_key(), "prompt": prompt_tokens(maze),
                    "trace": trace_tokens(trace), "plan": plan_tokens(plan)})
    return out
