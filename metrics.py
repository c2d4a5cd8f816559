"""Judging sampled responses and the paper's metrics over them (optimal %, correct %, SWC, ILR,
malformed %, trace/A*), summed per task so that ranks can reduce them, and their table; comparing
stored evaluations of several runs on the tasks that all of them solve optimally.

A response is judged strictly (ours: it must end with <eos>, hold only task tokens and a plan of
`plan x y` states from its first `plan` token on that the task's check accepts) or as the
reference's more lenient checker does; see eval.py for the metrics' definitions.
"""
import hashlib
import math
from dataclasses import dataclass

import numpy as np

import tasks
from dataset import SPECIALS
from errors import ConfigError, DataError, StoreError

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


def score(checker, split, tasks, on_task=None, reference=None, by_task=None):
    """Summed metrics over tasks, an iterable of (row, [(ids, eos), ...]); on_task(row, responses,
    verdicts) sees each task on the way. reference: a dict to fill with the same sums under the
    reference's lenient checker; by_task: a new_by_task record to fill."""
    sums = dict.fromkeys(SUM_FIELDS, 0.0)
    if reference is not None:
        reference.update(dict.fromkeys(SUM_FIELDS, 0.0))
    for row, resp in tasks:
        problem, best = checker.problem(split.get(row, "prompt")), optimal_moves(split, row)
        verdicts = [checker.judge(problem, ids, eos, best) for ids, eos in resp]
        mine = task_sums(verdicts, best, astar_trace_len(split, row))
        for k, v in mine.items():
            sums[k] += v
        if by_task is not None and mine["optimal"]:
            for k, v in (("rows", int(row)), ("trace", mine["trace_optimal"]), ("astar", mine["trace_astar"])):
                by_task[k].append(v)
        if reference is not None:
            lenient = [checker.judge_reference(problem, ids, eos, best) for ids, eos in resp]
            for k, v in task_sums(lenient, best, astar_trace_len(split, row)).items():
                reference[k] += v
        if on_task:
            on_task(row, resp, verdicts)
    return sums


def fmt(value, spec):
    return "-" if value is None else spec.format(value)


def print_table(rows, label="run", columns=COLUMNS):
    """rows: [(name, metrics)], metrics values may be (mean, standard error) pairs; columns: (key,
    title, format) of the columns to show where a row has a value."""
    def cell(metrics, key, spec):
        v = metrics.get(key)
        if isinstance(v, tuple) and len(v) == 3:  # none solved: its 95% upper bound, not a spread of 0
            return f"{fmt(v[0], spec)} (≤{fmt(v[2], spec.replace('+', ''))})"
        return f"{fmt(v[0], spec)} ± {fmt(v[1], spec.replace('+', ''))}" if isinstance(v, tuple) else fmt(v, spec)

    columns = [c for c in columns if any(m.get(c[0]) is not None for _, m in rows)]
    width = max([len(label)] + [len(name) for name, _ in rows])
    widths = [max(len(title), *(len(cell(m, key, spec)) for _, m in rows)) for key, title, spec in columns]
    print(f"{label:{width}}  " + "  ".join(f"{title:>{w}}" for (_, title, _), w in zip(columns, widths)))
    for name, m in rows:
        print(f"{name:{width}}  " + "  ".join(f"{cell(m, key, spec):>{w}}" for (key, _, spec), w in zip(columns, widths)))


# ---------------------------------------------------------------------------------------------
# comparing runs on the tasks they share (report.py compare, efficiency, bootstrap)

ALIKE = ("split", "samples", "temperature", "prefix_len")  # evaluation parameters compared runs must share


def new_by_task(split, rows):
    """The per-task record an evaluation stores as optimal_by_task (score() fills it): "tasks" names
    the evaluated tasks (a digest of their prompts in order, so a copied test split names the same
    tasks), and, for each task with an optimal response, parallel lists (MongoDB keys must be
    strings) of its row, the mean trace length t_i of its optimal responses and t*_i."""
    h = hashlib.blake2b(digest_size=8)
    for r in rows:
        prompt = split.get(r, "prompt")
        h.update(len(prompt).to_bytes(4, "little") + prompt.tobytes())
    return {"tasks": h.hexdigest(), "rows": [], "trace": [], "astar": []}


