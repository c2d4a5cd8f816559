"""Sokoban "7722" levels, a nondeterministic A* solver that logs its search, and the token format.

A level is a 7x7 grid with a wall border, 2 interior walls, 2 boxes, 2 docks and 1 worker. x is
the column, y the row; coordinates are the tokens "0".."6".

Levels are drawn as the reference draws them (`random_level`): the border; 2 walls on random free
cells; the 2 boxes on random free cells of the inner 3x3 (2 or more cells from the border); the
worker on a random free cell; the 2 docks on random free cells. Unsolvable levels are skipped.

Token format (one sequence per level), positions sorted by x then y as the reference sorts them:
  prompt: `worker x y`, `box x y` per box, `dock x y` per dock, `wall x y` per wall (border
          included).
  trace:  one step per A* event, `create worker x y box x y ... cG cH` when a node is pushed on
          the frontier (the start first, with g=0) or `close worker x y box x y ... cG cH` when it
          is expanded. Boxes already on a dock are left out. The trace ends with the close of the
          first solved state.
  plan:   `plan x y` for every worker position from the start to the final one, inclusive.
Costs are the tokens "c0".."c{COST_MAX}"; the generator rejects levels that would need more.

Heuristic (the reference's): 0 when every box is docked; infinite when an undocked box can be
pushed along neither axis (a wall on at least one side horizontally and on at least one side
vertically; other boxes do not count), so such states are never created; else the sum over
undocked boxes of the Manhattan distance to the nearest dock that holds no box. That last term is
not admissible in every level (a box may be better off taking a docked box's place), so a plan is
the reference A*'s plan: optimal in all but rare levels, and always checked by simulation.
A* follows the reference's rules (astar.py): children shuffled, f-ties decided by coin flips,
states reached again on a better path re-opened.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import grid
from astar import Space, search
from grid import plan_tokens  # noqa: F401 (the plan format is the grid tasks')

SIZE = 7
KEYWORDS = ("worker", "box", "dock", "wall", "create", "close", "plan")
# over 20,000 random draws the largest g in any trace was 41 and the largest h 12 (optimal plans
# reach 41 moves), so 63 leaves ample room; rarer levels beyond it are rejected by generate()
COST_MAX = 63
# the generation rule, recorded with each dataset: datasets without it were made by the earlier
# rule (boxes drawn first, h to the nearest dock whether free or not, row-major token order)
RULE = "reference"

_INF = float("inf")
_BORDER = frozenset((x, y) for y in range(SIZE) for x in range(SIZE)
                    if x in (0, SIZE - 1) or y in (0, SIZE - 1))
_INTERIOR = [(x, y) for y in range(1, SIZE - 1) for x in range(1, SIZE - 1)]
_INNER = [(x, y) for y in range(2, SIZE - 2) for x in range(2, SIZE - 2)]
_NUM = {str(i): i for i in range(SIZE)}
_MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right: the reference's child order


def vocabulary() -> list[str]:
    return list(KEYWORDS) + [str(i) for i in range(SIZE)] + [f"c{i}" for i in range(COST_MAX + 1)]


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


def _pick(cells, k, taken, rng):
    """k distinct cells drawn uniformly from those of `cells` not in `taken`."""
    free = [c for c in cells if c not in taken]
    return [free[i] for i in rng.choice(len(free), size=k, replace=False)]


def random_level(rng: np.random.Generator) -> Level:
    walls = _pick(_INTERIOR, 2, (), rng)
    boxes = _pick(_INNER, 2, walls, rng)
    worker = _pick(_INTERIOR, 1, walls + boxes, rng)[0]
    docks = _pick(_INTERIOR, 2, walls + boxes + [worker], rng)
    return Level(walls=_BORDER | frozenset(walls), boxes=tuple(sorted(boxes)), docks=tuple(sorted(docks)),
                 worker=worker)


class _Board:
    """Bit-mask view of a level for the search: a state is (box mask << 6) | worker cell."""

    def __init__(self, level: Level):
        def blocked(x, y):  # cells off the grid count as walls, so borderless levels stay safe
            return not (0 <= x < SIZE and 0 <= y < SIZE) or (x, y) in level.walls

        self.nbr, self.stuck = [], []
        for c in range(SIZE * SIZE):
            x, y = c % SIZE, c // SIZE
            self.nbr.append([-1 if blocked(x + dx, y + dy) else c + dx + dy * SIZE for dx, dy in _MOVES])
            self.stuck.append((blocked(x, y - 1) or blocked(x, y + 1)) and (blocked(x - 1, y) or blocked(x + 1, y)))
        self.docks = [y * SIZE + x for x, y in level.docks]
        self.dockmask = sum(1 << d for d in self.docks)
        self.cells = [c for c in range(SIZE * SIZE) if not blocked(c % SIZE, c // SIZE)]
        self.h_of = {}  # box mask -> h

    def h(self, m: int) -> float:
        h = self.h_of.get(m)
        if h is None:
            loose = [c for c in self.cells if m >> c & 1 and not self.dockmask >> c & 1]
            open_docks = [d for d in self.docks if not m >> d & 1]
            if any(self.stuck[c] for c in loose):
                h = _INF
            else:
                h = sum(min(abs(c % SIZE - d % SIZE) + abs(c // SIZE - d // SIZE) for d in open_docks)
                        for c in loose) if open_docks else 0
            self.h_of[m] = h
        return h

    def expand(self, s: int):
        """Children in the order up, down, left, right; moves into a wall or an unpushable box change
        nothing (the reference skips such a child as already closed) and are left out."""
        worker, boxes = s & 63, s >> 6  # a state is the box mask above the worker's cell
        out = []
        for d, cell in enumerate(self.nbr[worker]):
            if cell < 0:
                continue
            moved = boxes
            if boxes >> cell & 1:  # a push: the box goes one cell further the same way
                beyond = self.nbr[cell][d]
                if beyond < 0 or boxes >> beyond & 1:
                    continue
                moved = boxes ^ (1 << cell) ^ (1 << beyond)
            h = self.h(moved)
            if h != _INF:
                out.append((moved << 6 | cell, h))
        return out

    def tokens(self, s: int) -> int:  # trace tokens of one step: kind, worker x y, box x y..., cG cH
        return 6 + 3 * ((s >> 6) & ~self.dockmask).bit_count()


def search_space(level: Level) -> Space:
    """A* over (box mask << 6 | worker cell) states as astar() runs it (traces.py); a state's trace
    tokens leave the docked boxes out. Raises ValueError when the start is already pruned."""
    board = _Board(level)
    m0 = sum(1 << (y * SIZE + x) for x, y in level.boxes)
    if board.h(m0) == _INF:
        raise ValueError("a box starts stuck")
    undocked = ~board.dockmask
    known = {}  # state -> its tokens: a trace names a state many times

    def tokens(s):
        out = known.get(s)
        if out is None:
            m = (s >> 6) & undocked
            out = ["worker", *map(str, _cell(s & 63))]
            for x, y in sorted(_cell(c) for c in range(SIZE * SIZE) if m >> c & 1):
                out += ["box", str(x), str(y)]
            out = known[s] = tuple(out)
        return out

    return Space(m0 << 6 | level.worker[1] * SIZE + level.worker[0], board.h(m0), board.expand,
                 lambda s: not ((s >> 6) & undocked), tokens, lambda s: _cell(s & 63))


def heuristic(level: Level, boxes) -> float:
    """h of the state with boxes on these cells (the worker does not matter); inf when pruned."""
    return _Board(level).h(sum(1 << (y * SIZE + x) for x, y in boxes))


def astar(level: Level, rng: np.random.Generator, max_steps: int | None = None, *,
          max_tokens: int | None = None):
    """(trace, plan), or None if unsolvable or past max_steps steps / max_tokens trace tokens."""
    board = _Board(level)
    m0 = sum(1 << (y * SIZE + x) for x, y in level.boxes)
    start = m0 << 6 | level.worker[1] * SIZE + level.worker[0]
    h0 = board.h(m0)
    if h0 == _INF:
        return None
    found = search(start, h0, board.expand, lambda s: not ((s >> 6) & ~board.dockmask), rng=rng,
                   max_steps=max_steps, step_cost=board.tokens if max_tokens is not None else None,
                   max_cost=max_tokens)
    if found is None or found[1] is None:
        return None
    log, plan = found
    return _trace(log, level), [_cell(s & 63) for s in plan]


def _cell(c: int) -> tuple[int, int]:
    return c % SIZE, c // SIZE


def _trace(log, level: Level) -> list[tuple]:
    undocked = ~sum(1 << (y * SIZE + x) for x, y in level.docks)
    cache = {}
    out = []
    for create, s, g, h in log:
        m = (s >> 6) & undocked
        if m not in cache:
            cache[m] = tuple(sorted(_cell(c) for c in range(SIZE * SIZE) if m >> c & 1))
        out.append(("create" if create else "close", _cell(s & 63), cache[m], g, h))
    return out


def prompt_tokens(level: Level) -> list[str]:
    out = ["worker", str(level.worker[0]), str(level.worker[1])]
    for name, cells in (("box", level.boxes), ("dock", level.docks), ("wall", level.walls)):
        for x, y in sorted(cells):
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
    return grid.parse_plan(list(tokens), SIZE) or None  # an empty plan is malformed too


def _free(level: Level, x: int, y: int) -> bool:
    return 0 <= x < SIZE and 0 <= y < SIZE and (x, y) not in level.walls


WRONG_END = "leaves a box off the docks"


def plan_fault(level: Level, plan) -> tuple[int, str] | None:
    """(index of the first bad worker position, why) for a plan whose moves, played from the
    worker, are illegal or leave a box off the docks; None for a plan that solves the level."""
    if not plan:
        return 0, "empty"
    if tuple(plan[0]) != tuple(level.worker):
        return 0, "does not start at the worker"
    boxes = set(level.boxes)
    x, y = level.worker
    for k, (nx, ny) in enumerate(plan[1:], 1):
        dx, dy = nx - x, ny - y
        if abs(dx) + abs(dy) != 1:
            return k, "not adjacent"
        if not _free(level, nx, ny):
            return k, "into a wall" if 0 <= nx < SIZE and 0 <= ny < SIZE else "off the grid"
        if (nx, ny) in boxes:
            bx, by = nx + dx, ny + dy
            if (bx, by) in boxes or not _free(level, bx, by):
                return k, "pushes a box into a wall or a box"
            boxes.remove((nx, ny))
            boxes.add((bx, by))
        x, y = nx, ny
    return None if boxes == set(level.docks) else (len(plan) - 1, WRONG_END)


def simulate(level: Level, plan: list[tuple[int, int]]) -> bool:
    return plan_fault(level, plan) is None


def reference_check(level: Level, plan) -> bool:
    """The reference's more lenient check: the plan's steps (each of one cell) are read as moves and
    played from the level's worker, wherever the plan starts; a move into a wall, or pushing a box
    into a wall or another box, changes nothing; solved when every box ends on a dock."""
    boxes, (x, y) = set(level.boxes), level.worker
    for a, b in zip(plan, plan[1:]):
        dx, dy = b[0] - a[0], b[1] - a[1]
        if abs(dx) + abs(dy) != 1:
            return False
        nxt = (x + dx, y + dy)
        if nxt in boxes:
            beyond = (nxt[0] + dx, nxt[1] + dy)
            if not _free(level, *beyond) or beyond in boxes:
                continue  # the box does not move, nor does the worker
            boxes.remove(nxt)
            boxes.add(beyond)
        elif not _free(level, *nxt):
            continue
        x, y = nxt
    return boxes == set(level.docks)


def render(level: Level, plan=None) -> str:
    board = [[" "] * SIZE for _ in range(SIZE)]
    for x, y in plan or ():
        board[y][x] = "o"
    for x, y in level.walls:
        board[y][x] = "#"
    for x, y in level.docks:
        board[y][x] = "."
    for x, y in level.boxes:
        board[y][x] = "*" if board[y][x] == "." else "$"
    x, y = level.worker
    board[y][x] = "+" if board[y][x] == "." else "@"
    return "\n".join("".join(row) for row in board)


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
