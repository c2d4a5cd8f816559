"""Where a trace stops being A*'s, and how a response fails: the trace diagnostics that eval.py
stores with an evaluation (report.py metrics plots them; report.py task draws them for one task).

Trace validity (check). A trace is read step by step against A*'s rules, the task's search space
(tasks.py: states, their children in order, their h) giving the legal steps:
- the first step creates the start, with g 0;
- after a close, the creates of the children of the node just closed that A* pushes, in any order:
  a neighbour (for Sokoban a legal move or push), not a wall, g one more than the closed node's, h
  the task's heuristic, and not one already open or closed at an f no higher (astar.py skips those);
- once they are all created, the close of an open node of least f = g + h, with the g and h it was
  last created with; after the goal's close the trace ends.
Deterministic and nondeterministic A* alike write only such traces (the tests read whole generated
datasets through check). The first bad token is the first one where the trace differs from every
legal step: a close that is not of least f fails at its x (or y) token, a wrong cost at that cost.

Trace agreement (agreement): the tokens before the first difference from A*'s trace, as a share of
the longer of the two traces (a cut-short copy is not in full agreement); only where A* is
deterministic (mazes generated without --nondeterministic).

Failure kinds (FAILURES, best first): optimal; correct (not optimal); wrong end (a legal walk that
misses the goal, or leaves a box off the docks); invalid move (a first state that is not the start,
a step that is not adjacent, into a wall, off the grid, an illegal push); malformed (no <eos>, a
special token, a plan that does not parse); no plan (no `plan` token at all). A task counts under
the best kind among its responses.
"""
from dataclasses import dataclass, field

import numpy as np

FAILURES = ("optimal", "correct", "wrong_end", "invalid_move", "malformed", "no_plan")
TITLES = {"optimal": "optimal", "correct": "correct, not optimal", "wrong_end": "wrong end",
          "invalid_move": "invalid move", "malformed": "malformed", "no_plan": "no plan"}


@dataclass
class TraceCheck:
    valid: int  # tokens in the longest prefix of legal A* steps: the first bad token's index unless complete
    complete: bool  # every step legal, the last the goal's close
    why: str = ""  # what the first bad token breaks
    steps: list = field(default_factory=list)  # the legal steps read: (kind, state, g, h, first token index)


def _common(a, b) -> int:
    """Length of the common prefix of two sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _why(kind, first, token, near, size) -> str:
    """What a step that matches no legal one breaks: near tokens of it matched the closest legal
    step (size tokens); token is the step's first."""
    if first and near < size - 2:
        return "does not begin by creating the start"
    if near == 0:
        if token == "close" and kind == "create":
            return "a close before every child of the node last closed is created"
        if token == "create" and kind == "close":
            return "a create after every child of the node last closed is created"
        return f"{token!r} where a step's keyword belongs"
    if near >= size - 2:
        return "a wrong g (cost from the start)" if near == size - 2 else "a wrong h (heuristic)"
    if kind == "create":
        return ("not a child that A* pushes (a wall, off the grid, not a neighbour of the node last closed, "
                "or already open or closed at no higher f)")
    return "not an open node of least f"


class _Search:
    """What a trace has done so far: open and closed states (state -> (g, h)), the creates legal
    now, and, for closes, the open states by (tokens, g, h) and the count of open states per f."""

    def __init__(self, space):
        self.space, self.opened, self.closed, self.pending = space, {}, {}, {space.start: (0, space.h0)}
        self.named, self.per_f, self.done = {}, {}, False

    def copy(self):
        new = _Search(self.space)
        new.opened, new.closed, new.pending = dict(self.opened), dict(self.closed), dict(self.pending)
        new.named, new.per_f = {k: list(v) for k, v in self.named.items()}, dict(self.per_f)
        return new

    def _unopen(self, s):
        g, h = self.opened.pop(s)
        self.named[self.space.tokens(s), g, h].remove(s)
        self.per_f[g + h] -= 1
        if not self.per_f[g + h]:
            del self.per_f[g + h]

    def take(self, kind, s, g, h):
        """Apply one legal step."""
        if kind == "create":
            if s in self.opened:  # a better path to an open state: A* replaces its entry
                self._unopen(s)
            self.opened[s] = (g, h)
            self.named.setdefault((self.space.tokens(s), g, h), []).append(s)
            self.per_f[g + h] = self.per_f.get(g + h, 0) + 1
            del self.pending[s]
            return
        self._unopen(s)
        self.closed[s] = (g, h)
        self.done = self.space.is_goal(s)
        for child, hc in ([] if self.done else self.space.expand(s)):
            f = g + 1 + hc
            if any(old is not None and old[0] + old[1] <= f for old in (self.opened.get(child), self.closed.get(child))):
                continue  # A* skips a child it holds at no higher f
            self.pending[child] = (g + 1, hc)

    def legal(self):
        """(kind, [(state, (g, h))]) of the steps legal now: the pending creates, else the closes of
        the open states of least f."""
        if self.pending:
            return "create", list(self.pending.items())
        least = min(self.per_f, default=None)
        return "close", [(s, gh) for s, gh in self.opened.items() if gh[0] + gh[1] == least]

    def closes(self, step):
        """The open states of least f that a close step's tokens name (the fast path of legal())."""
        try:
            key = (tuple(step[1:-2]), int(step[-2][1:]), int(step[-1][1:]))
        except ValueError:
            return []
        least = min(self.per_f, default=None)
        return [s for s in self.named.get(key, ()) if key[1] + key[2] == least]


