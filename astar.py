"""A* with the reference's exact search rules, shared by the maze and Sokoban tasks.

The search logs its dynamics: a `create` step for every node pushed on the frontier (the start
first) and a `close` step for every node expanded; it stops after closing a goal. Rules, as the
reference code has them (they decide the trace-length statistics of the datasets):
- the frontier pops the lowest f = g + h; on equal f a deterministic search prefers the lower
  `tie` key of the state, a nondeterministic one flips a fair coin at every comparison that
  Python's heapq makes (so the pop order is not a uniformly random permutation of the ties);
- a nondeterministic search shuffles each node's children uniformly before visiting them;
- a child already on the frontier with f <= its new f, or already closed with f <= its new f, is
  skipped; a frontier entry with a higher f is taken off the heap (and the heap re-heapified)
  before the child is pushed again, and a closed state with a higher f is re-opened;
- children with infinite h are never produced (the task's `expand` leaves them out).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Callable

import numpy as np


def _draws(rng: np.random.Generator, draw):
    """An endless stream of draw(rng) values, drawn from numpy in bulk: one call per 1024 uses."""
    while True:
        yield from draw(rng).tolist()


def _shuffled(items: list, uniform) -> list:
    """A uniformly random permutation of items (Fisher-Yates on the uniform stream)."""
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = int(next(uniform) * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


class Node:
    """A search node. The heap holds (f, node) pairs, so Python compares nodes only on equal f, and
    there the reference's rule applies: a coin flip, or the lower tie key when deterministic."""
    __slots__ = ("g", "h", "state", "parent", "tie", "coin")

    def __init__(self, state, g, h, parent, tie, coin):
        self.g, self.h, self.state, self.parent, self.tie, self.coin = g, h, state, parent, tie, coin

    def __lt__(self, other: Node) -> bool:
        return next(self.coin) if self.coin is not None else self.tie < other.tie


def search(start, h0, expand, is_goal, tie=None, rng=None, max_steps=None, step_cost=None, max_cost=None):
    """Run A* from `start` (heuristic h0).

    expand(state) -> [(child, h)] in the task's child order, unit step cost, infinite-h children left
    out; is_goal(state) -> bool; tie(state) -> the deterministic tie key (unused when rng is given).
    Returns (log, plan): log a list of (is_create, state, g, h), plan the states from start to goal
    (None when the goal is unreachable). Returns None instead once the log has more than max_steps
    steps or the summed step_cost(state) of its steps exceeds max_cost."""
    coin = uniform = None  # nondeterministic: streams of fair coin flips and of uniforms in [0, 1)
    if rng is not None:
        coin = _draws(rng, lambda r: r.integers(0, 2, size=1024).astype(bool))
        uniform = _draws(rng, lambda r: r.random(1024))
    tie = tie or (lambda s: 0)
    entry = (h0, Node(start, 0, h0, None, 0 if coin else tie(start), coin))
    heap, frontier, closed = [entry], {start: entry}, {}  # frontier and closed: state -> (f, node)
    log = [(True, start, 0, h0)]
    cost = step_cost(start) if step_cost else 0
    limit_steps = max_steps if max_steps is not None else float("inf")
    limit_cost = max_cost if max_cost is not None else float("inf")
    while heap:
        entry = heapq.heappop(heap)
        node = entry[1]
        del frontier[node.state]
        closed[node.state] = entry
        log.append((False, node.state, node.g, node.h))
        if step_cost:
            cost += step_cost(node.state)
        if len(log) > limit_steps or cost > limit_cost:
            return None
        if is_goal(node.state):
            plan = []
            while node is not None:
                plan.append(node.state)
                node = node.parent
            return log, plan[::-1]
        children = expand(node.state)
        if coin is not None:
            children = _shuffled(children, uniform)
        g = node.g + 1
        for child, h in children:
            f = g + h
            old = frontier.get(child)
            if old is not None:
                if old[0] <= f:
                    continue
                heap.remove(old)  # a better path to a frontier state: replace its entry
                heapq.heapify(heap)
                del frontier[child]
            old = closed.get(child)
            if old is not None and old[0] <= f:
                continue
            entry = (f, Node(child, g, h, node, 0 if coin else tie(child), coin))
            heapq.heappush(heap, entry)
            frontier[child] = entry
            log.append((True, child, g, h))
            if step_cost:
                cost += step_cost(child)
            if len(log) > limit_steps or cost > limit_cost:
                return None
    return log, None


@dataclass(frozen=True)
class Space:
    """A task's search as a trace replays it (traces.py): the start state and its h, expand and
    is_goal as search() takes them, and a state's tokens in a trace step (between the keyword and
    the costs) and the grid cell it stands on (the maze's cell, Sokoban's worker)."""
    start: object
    h0: int
    expand: Callable
    is_goal: Callable
    tokens: Callable
    cell: Callable
