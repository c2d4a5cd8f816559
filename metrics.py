"""Judging sampled responses and the paper's metrics over them (optimal %, correct %, SWC, ILR,
malformed %, trace/A*), summed per task so that ranks can reduce them, and their table.

A response is judged strictly (ours: it must end with <eos>, hold only task tokens and a plan of
`plan x y` states from its first `plan` token on that the task's check accepts) or as the
reference's more lenient checker does; see eval.py for the metrics' definitions.
"""
from dataclasses import dataclass

import numpy as np

import tasks
from dataset import SPECIALS
from errors import DataError

KINDS = ("optimal", "correct", "invalid", "malformed")  # a response's verdict; correct = correct, not optimal
COLUMNS = [("optimal_pct", "optimal %", "{:.1f}"), ("correct_pct", "correct %", "{:.1f}"), ("swc", "SWC", "{:.3f}"),
           ("ilr_solved", "ILR-solved", "{:.3f}"), ("ilr_optimal", "ILR-optimal", "{:.3f}"),
           ("malformed_pct", "malformed %", "{:.1f}"), ("trace_ratio", "trace/A*", "{:.3f}")]


@dataclass
class Verdict:
    kind: str  # one of KINDS
    trace_len: int = 0  # tokens before the plan
    moves: int = 0  # plan length (correct plans only)


class Checker:
    """A dataset's task: parses its prompts and checks plans against them."""

    def __init__(self, doc):
        self.vocab = doc["vocabulary"]
        self.plan_id = self.vocab.index("plan")
        self.task = tasks.of(doc["task"], doc["params"])
        if self.task is None:
            raise DataError(f"dataset {doc['_id']!r} has task {doc['task']!r}: only maze and sokoban plans can "
                            f"be checked")

    def problem(self, prompt):
        return self.task.parse_prompt([self.vocab[i] for i in prompt])

    def judge(self, problem, ids, eos, optimal_moves):
        """The verdict on one response (ids after <sep>, without <eos>)."""
        ids = np.asarray(ids)
        starts = np.flatnonzero(ids == self.plan_id)
        if not eos or (ids < len(SPECIALS)).any() or not len(starts):
            return Verdict("malformed")
        start = int(starts[0])
        plan = self.task.parse_plan([self.vocab[i] for i in ids[start:]])
        if plan is None:
            return Verdict("malformed", start)
        if not self.task.check(problem, plan):
            return Verdict("invalid", start)
        moves = len(plan) - 1
        return Verdict("optimal" if moves <= optimal_moves else "correct", start, moves)

    def judge_reference(self, problem, ids, eos, optimal_moves):
        """The reference's more lenient verdict: <eos> is not needed; the plan is every token from the
        first `plan` on, read as triples whose first token is not checked (malformed when the count is
        not a multiple of 3 or a coordinate is not a number); see the tasks' check_reference for the rest."""
        ids = np.asarray(ids)
        starts = np.flatnonzero(ids == self.plan_id)
        if not len(starts):
            return Verdict("malformed")
        start = int(starts[0])
        tokens = [self.vocab[i] for i in ids[start:]]
        coords = tokens[1::3] + tokens[2::3]
        if len(tokens) % 3 or not all(t.isdigit() for t in coords):
            return Verdict("malformed", start)
        plan = [(int(x), int(y)) for x, y in zip(tokens[1::3], tokens[2::3])]
        if not self.task.check_reference(problem, plan):
            return Verdict("invalid", start)
        moves = len(plan) - 1
        return Verdict("optimal" if moves <= optimal_moves else "correct", start, moves)


def optimal_moves(split, row):
    return int(split.lens["plan"][row]) // 3 - 1  # `plan x y` per state


def astar_trace_len(split, row):
    """t*: the mean over repeated A* runs when astar-stats stored it, else this sequence's trace."""
    mean = split.extra.get("astar_mean_trace_len")
    if mean is not None and not np.isnan(mean[row]):
        return float(mean[row])
    return float(split.lens["trace"][row])