def _extent(tokens, pos):
    """Tokens in the step at pos: through the second of the two cost tokens that end it (a maze's
    step is 5 tokens, a Sokoban step's length depends on its boxes); 0 when none follows."""
    for i in range(pos + 1, len(tokens) - 1):
        t = tokens[i]
        if t[:1] == "c" and t[1:].isdigit():
            return i + 2 - pos
    return 0


def check(space, tokens) -> TraceCheck:
    """Read a trace (tokens as strings) against A*'s rules in the task's search space (astar.Space)."""
    tokens = list(tokens)
    return _read(tokens, _Search(space), [], 0, [8 * len(tokens) + 10000])


def _fits(tokens, pos, search) -> int:
    """How many of the steps from pos on are creates that the search expects now."""
    space, n = search.space, 0
    wants = {("create", *space.tokens(s), f"c{g}", f"c{h}") for s, (g, h) in search.pending.items()}
    while n < len(wants):
        size = _extent(tokens, pos)
        if tuple(tokens[pos:pos + size]) not in wants:
            break
        n, pos = n + 1, pos + size
    return n


def _read(tokens, search, steps, pos, budget) -> TraceCheck:
    """check() from token pos on, in the search state and with the steps read so far. A close whose
    tokens name several open states (Sokoban leaves docked boxes out: a box on one dock or the other
    reads alike) is read as each in turn, on copies, those whose children the next creates name first,
    and the reading that goes furthest kept; budget[0] bounds the tokens read over all readings (a
    reading that runs out stops where it is)."""
    space = search.space
    while pos < len(tokens):
        if search.done:
            return TraceCheck(pos, False, "a step after the goal's close", steps)
        if budget[0] <= 0:
            return TraceCheck(pos, False, "undecided: too many readings of closes that look alike", steps)
        size = _extent(tokens, pos)
        budget[0] -= size
        step = tokens[pos:pos + size]
        found = []
        if not search.pending and step[:1] == ["close"]:
            found = [(s, *search.opened[s]) for s in search.closes(step)]
        elif step[:1] == ["create"]:
            found = [(s, g, h) for s, (g, h) in search.pending.items()
                     if (*space.tokens(s), f"c{g}", f"c{h}") == tuple(step[1:])]
        if not found:  # no legal step: how far the closest one matches
            kind, legal = search.legal()
            near, size = 0, 5
            for s, (g, h) in legal:
                want = (kind, *space.tokens(s), f"c{g}", f"c{h}")
                n = _common(want, tokens[pos:pos + len(want)])
                if n >= near:
                    near, size = n, len(want)
            return TraceCheck(pos + near, False, _why(kind, not steps, tokens[pos], near, size), steps)
        kind = step[0]
        if len(found) > 1:  # only a close: a create names a child of one closed state, each child its own cell
            readings = []
            for s, g, h in found:
                branch = search.copy()
                branch.take(kind, s, g, h)
                readings.append((-_fits(tokens, pos + size, branch), len(readings), branch, (kind, s, g, h, pos)))
            best = None
            for _, _, branch, taken in sorted(readings, key=lambda r: r[:2]):
                got = _read(tokens, branch, steps + [taken], pos + size, budget)
                if best is None or (got.complete, got.valid) > (best.complete, best.valid):
                    best = got
                if best.complete:
                    break
            return best
        s, g, h = found[0]
        steps.append((kind, s, g, h, pos))
        search.take(kind, s, g, h)
        pos += size
    return TraceCheck(pos, search.done, "" if search.done else "ends before the goal's close", steps)


