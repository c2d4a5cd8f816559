"""Pictures of one task for report.py task, and the trace diagnostics' panels of report.py metrics
(matplotlib, headless).

A maze: walls black, start S, goal G, A*'s plan as a line, and its trace as a heatmap: each closed
cell coloured by the order it was closed in (numbered on small grids), cells created but never
closed shaded. A Sokoban level: walls, docks, boxes and the worker, the plan's worker positions
numbered along its path. Beside it, a model's response: its plan against A*'s (dashed), its trace's
cells as A*'s are, the first step that leaves A*'s trace (deterministic A* only: x) and the first
that no A* run could take (a square), and a line saying how the response fares (traces.py).
"""
import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import traces  # noqa: E402
from errors import DataError  # noqa: E402
from metrics import Checker, optimal_moves  # noqa: E402
from traces import TITLES  # noqa: E402

CLOSED = plt.get_cmap("viridis")


def _grid(ax, n, walls):
    """An n x n board, y down as the tokens have it, walls black."""
    board = np.ones((n, n, 3))
    for x, y in walls:
        board[y, x] = 0.0
    ax.imshow(board, extent=(-0.5, n - 0.5, n - 0.5, -0.5), interpolation="nearest")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.tick_params(labelsize=6)
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.8", linewidth=0.5)
    ax.tick_params(which="minor", length=0)


def _heat(ax, n, steps):
    """The trace's cells: closed ones coloured by close order (numbered on grids up to 12), created
    ones never closed shaded; steps: (kind, (x, y)) in order, cells off the grid left out."""
    closes = [c for kind, c in steps if kind == "close" and 0 <= c[0] < n and 0 <= c[1] < n]
    created = {c for kind, c in steps if kind == "create" and 0 <= c[0] < n and 0 <= c[1] < n}
    order = {}
    for k, c in enumerate(closes):
        order.setdefault(c, k)
    for x, y in created - set(order):
        ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color="#f4e3a1", zorder=1))
    for (x, y), k in order.items():
        ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color=CLOSED(k / max(len(closes) - 1, 1)), alpha=0.55,
                                   zorder=1))
        if n <= 12:
            ax.text(x + 0.3, y - 0.25, str(k), fontsize=5, ha="right", va="top", zorder=4)
    return len(closes)


def _path(ax, plan, **style):
    if plan:
        xs, ys = zip(*plan)
        ax.plot(xs, ys, zorder=3, **style)


def _ends(ax, start, goal=None):
    ax.text(*start, "S", ha="center", va="center", fontsize=9, weight="bold", color="green", zorder=5)
    if goal is not None:
        ax.text(*goal, "G", ha="center", va="center", fontsize=9, weight="bold", color="red", zorder=5)


def _sokoban(ax, level, plan, **style):
    _grid(ax, 7, level.walls)
    for x, y in level.docks:
        ax.add_patch(plt.Rectangle((x - 0.3, y - 0.3), 0.6, 0.6, fill=False, edgecolor="red", linewidth=1.5, zorder=2))
    for x, y in level.boxes:
        ax.add_patch(plt.Rectangle((x - 0.35, y - 0.35), 0.7, 0.7, color="#a0522d", alpha=0.8, zorder=2))
    ax.add_patch(plt.Circle(level.worker, 0.25, color="tab:blue", zorder=4))
    if plan:
        _path(ax, plan, **style)
        seen = {}
        for k, (x, y) in enumerate(plan[1:], 1):  # each position numbered, repeats stacked downwards
            off = seen[(x, y)] = seen.get((x, y), -1) + 1
            ax.text(x - 0.42, y - 0.42 + 0.22 * (off % 4), str(k), fontsize=5, color=style.get("color"),
                    va="top", zorder=5)


def _board(ax, task, problem, trace, plan, **style):
    """Task, trace heatmap (mazes) and plan on one axes; returns the cells closed."""
    if task.kind == "sokoban":
        _sokoban(ax, problem, plan, **style)
        return None
    _grid(ax, problem.n, problem.walls)
    closed = _heat(ax, problem.n, [(kind, c) for kind, c, _ in traces.read_cells(trace)])
    _path(ax, plan, **style)
    _ends(ax, problem.start, problem.goal)
    return closed


def _mark(ax, cells, index, marker, label, color):
    """Mark the step holding token index (cells: traces.read_cells) and say so in the legend."""
    at = [c for _, c, i in cells if i <= index]
    if at:
        ax.plot(*at[-1], marker=marker, markersize=14, markerfacecolor="none", markeredgecolor=color,
                markeredgewidth=2, linestyle="none", zorder=6, label=label)


def response_lines(task, problem, tokens, verdict, astar_trace, deterministic):
    """(title, [detail lines], traces.check's reading or None without a trace, tokens equal to A*'s
    trace or None when A* is not deterministic) of one response (tokens as strings)."""
    kind, fault = traces.failure_kind(task, problem, tokens, verdict)
    trace, plan = traces.split_response(tokens)
    title = TITLES[kind] + (f": state {fault[0]} {fault[1]}" if fault else "")
    if kind == "correct":
        title += f" ({verdict.moves} moves)"
    if not trace:  # a plan-only run's, or a response that skips the search
        return title, ["no trace"], None, None
    c = traces.check(task.search_space(problem), trace)
    lines = [f"trace {len(trace)} tokens; legal A* steps for the first {c.valid}"
             + ("" if c.complete else f" (token {c.valid}: {c.why})")]
    diff = None
    if deterministic:
        diff, share = traces.agreement(trace, astar_trace)
        lines.append(f"equal to A*'s trace for the first {diff} tokens ({share:.0%} of the longer)")
    if plan is None:
        lines.append("no plan")
    return title, lines, c, diff