SUM_FIELDS = ("tasks", "responses", "malformed", "optimal", "correct", "swc", "ilr_solved", "ilr_optimal",
              "trace_optimal", "trace_astar")


def task_sums(verdicts, best_moves, t_star):
    """One task's contributions to the summed metrics (sums over tasks reduce across ranks)."""
    correct = [v for v in verdicts if v.kind in ("optimal", "correct")]
    optimal = [v for v in verdicts if v.kind == "optimal"]
    s = dict.fromkeys(SUM_FIELDS, 0.0)
    s.update(tasks=1, responses=len(verdicts), malformed=sum(v.kind == "malformed" for v in verdicts))
    if correct:
        s["correct"] = 1
        s["swc"] = (best_moves + 1) / max(min(v.moves for v in correct) + 1, best_moves + 1)  # lengths in states
        s["ilr_solved"] = t_star / max(np.mean([v.trace_len for v in correct]), 1)  # an empty trace counts as 1
    if optimal:
        t = float(np.mean([v.trace_len for v in optimal]))
        s.update(optimal=1, ilr_optimal=t_star / max(t, 1), trace_optimal=t, trace_astar=t_star)
    return s


def summarize(sums, plan_only):
    n = max(sums["tasks"], 1)
    m = {"tasks": int(sums["tasks"]), "responses": int(sums["responses"]),
         "optimal_pct": 100 * sums["optimal"] / n, "correct_pct": 100 * sums["correct"] / n, "swc": sums["swc"] / n,
         "malformed_pct": 100 * sums["malformed"] / max(sums["responses"], 1)}
    if not plan_only:
        m.update(ilr_solved=sums["ilr_solved"] / n, ilr_optimal=sums["ilr_optimal"] / n,
                 trace_ratio=sums["trace_optimal"] / sums["trace_astar"] if sums["trace_astar"] else None)
    return m


def score(checker, split, tasks, on_task=None, reference=None):
    """Summed metrics over tasks, an iterable of (row, [(ids, eos), ...]); on_task(row, responses,
    verdicts) sees each task on the way. reference: a dict to fill with the same sums under the
    reference's lenient checker."""
    sums = dict.fromkeys(SUM_FIELDS, 0.0)
    if reference is not None:
        reference.update(dict.fromkeys(SUM_FIELDS, 0.0))
    for row, resp in tasks:
        problem, best = checker.problem(split.get(row, "prompt")), optimal_moves(split, row)
        verdicts = [checker.judge(problem, ids, eos, best) for ids, eos in resp]
        for k, v in task_sums(verdicts, best, astar_trace_len(split, row)).items():
            sums[k] += v
        if reference is not None:
            lenient = [checker.judge_reference(problem, ids, eos, best) for ids, eos in resp]
            for k, v in task_sums(lenient, best, astar_trace_len(split, row)).items():
                reference[k] += v
        if on_task:
            on_task(row, resp, verdicts)
    return sums


def fmt(value, spec):
    return "-" if value is None else spec.format(value)


def print_table(rows, label="run"):
    """rows: [(name, metrics)], metrics values may be (mean, standard error) pairs."""
    def cell(metrics, key, spec):
        v = metrics.get(key)
        return f"{fmt(v[0], spec)} ± {fmt(v[1], spec)}" if isinstance(v, tuple) else fmt(v, spec)

    columns = [c for c in COLUMNS if any(m.get(c[0]) is not None for _, m in rows)]
    width = max([len(label)] + [len(name) for name, _ in rows])
    widths = [max(len(title), *(len(cell(m, key, spec)) for _, m in rows)) for key, title, spec in columns]
    print(f"{label:{width}}  " + "  ".join(f"{title:>{w}}" for (_, title, _), w in zip(columns, widths)))
    for name, m in rows:
        print(f"{name:{width}}  " + "  ".join(f"{cell(m, key, spec):>{w}}" for (key, _, spec), w in zip(columns, widths)))