def by_task_of(name, res):
    by = res.get("optimal_by_task")
    if by is None:
        raise StoreError(f"{name}'s evaluation at step {res['step']} predates per-task results: run eval.py "
                         f"--run-id {res['run_id']} again with the same flags (its stored responses are reused)")
    return by


def check_alike(named):
    """named: [(name, result document)]; refuses runs evaluated on other tasks or otherwise unlike the first."""
    first, ref = named[0]
    for name, res in named[1:]:
        if by_task_of(name, res)["tasks"] != by_task_of(first, ref)["tasks"]:
            a, b = ref["params"], res["params"]
            raise ConfigError(f"{first} and {name} were evaluated on different tasks ({a['num_tasks']} {a['split']} "
                              f"tasks of {a['dataset']} vs {b['num_tasks']} of {b['dataset']}): evaluate them on the "
                              f"same ones (eval.py --split, --num-tasks; train with --test-name)")
        for key in ALIKE:
            if res["params"].get(key) != ref["params"].get(key):
                raise ConfigError(f"{first} and {name} were evaluated differently ({key} {ref['params'].get(key)} vs "
                                  f"{res['params'].get(key)}): evaluate them alike")


def common_tasks(named):
    """The rows that every run of named solves optimally (checked alike first), sorted."""
    check_alike(named)
    return sorted(set.intersection(*(set(by_task_of(name, res)["rows"]) for name, res in named)))


def binomial_se(k, n):
    """The standard error of a percentage k/n of tasks."""
    p = k / n
    return 100 * math.sqrt(p * (1 - p) / n)


def cluster_sum_se(residuals, clusters):
    """sqrt(G/(G-1) sum_g (sum of g's residuals)^2): the cluster-robust (sandwich) spread of a sum of
    per-task residuals whose tasks fall in G clusters (the tasks of one wall layout), with the usual small-
    sample factor; tasks each in a cluster of their own give the plain sqrt(n/(n-1) sum e_i^2). None below
    two clusters."""
    e = np.asarray(residuals, float)
    _, g = np.unique(np.asarray(clusters), return_inverse=True)
    G = int(g.max()) + 1 if len(g) else 0
    if G < 2:
        return None
    sums = np.bincount(g, weights=e, minlength=G)
    return float(math.sqrt(G / (G - 1) * (sums ** 2).sum()))


def mean_se(values, clusters):
    """(mean, its standard error clustered by `clusters`) of per-task values."""
    v = np.asarray(values, float)
    se = cluster_sum_se(v - v.mean(), clusters)
    return float(v.mean()), (None if se is None else se / len(v))


def upper_95(n_clusters):
    """The one-sided 95% upper bound of a rate of which none of the tasks succeeded, each cluster (wall
    layout) counted as one trial: its tasks may stand or fall together, so this is the cautious bound
    (tasks counted alike would give 1 - 0.05^(1/n))."""
    return 1 - 0.05 ** (1 / n_clusters)


def optimal_pct(solved, n, clusters=None):
    """A run's optimal % of its n tasks (rows 0..n-1; solved: the rows solved optimally) as (percentage,
    standard error) clustered by wall layout (clusters[row]; None: the binomial error); with none solved,
    (0.0, None, the 95% upper bound in %)."""
    if clusters is None:
        return 100 * len(solved) / n, binomial_se(len(solved), n)
    if not solved:
        return 0.0, None, 100 * upper_95(len(set(clusters[:n])))
    y = np.zeros(n)
    y[list(solved)] = 1.0
    pct, se = mean_se(y, clusters[:n])
    return 100 * pct, None if se is None else 100 * se


