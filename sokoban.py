"""Sokoban "7722" levels, a nondeterministic A* solver that logs its search, and the token format.

A level is a 7x7 grid with a wall border, 2 interior walls, 2 boxes (starting in the inner 3x3),
2 docks and 1 worker. x is the column, y the row; coordinates are the tokens "0".."6".

Token format (one sequence per level):
  prompt: `worker x y`, `box x y` per box, `dock x y` per dock, `wall x y` per wall (border
          included); each group in row-major order.
  trace:  one step per A* event, `create worker x y box x y ... cG cH` when a node is pushed on
          the frontier (the start first, with g=0) or `close worker x y box x y ... cG cH` when it
          is expanded. Boxes already on a dock are left out. The trace ends with the close of the
          first solved state.
  plan:   `plan x y` for every worker position from the start to the final one, inclusive.
Costs are the tokens "c0".."c{COST_MAX}"; the generator rejects levels that would need more.

Heuristic: the sum over boxes of the Manhattan distance to the nearest dock (free or not). Every
box must travel at least that far, each push is one worker move, and one move shifts at most one
box by one cell, so h is admissible and consistent; A* with a closed set thus returns an optimal
plan without re-opening. A box off-dock in a corner (walls on two orthogonal sides) can never move
again, so such states get h = infinity and are pruned (never created); they cannot reach a goal.
Nondeterminism: children are expanded in a random order and frontier ties on f = g + h are broken
by a random number, both drawn from the caller's numpy Generator.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np

SIZE = 7
KEYWORDS = ("worker", "box", "dock", "wall", "create", "close", "plan")
# over 20,000 random draws the largest g in any trace was 41 and the largest h 12 (optimal plans
# reach 41 moves), so 63 leaves ample room; rarer levels beyond it are rejected by generate()
COST_MAX = 63

_INF = 1 << 20
_PERMS = list(itertools.permutations(range(4)))
_BORDER = frozenset((x, y) for y in range(SIZE) for x in range(SIZE)
                    if x in (0, SIZE - 1) or y in (0, SIZE - 1))
_INTERIOR = [(x, y) for y in range(1, SIZE - 1) for x in range(1, SIZE - 1)]
_INNER = [(x, y) for y in range(2, SIZE - 2) for x in range(2, SIZE - 2)]
_NUM = {str(i): i for i in range(SIZE)}


def vocabulary() -> list[str]:
    return list(KEYWORDS) + [str(i) for i in range(SIZE)] + [f"c{i}" for i in range(COST_MAX + 1)]


def _rowmajor(cells) -> tuple:
    return tuple(sorted(cells, key=lambda c: (c[1], c[0])))


@dataclass(frozen=True)
class Level:
    walls: frozenset
    boxes: tuple  # sorted
    docks: tuple  # sorted
    worker: tuple

    def key(self) -> bytes:
        # one byte per cell (bit 0 wall, 1 box, 2 dock), then the worker's cell
        code = bytearray(SIZE * SIZE + 1)
        for cells, bit in ((self.walls, 1), (self.boxes, 2), (self.docks, 4)):
            for x, y in cells:
                code[y * SIZE + x] |= bit
        code[-1] = self.worker[1] * SIZE + self.worker[0]
        return bytes(code)


def random_level(rng: np.random.Generator) -> Level:
    boxes = [_INNER[i] for i in rng.choice(len(_INNER), size=2, replace=False)]
    free = [c for c in _INTERIOR if c not in boxes]
    # five distinct free cells: two interior walls, two docks, the worker
    picks = [free[i] for i in rng.choice(len(free), size=5, replace=False)]
    return Level(walls=_BORDER | frozenset(picks[:2]), boxes=tuple(sorted(boxes)),
                 docks=tuple(sorted(picks[2:4])), worker=picks[4])


def _tables(level: Level):
    """Neighbour table (-1 = blocked) and per-cell box cost (distance to nearest dock, or _INF)."""
    def blocked(x, y):  # cells off the grid count as walls, so borderless levels stay safe
        return not (0 <= x < SIZE and 0 <= y < SIZE) or (x, y) in level.walls

    nbr, hcell = [], []
    for c in range(SIZE * SIZE):
        x, y = c % SIZE, c // SIZE
        nbr.append([-1 if blocked(x + dx, y + dy) else c + dx + dy * SIZE
                    for dx, dy in ((0, -1), (1, 0), (0, 1), (-1, 0))])
        near = min(abs(x - dx) + abs(y - dy) for dx, dy in level.docks)
        cornered = ((blocked(x, y - 1) or blocked(x, y + 1))
                    and (blocked(x - 1, y) or blocked(x + 1, y)))
        hcell.append(_INF if cornered and near > 0 else near)
    dockmask = sum(1 << (y * SIZE + x) for x, y in level.docks)
    return nbr, hcell, dockmask


def _randoms(rng: np.random.Generator):
    # batched draws: one numpy call per 256 numbers instead of one per use
    while True:
        yield from rng.random(256).tolist()


def astar(level: Level, rng: np.random.Generator, max_steps: int | None = None, *,
          max_tokens: int | None = None):
    """Optimal plan and trace, or None if unsolvable or past max_steps steps / max_tokens tokens."""
    nbr, hcell, dockmask = _tables(level)
    rnd = _randoms(rng).__next__
    w0 = level.worker[1] * SIZE + level.worker[0]
    m0 = sum(1 << (y * SIZE + x) for x, y in level.boxes)
    h0 = sum(hcell[y * SIZE + x] for x, y in level.boxes)
    if h0 >= _INF:
        return None
    undocked = ~dockmask
    steps = max_steps if max_steps is not None else _INF
    tokens = max_tokens if max_tokens is not None else _INF
    start = m0 << 6 | w0  # state: box bitmask above, worker cell in the low 6 bits
    best, parent, closed = {start: 0}, {start: None}, set()
    log = [(True, start, 0, h0)]
    ntok = 6 + 3 * (m0 & undocked).bit_count()
    heap = [(h0 + rnd(), 0, h0, start)]
    while heap:
        _, g, h, s = heapq.heappop(heap)
        if s in closed or g > best[s]:
            continue  # stale frontier entry
        closed.add(s)
        log.append((False, s, g, h))
        w, m = s & 63, s >> 6
        ntok += 6 + 3 * (m & undocked).bit_count()
        if len(log) > steps or ntok > tokens:
            return None
        if h == 0:  # h is zero exactly when every box is on a dock
            return _trace(log, level), _plan(parent, s)
        row = nbr[w]
        for d in _PERMS[int(rnd() * 24)]:
            c = row[d]
            if c < 0:
                continue
            ch, cm = h, m
            if m >> c & 1:
                b = nbr[c][d]
                if b < 0 or m >> b & 1:
                    continue
                ch = h - hcell[c] + hcell[b]
                if ch >= _INF:
                    continue  # box pushed into a dead corner
                cm = m ^ (1 << c) ^ (1 << b)
            t, cg = cm << 6 | c, g + 1
            if t in closed or best.get(t, _INF) <= cg:
                continue
            best[t], parent[t] = cg, s
            heapq.heappush(heap, (cg + ch + rnd(), cg, ch, t))
            log.append((True, t, cg, ch))
            ntok += 6 + 3 * (cm & undocked).bit_count()
            if len(log) > steps or ntok > tokens:
                return None
    return None


def _cell(c: int) -> tuple[int, int]:
    return c % SIZE, c // SIZE


def _trace(log, level: Level) -> list[tuple]:
    undocked = ~sum(1 << (y * SIZE + x) for x, y in level.docks)
    cache = {}
    out = []
    for create, s, g, h in log:
        m = (s >> 6) & undocked
        if m not in cache:
            cache[m] = tuple(_cell(c) for c in range(SIZE * SIZE) if m >> c & 1)
        out.append(("create" if create else "close", _cell(s & 63), cache[m], g, h))
    return out


def _plan(parent: dict, s: int) -> list[tuple[int, int]]:
    path = []
    while s is not None:
        path.append(_cell(s & 63))
        s = parent[s]
    return path[::-1]


def prompt_tokens(level: Level) -> list[str]:
    out = ["worker", str(level.worker[0]), str(level.worker[1])]
    for name, cells in (("box", level.boxes), ("dock", level.docks), ("wall", level.walls)):
        for x, y in _rowmajor(cells):
            out += [name, str(x), str(y)]
    return out


def trace_tokens(trace) -> list[str]:
    out = []
    for kind, (wx, wy), boxes, g, h in trace:
        out += [kind, "worker", str(wx), str(wy)]
        for x, y in boxes:
            out += ["box", str(x), str(y)]
        out += [f"c{g}", f"c{h}"]
    return out


def plan_tokens(plan) -> list[str]:
    return [t for x, y in plan for t in ("plan", str(x), str(y))]


def _triples(tokens: list[str]):
    if len(tokens) % 3:
        raise ValueError("token count is not a multiple of 3")
    for i in range(0, len(tokens), 3):
        name, x, y = tokens[i:i + 3]
        if x not in _NUM or y not in _NUM:
            raise ValueError(f"bad coordinates {x!r} {y!r}")
        yield name, (_NUM[x], _NUM[y])


def parse_prompt(tokens: list[str]) -> Level:
    groups = {"worker": [], "box": [], "dock": [], "wall": []}
    order = list(groups)
    last = 0
    for name, cell in _triples(list(tokens)):
        if name not in groups or order.index(name) < last:
            raise ValueError(f"unexpected {name!r}")
        last = order.index(name)
        groups[name].append(cell)
    worker, boxes, docks, walls = (groups[k] for k in order)
    if len(worker) != 1 or not boxes or len(boxes) != len(docks):
        raise ValueError("need one worker and as many docks as boxes (at least one)")
    if any(len(set(cells)) != len(cells) for cells in (boxes, docks, walls)):
        raise ValueError("duplicate cell")
    if (set(boxes) | set(docks) | set(worker)) & set(walls) or worker[0] in boxes:
        raise ValueError("overlapping objects")
    return Level(walls=frozenset(walls), boxes=tuple(sorted(boxes)), docks=tuple(sorted(docks)),
                 worker=worker[0])


def parse_plan(tokens: list[str]) -> list[tuple[int, int]] | None:
    try:
        triples = list(_triples(list(tokens)))
    except ValueError:
        return None
    if not triples or any(name != "plan" for name, _ in triples):
        return None
    return [cell for _, cell in triples]


def _free(level: Level, x: int, y: int) -> bool:
    return 0 <= x < SIZE and 0 <= y < SIZE and (x, y) not in level.walls


def simulate(level: Level, plan: list[tuple[int, int]]) -> bool:
    if not plan or tuple(plan[0]) != tuple(level.worker):
        return False
    boxes = set(level.boxes)
    x, y = level.worker
    for nx, ny in plan[1:]:
        dx, dy = nx - x, ny - y
        if abs(dx) + abs(dy) != 1 or not _free(level, nx, ny):
            return False
        if (nx, ny) in boxes:
            bx, by = nx + dx, ny + dy
            if (bx, by) in boxes or not _free(level, bx, by):
                return False
            boxes.remove((nx, ny))
            boxes.add((bx, by))
        x, y = nx, ny
    return boxes == set(level.docks)


def render(level: Level, plan=None) -> str:
    grid = [[" "] * SIZE for _ in range(SIZE)]
    for x, y in plan or ():
        grid[y][x] = "o"
    for x, y in level.walls:
        grid[y][x] = "#"
    for x, y in level.docks:
        grid[y][x] = "."
    for x, y in level.boxes:
        grid[y][x] = "*" if grid[y][x] == "." else "$"
    x, y = level.worker
    grid[y][x] = "+" if grid[y][x] == "." else "@"
    return "\n".join("".join(row) for row in grid)


def generate(count: int, seed: int, max_trace_tokens: int = 10000) -> list[dict]:
    rng = np.random.default_rng(seed)
    out, tries = [], 0
    while len(out) < count:
        level = random_level(rng)
        tries += 1
        # a trace of max_trace_tokens tokens or more is unusable
        res = astar(level, rng, max_tokens=max_trace_tokens - 1)
        if res is None or max(max(st[3], st[4]) for st in res[0]) > COST_MAX:
            continue
        trace, plan = res
        out.append({"key": level.key(), "prompt": prompt_tokens(level),
                    "trace": trace_tokens(trace), "plan": plan_tokens(plan), "tries": tries})
        tries = 0
    return out


def mean_trace_len(level: Level, runs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    total = 0
    for _ in range(runs):
        res = astar(level, rng)
        if res is None:
            raise ValueError("level is unsolvable")
        total += len(trace_tokens(res[0]))
    return total / runs