def agreement(trace, reference) -> tuple[int, float]:
    """(tokens before the first difference, their share of the longer of the two traces)."""
    n = _common(trace, reference)
    return n, n / max(len(trace), len(reference), 1)


def split_response(tokens) -> tuple[list, list | None]:
    """(trace, plan tokens) of a response's tokens: the plan from its first `plan` token on (None
    when it has none)."""
    tokens = list(tokens)
    if "plan" not in tokens:
        return tokens, None
    k = tokens.index("plan")
    return tokens[:k], tokens[k:]


def failure_kind(task, problem, tokens, verdict):
    """(kind of FAILURES, (index of the first bad plan state, why) or None) of one response, given
    its verdict (metrics.Checker.judge)."""
    if verdict.kind in ("optimal", "correct"):
        return verdict.kind, None
    plan = split_response(tokens)[1]
    if verdict.kind == "invalid":
        fault = task.plan_fault(problem, task.parse_plan(plan))
        return ("wrong_end" if fault[1] == task.WRONG_END else "invalid_move"), fault
    return ("no_plan" if plan is None else "malformed"), None


def read_cells(tokens):
    """(kind, (x, y), first token index) of each step of a trace read leniently (for drawing a
    trace past its first bad token): a `create` or `close` and the two coordinates after it (after
    `worker` in Sokoban), wherever they parse."""
    out = []
    for i, t in enumerate(tokens):
        if t in ("create", "close"):
            j = i + 1 + (tokens[i + 1:i + 2] == ["worker"])
            xy = tokens[j:j + 2]
            if len(xy) == 2 and all(v.isdigit() for v in xy):
                out.append((t, (int(xy[0]), int(xy[1])), i))
    return out


class Diagnostics:
    """An evaluation's trace diagnostics, task by task: add() each task's responses and verdicts,
    then summary(). traces: check the traces too (False for plan-only runs)."""

    def __init__(self, checker, traces=True):
        self.checker, self.traces = checker, traces
        self.tasks = dict.fromkeys(FAILURES, 0)
        self.valid, self.complete, self.agree = [], 0, []

    def add(self, prompt, responses, verdicts):
        task, vocab = self.checker.task, self.checker.vocab
        problem = self.checker.problem(prompt)
        space = task.search_space(problem) if self.traces else None
        reference = task.astar_trace(problem) if self.traces else None
        best = len(FAILURES) - 1
        for (ids, _), verdict in zip(responses, verdicts):
            tokens = [vocab[i] for i in ids]
            best = min(best, FAILURES.index(failure_kind(task, problem, tokens, verdict)[0]))
            if self.traces:
                trace = split_response(tokens)[0]
                c = check(space, trace)
                self.valid.append(c.valid / max(len(trace), 1))  # an empty trace: none of A*'s
                self.complete += c.complete
                if reference is not None:
                    self.agree.append(agreement(trace, reference)[1])
        if responses:
            self.tasks[FAILURES[best]] += 1

    def summary(self):
        """The stored diagnostics: tasks by the best kind among their responses (% of tasks), and
        over responses the mean share of a trace that is legal A* steps, the % of complete A* traces
        and the mean agreement with deterministic A* (None where not measured)."""
        n = max(sum(self.tasks.values()), 1)
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        return {"failure_pct": {k: 100 * c / n for k, c in self.tasks.items()},
                "trace_valid": mean(self.valid),
                "valid_trace_pct": 100 * self.complete / len(self.valid) if self.valid else None,
                "trace_agreement": mean(self.agree)}


def describe(d) -> str:
    """The diagnostics as the lines eval.py prints below its table."""
    lines = []
    if d.get("trace_valid") is not None:
        agree = d.get("trace_agreement")
        lines.append(f"traces: {d['trace_valid']:.3f} of their tokens legal A* steps (mean), "
                     f"{d['valid_trace_pct']:.1f}% complete A* traces"
                     + (f", {agree:.3f} equal to A*'s before the first difference" if agree is not None else ""))
    lines.append("tasks by their best response: " + ", ".join(f"{TITLES[k]} {d['failure_pct'][k]:.1f}%"
                                                             for k in FAILURES))
    return "\n".join(lines)