def task_figure(task, problem, heading, astar_trace, astar_plan, response=None):
    """A task drawn, with a model's response beside it: response is (label, tokens as strings,
    verdict, plan states or None) or None. Returns the figure."""
    wide = response is not None
    fig, axes = plt.subplots(1, 2 if wide else 1, figsize=(11 if wide else 6, 6.2 if wide else 5.8), squeeze=False)
    ax = axes[0][0]
    closed = _board(ax, task, problem, astar_trace, astar_plan, color="tab:blue", linewidth=2.5, alpha=0.8)
    moves = len(astar_plan) - 1
    ax.set_title(f"A*: plan {moves} moves, trace {len(astar_trace)} tokens"
                 + (f", {closed} closes (colour: close order)" if closed is not None else ""), fontsize=8)
    if wide:
        label, tokens, verdict, plan = response
        ax = axes[0][1]
        trace = traces.split_response(tokens)[0]
        _board(ax, task, problem, trace, plan, color="tab:orange", linewidth=2.5, alpha=0.9)
        _path(ax, astar_plan, color="tab:blue", linewidth=1.2, linestyle="--", alpha=0.8, label="A*'s plan")
        deterministic = task.astar_trace(problem) is not None
        title, lines, c, diff = response_lines(task, problem, tokens, verdict, astar_trace, deterministic)
        cells = traces.read_cells(trace)
        if diff is not None and diff < max(len(trace), len(astar_trace)):
            _mark(ax, cells, diff, "X", f"leaves A*'s trace (token {diff})", "red")
        if c is not None and not c.complete:
            _mark(ax, cells, c.valid, "s", f"first step no A* takes (token {c.valid})", "magenta")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3)
        ax.set_title(f"{label}\n{title}", fontsize=8)
        ax.set_xlabel("\n".join(lines), fontsize=7, labelpad=22)
    fig.suptitle(heading, fontsize=9)
    return fig


def diagnostics_bars(left, right, results):
    """report.py metrics' trace diagnostics of each run: (left) trace validity, complete A* traces
    and agreement as shares; (right) the tasks by their best response's kind, stacked."""
    width = 0.8 / len(results)
    keys = [("trace_valid", "legal A* steps", 1), ("valid_trace_pct", "complete A* traces", 100),
            ("trace_agreement", "agreement with A*", 1)]
    for i, (run_id, d) in enumerate(results):
        x = np.arange(len(keys)) + (i - (len(results) - 1) / 2) * width
        values = [(d.get(k) / scale) if d.get(k) is not None else None for k, _, scale in keys]
        shown = [j for j, v in enumerate(values) if v is not None]
        bars = left.bar(x[shown], [values[j] for j in shown], width, color=f"C{i}", label=run_id)
        left.bar_label(bars, fmt="%.2f", fontsize=7)
        bottom = 0.0
        for j, kind in enumerate(traces.FAILURES):
            share = d["failure_pct"][kind]
            right.bar(i, share, 0.6, bottom=bottom, color=plt.get_cmap("RdYlGn_r")(j / (len(traces.FAILURES) - 1)),
                      label=TITLES[kind] if i == 0 else None)
            bottom += share
    left.set_xticks(np.arange(len(keys)), [title for _, title, _ in keys], fontsize=7)
    left.set_ylim(0, 1.1)
    left.set_ylabel("share of responses' traces")
    left.grid(axis="y", alpha=0.3)
    right.set_xticks(range(len(results)), [r for r, _ in results], fontsize=7)
    right.set_ylabel("% of tasks, by their best response")
    right.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def row_of(doc, split_name, split, task_id) -> int:
    """The row of a task id in a split (DataError when it has none)."""
    rows = np.flatnonzero(split.ids == task_id)
    if not len(rows):
        raise DataError(f"dataset {doc['_id']!r} has no {split_name} task {task_id} (ids 0..{len(split.ids) - 1})")
    return int(rows[0])


def metrics_figure(results):
    """report.py metrics' figure for [(run id, evaluation result)]: (figure, (left, right)) for its
    bars, with two more panels of the trace diagnostics (diagnostics_bars) where a result has them."""
    diagnosed = [(run_id, res["diagnostics"]) for run_id, res in results if "diagnostics" in res]
    fig, axes = plt.subplots(1, 4 if diagnosed else 2, figsize=(20 if diagnosed else 10, 4.2))
    if diagnosed:  # evaluations since eval.py stored trace diagnostics
        diagnostics_bars(axes[2], axes[3], diagnosed)
    return fig, axes[:2]


def task_picture(doc, split, row, heading, response=None):
    """task_figure of the task at row of a dataset's split; response: (label, ids, eos) of a model's
    response to it (rollouts.task_response), judged strictly here."""
    checker = Checker(doc)
    problem, words = checker.problem(split.get(row, "prompt")), lambda ids: [checker.vocab[i] for i in ids]
    if response is not None:
        label, ids, eos = response
        plan = traces.split_response(words(ids))[1]
        response = (label, words(ids), checker.judge(problem, ids, eos, optimal_moves(split, row)),
                    checker.task.parse_plan(plan) if plan else None)
    return task_figure(checker.task, problem, heading, words(split.get(row, "trace")),
                       checker.task.parse_plan(words(split.get(row, "plan"))), response)