def ratio_of_sums(t, t_star, clusters=None):
    """(sum t / sum t*, its delta-method standard error over tasks, clustered by `clusters` when given);
    the error is None below two tasks (clusters)."""
    t, s = np.asarray(t, float), np.asarray(t_star, float)
    if not len(t):
        return None
    r = float(t.sum() / s.sum())
    se = cluster_sum_se(t - r * s, np.arange(len(t)) if clusters is None else clusters)
    return r, (None if se is None else se / s.sum())


def traces_on(name, res, rows):
    """(t_i, t*_i) of a run's optimal responses on rows (tasks it solves optimally); None for plan-only runs."""
    if "trace_ratio" not in res["metrics"]:
        return None
    by = by_task_of(name, res)
    at = dict(zip(by["rows"], zip(by["trace"], by["astar"])))
    return np.array([at[r][0] for r in rows], float), np.array([at[r][1] for r in rows], float)


def paired(a, b, rows, clusters=None):
    """b minus a, each (name, result document) on the same tasks: optimal % over all of them and
    trace/A* over rows, as paired differences with their standard errors over tasks (per task,
    solved optimally or not, and t_b,i - t_a,i over the shared sum of t*), clustered by wall layout
    (clusters[row]) when given."""
    (name_a, res_a), (name_b, res_b) = a, b
    n = res_a["metrics"]["tasks"]
    solved_a, solved_b = set(by_task_of(name_a, res_a)["rows"]), set(by_task_of(name_b, res_b)["rows"])
    # per task: 1 solved by b alone, -1 by a alone; by row with clusters (rows 0..n-1 of a test split),
    # else in any order (each task its own cluster: where a task sits does not matter)
    at = list(range(n)) if clusters is not None else sorted(solved_a | solved_b) + [None] * n
    d = np.array([(r in solved_b) - (r in solved_a) for r in at[:n]], float)
    mean, se = mean_se(d, np.arange(n) if clusters is None else clusters[:n])
    out = {"optimal_pct_diff": (100 * mean, None if se is None else 100 * se)}
    ta, tb = traces_on(name_a, res_a, rows), traces_on(name_b, res_b, rows)
    if ta is not None and tb is not None and len(rows):
        if not np.allclose(ta[1], tb[1]):
            raise ConfigError(f"{name_a} and {name_b} were scored with different A* trace lengths t* (data.py "
                              f"astar-stats ran between their evaluations?): evaluate both again")
        out["trace_ratio_diff"] = ratio_of_sums(tb[0] - ta[0], ta[1], None if clusters is None else clusters[rows])
    return out


def compare(named, clusters=None):
    """Each run of named ([(name, result document)], evaluated alike on the same tasks) on the tasks
    that every one solves optimally: optimal % of all its tasks with the binomial standard error,
    trace/A* over the common tasks as a ratio of sums (as trace_ratio: sum t_i / sum t*_i) with its
    delta-method standard error, and both as paired differences from the first run; the errors
    clustered by wall layout when clusters (an array: each evaluated row's layout) is given. Returns
    (common rows, [stats per run])."""
    rows = common_tasks(named)
    out = [run_stats(name, res, rows, clusters) for name, res in named]
    for stats, (name, res) in zip(out[1:], named[1:]):
        stats.update(paired(named[0], (name, res), rows, clusters))
    return rows, out


def run_stats(name, res, rows, clusters=None):
    """One run's figures of compare() without the paired differences (rows: the common tasks)."""
    n, solved = res["metrics"]["tasks"], by_task_of(name, res)["rows"]
    stats = {"run": name, "step": res["step"], "checkpoint": res["params"].get("checkpoint", "latest"), "tasks": n,
             "optimal": len(solved), "optimal_pct": optimal_pct(solved, n, clusters), "common": len(rows)}
    traces = traces_on(name, res, rows)
    if traces is not None:
        stats["trace_ratio"] = ratio_of_sums(*traces, None if clusters is None else clusters[rows])
    return stats
