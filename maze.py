"""Random n x n mazes, an A* solver that logs its search, and the token format.

A maze is an n x n grid (n in {10, 20, 30}) with 30-50% of its cells walls, a start and a goal.
x is the column, y the row; coordinates are the tokens "0".."n-1", costs the tokens "c0".."c{n*n}".

Token format (one sequence per task):
  prompt: `start x y goal x y`, then `wall x y` for every wall in row-major order (by y, then x).
  trace:  one 5-token step per A* event: `create x y cG cH` when a node is pushed on the frontier
          (the start first, with g=0) or `close x y cG cH` when it is expanded. G is the cost from
          the start, H the Manhattan distance to the goal. The trace ends with the close of the goal.
  plan:   `plan x y` for every cell from the start to the goal, inclusive.

Tasks follow the reference's rule (`layout_tasks`): for each random wall layout, every distinct
(start, goal) pair among 100 random attempts whose optimal plan has at least n states is a task,
so a dataset holds about 16-18 tasks per layout, all in one split.

A* follows the reference's rules (astar.py): unit step costs, the 4-neighbourhood, the Manhattan
heuristic (consistent, so a closed node is never re-opened; a frontier node reached on a better
path is replaced and logged as a new `create`). Deterministic A* breaks f-ties by the lower
x + 100000 * y (row by row) and visits children in the order (x, y+1), (x, y-1), (x-1, y),
(x+1, y); nondeterministic A* shuffles the children and decides each f-tie comparison by a coin
flip, both drawn from the caller's numpy Generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from astar import Space, search
from grid import coord, parse_plan, plan_tokens  # noqa: F401 (parse_plan: the plan format is the grid tasks')

KEYWORDS = ("start", "goal", "wall", "create", "close", "plan")
TRIES = 100  # (start, goal) attempts per wall layout
# the generation rule, recorded with each dataset: datasets without it were made by the earlier
# rule (one task per layout, A* f-ties broken by h then row-major order)
RULE = "reference"


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
    """(xs, ys, interior) for the padded grid: cell coordinates per index and the wall-free grid."""
    width = n + 2
    xs = [i % width - 1 for i in range(width * width)]
    ys = [i // width - 1 for i in range(width * width)]
    interior = bytes(1 if 0 <= xs[i] < n and 0 <= ys[i] < n else 0 for i in range(width * width))
    return xs, ys, interior


def _free(n, walls) -> bytearray:
    free = bytearray(_tables(n)[2])
    width = n + 2
    for x, y in walls:
        free[(y + 1) * width + x + 1] = 0
    return free


def _distances(free, width, a) -> dict:
    """BFS steps from index a to every index reachable from it on the padded grid."""
    dist, queue = {a: 0}, [a]
    for i in queue:  # the list grows while we walk it: a FIFO queue
        for j in (i - width, i + 1, i + width, i - 1):
            if free[j] and j not in dist:
                dist[j] = dist[i] + 1
                queue.append(j)
    return dist


def bfs_distance(maze: Maze, a, b) -> int | None:
    """Shortest number of steps from cell a to cell b, None if unreachable."""
    width = maze.n + 2
    free = _free(maze.n, maze.walls)
    ia, ib = (a[1] + 1) * width + a[0] + 1, (b[1] + 1) * width + b[0] + 1
    return _distances(free, width, ia).get(ib) if free[ia] else None


# --- task generation (the reference's rule)


def random_layout(n: int, rng: np.random.Generator) -> frozenset:
    """n*n//10*3 to n*n//10*5 walls (inclusive) on a uniformly random set of cells."""
    k = int(rng.integers(n * n // 10 * 3, n * n // 10 * 5 + 1))
    cells = rng.choice(n * n, size=k, replace=False)
    return frozenset((int(c) % n, int(c) // n) for c in cells)


def layout_tasks(n: int, rng: np.random.Generator) -> tuple[frozenset, list[Maze]]:
    """One random wall layout and every distinct qualifying task on it.

    As the reference does: 100 attempts, each a uniformly random ordered pair of distinct free cells
    as (start, goal); an attempt qualifies when the goal is reachable and the optimal plan has at
    least n states. Tasks come in the order of their first qualifying attempt."""
    walls = random_layout(n, rng)
    width = n + 2
    free = _free(n, walls)
    cells = [i for i in range(width * width) if free[i]]
    # all pairs are drawn up front so the rng use per layout does not depend on the outcome
    a = rng.integers(len(cells), size=TRIES)
    b = rng.integers(len(cells) - 1, size=TRIES)
    b += b >= a  # distinct and uniform over ordered pairs, as the first two of a shuffle
    xs, ys = _tables(n)[:2]
    dist, seen, out = {}, set(), []
    for s, g in zip(a.tolist(), b.tolist()):
        s, g = cells[s], cells[g]
        if s not in dist:
            dist[s] = _distances(free, width, s)
        d = dist[s].get(g)
        if d is not None and d + 1 >= n and (s, g) not in seen:
            seen.add((s, g))
            out.append(Maze(n, walls, (xs[s], ys[s]), (xs[g], ys[g])))
    return walls, out


# --- A* (the reference's rules, see astar.py)


def astar(maze: Maze, rng: np.random.Generator | None = None):
    """Returns (trace, plan): trace steps ("create" | "close", x, y, g, h) and the plan as (x, y)
    cells from start to goal ([] if unsolvable). Deterministic when rng is None: equal f is broken
    by the lower x + 100000 * y; children come in the order (x, y+1), (x, y-1), (x-1, y), (x+1, y)."""
    n, width = maze.n, maze.n + 2
    xs, ys, _ = _tables(n)
    free = _free(n, maze.walls)
    gx, gy = maze.goal
    start, goal = (maze.start[1] + 1) * width + maze.start[0] + 1, (gy + 1) * width + gx + 1
    order = (width, -width, -1, 1)  # padded index offsets of (x, y+1), (x, y-1), (x-1, y), (x+1, y)

    def expand(i):
        return [(j, abs(xs[j] - gx) + abs(ys[j] - gy)) for j in (i + d for d in order) if free[j]]

    found = search(start, abs(xs[start] - gx) + abs(ys[start] - gy), expand, goal.__eq__,
                   tie=lambda i: xs[i] + 100000 * ys[i], rng=rng)
    log, plan = found
    trace = [("create" if create else "close", xs[i], ys[i], g, h) for create, i, g, h in log]
    return trace, [(xs[i], ys[i]) for i in plan or ()]


# --- tokens


def prompt_tokens(maze: Maze) -> list[str]:
    out = ["start", str(maze.start[0]), str(maze.start[1]), "goal", str(maze.goal[0]), str(maze.goal[1])]
    walls = sorted(maze.walls, key=lambda c: (c[1], c[0]))  # row-major
    return out + [t for x, y in walls for t in ("wall", str(x), str(y))]


def trace_tokens(trace) -> list[str]:
    return [t for kind, x, y, g, h in trace for t in (kind, str(x), str(y), f"c{g}", f"c{h}")]


def parse_prompt(tokens: list[str], n: int) -> Maze:
    """Inverse of prompt_tokens; raises ValueError on malformed input."""
    tokens = list(tokens)
    if len(tokens) < 6 or len(tokens) % 3 or tokens[0] != "start" or tokens[3] != "goal":
        raise ValueError("prompt must be `start x y goal x y` followed by `wall x y` triples")
    start = (coord(tokens[1], n), coord(tokens[2], n))
    goal = (coord(tokens[4], n), coord(tokens[5], n))
    walls = []
    for k in range(6, len(tokens), 3):
        if tokens[k] != "wall":
            raise ValueError(f"expected 'wall' at {k}, got {tokens[k]!r}")
        walls.append((coord(tokens[k + 1], n), coord(tokens[k + 2], n)))
    wallset = frozenset(walls)
    if len(wallset) != len(walls) or start in wallset or goal in wallset or start == goal:
        raise ValueError("duplicate walls, or start/goal on a wall or equal")
    return Maze(n, wallset, start, goal)


def search_space(maze: Maze) -> Space:
    """A* over the maze's cells as (x, y) states, children in the deterministic order (traces.py)."""
    n, (gx, gy) = maze.n, maze.goal

    def expand(cell):
        x, y = cell
        return [((a, b), abs(a - gx) + abs(b - gy)) for a, b in ((x, y + 1), (x, y - 1), (x - 1, y), (x + 1, y))
                if 0 <= a < n and 0 <= b < n and (a, b) not in maze.walls]

    start = maze.start
    return Space(start, abs(start[0] - gx) + abs(start[1] - gy), expand, maze.goal.__eq__,
                 lambda c: (str(c[0]), str(c[1])), lambda c: c)


WRONG_END = "does not end at the goal"


def plan_fault(maze: Maze, plan) -> tuple[int, str] | None:
    """(index of the first bad state, why) for a plan that is not a walk from start to goal in
    4-neighbour moves over free in-grid cells; None for a correct plan."""
    if not plan:
        return 0, "empty"
    if tuple(plan[0]) != maze.start:
        return 0, "does not start at the start"
    for k, (x, y) in enumerate(plan[1:], 1):
        if not (0 <= x < maze.n and 0 <= y < maze.n):
            return k, "off the grid"
        if abs(x - plan[k - 1][0]) + abs(y - plan[k - 1][1]) != 1:
            return k, "not adjacent"
        if (x, y) in maze.walls:
            return k, "into a wall"
    return None if tuple(plan[-1]) == maze.goal else (len(plan) - 1, WRONG_END)


def check_plan(maze: Maze, plan) -> bool:
    """True if plan goes from start to goal in 4-neighbour moves over free in-grid cells."""
    return plan_fault(maze, plan) is None


def reference_check(maze: Maze, plan) -> bool:
    """The reference's more lenient check: starts at the start, ends at the goal, steps of one cell,
    no wall (cells outside the grid are not refused)."""
    return (tuple(plan[0]) == maze.start and tuple(plan[-1]) == maze.goal and not any(c in maze.walls for c in plan)
            and all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(plan, plan[1:])))


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


def generate(n: int, layouts: int, seed: int, nondeterministic: bool) -> list[tuple[bytes, list[dict]]]:
    """`layouts` random wall layouts, each with its tasks and their A* traces (one pool job),
    reproducible from the arguments: [(layout key, [task, ...])]; a layout without a qualifying
    task is dropped, as the reference drops it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layouts):
        walls, found = layout_tasks(n, rng)
        tasks = []
        for maze in found:
            trace, plan = astar(maze, rng if nondeterministic else None)
            tasks.append({"prompt": prompt_tokens(maze), "trace": trace_tokens(trace), "plan": plan_tokens(plan)})
        if tasks:
            out.append((found[0].layout_key(), tasks))
    return out


def mean_trace_len(maze: Maze, runs: int, seed: int, nondeterministic: bool) -> float:
    """Mean A* trace length in tokens over `runs` seeded runs (deterministic A* has one trace)."""
    if not nondeterministic:
        return len(trace_tokens(astar(maze)[0]))
    rng = np.random.default_rng(seed)
    return sum(len(trace_tokens(astar(maze, rng)[0])) for _ in range(runs)) / runs
