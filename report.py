"""Plots of runs and datasets, each written to the PNG file named by --out (matplotlib, headless), and
tables comparing runs' evaluations (--json: also as a JSON file).

  python report.py loss --run-id A [--run-id B ...] --out loss.png
      training (solid) and test (dashed) loss against the step, one colour per run
  python report.py traces [--dataset NAME ...] [--split train] [--first N] [--run-id R ...] [--eval-split test] --out traces.png
      the distribution of trace lengths in tokens: each dataset's sequences (A*'s traces, or a
      bootstrapped dataset's), and each run's optimal responses in its latest evaluation (eval.py)
  python report.py metrics --run-id A [--run-id B ...] [--split test] --out metrics.png
      optimal % / correct % and SWC / ILR of each run's latest evaluation as bars, and its trace diagnostics
  python report.py task --dataset NAME --id I [--split test] [--run-id R [--checkpoint best] [--sample K]] --out t.png
      one task drawn with A*'s plan and trace, and beside it a run's stored (else fresh greedy) response (drawing.py)
  python report.py compare --run-id A --run-id B [...] [--split test] [--json cmp.json]
      a table of runs on the tasks that every one solves optimally (see below)
  python report.py efficiency --run-id R [...] --out eff.png [--json eff.json]
      optimal % against the number of training tasks, one line per model kind (the paper's Figure 3)
  python report.py bootstrap --run-id STEP0 --run-id STEP1 [...] [--control C1 ...] --out boot.png [--json ...]
      trace/A* and optimal % per bootstrapping step, the control runs as a second line

A run's "latest evaluation" is the most recent eval.py result on that split (eval.py bootstrap stores one on the train
split). compare, efficiency and bootstrap use the latest of the best checkpoint's evaluations (eval.py --checkpoint
best) when the run has one, else its latest; evaluations after a trace prefix are left out; the runs must have been
evaluated on the same tasks (the same prompts, whichever dataset holds them) with the same samples and temperature.

Comparing runs. Per run: optimal % of the evaluated tasks with its standard error; trace/A* over the tasks that every
compared run solves optimally, as the ratio of sums sum t_i / sum t*_i (as eval.py's trace/A*; t_i the mean trace
length of the task's optimal responses) with its delta-method standard error; and both as paired differences from the
first run on the same tasks (optimal: per-task solved-or-not differences; trace/A*: sum (t_i - t_first,i) / sum t*_i).
Every standard error on test tasks is clustered by wall layout (the maze tasks of one layout are not independent:
metrics.py cluster_sum_se); a run that solves none shows 0 with its 95% upper bound (each layout one trial), not ± 0.
Each run's row also holds the validation figures that selected its checkpoint (`selected`).

Model kinds (efficiency): solution-only (a plan-only run), shuffled-trace (its training dataset was made by data.py
shuffle-traces: params shuffled_traces), search-augmented (otherwise); the title names the architectures. The training
tasks are the run's num_train_sequences (all: the dataset's train count). Error bars: 2+ seeds (runs of a kind and count):
their standard error and the runs' mean own error (the tasks are shared) combined, else the run's own (by layout); the y
axis starts at 0. Tokens seen are loss tokens (trace and plan, prompts left out) summed over the train log records, up
to the evaluated step and in all; wall time runs from the run's creation to its last update (time between a kill and
its resume included). A run started from another's checkpoint (a cooldown) counts that run's tokens, steps and time.

PNG and JSON files are written under a temporary name and renamed, so a failure never leaves a partial file."""
import argparse
import json
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import drawing  # noqa: E402
import errors  # noqa: E402
import tasks  # noqa: E402
from dataset import get_dataset, load_split  # noqa: E402
from errors import ConfigError, DataError, StoreError  # noqa: E402
from metrics import check_alike, compare, paired, print_table, run_stats  # noqa: E402
from store import check_name, connect  # noqa: E402

PERCENTS = [("optimal_pct", "optimal %"), ("correct_pct", "correct %")]
RATIOS = [("swc", "SWC"), ("ilr_solved", "ILR-solved"), ("ilr_optimal", "ILR-optimal")]
KINDS = ("search-augmented", "shuffled-trace", "solution-only")  # efficiency's lines, in this order
COMPARE_COLUMNS = [("step", "step", "{}"), ("checkpoint", "checkpoint", "{}"), ("optimal_pct", "optimal %", "{:.1f}"),
                   ("optimal_pct_diff", "Δ optimal %", "{:+.1f}"), ("common", "common tasks", "{}"),
                   ("trace_ratio", "trace/A*", "{:.3f}"), ("trace_ratio_diff", "Δ trace/A*", "{:+.3f}")]
EFFICIENCY_COLUMNS = [("kind", "kind", "{}"), ("train_tasks", "train tasks", "{:,}"), ("seed", "seed", "{}"),
                      ("optimal_pct", "optimal %", "{:.1f}"), ("step", "step", "{}"), ("checkpoint", "checkpoint", "{}"),
                      ("tokens_at_eval", "tokens to step", "{:,}"), ("tokens", "tokens", "{:,}"),
                      ("steps_trained", "steps trained", "{}"), ("wall_s", "wall s", "{:.0f}")]
BOOTSTRAP_COLUMNS = [("line", "line", "{}"), ("bootstrap_step", "bootstrap step", "{}"), *COMPARE_COLUMNS,
                     ("control_optimal_pct_diff", "Δ control optimal %", "{:+.1f}"),
                     ("control_trace_ratio_diff", "Δ control trace/A*", "{:+.3f}")]


def check_out(path, suffix=".png", flag="--out"):
    """The output must be a .png (.json) in an existing, writable folder: checked before any work."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {path!r} must name a {suffix} file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist (create it first)"
        raise ConfigError(f"cannot write {path}: {folder} {why}")
    if not os.access(folder, os.W_OK) or out.is_dir() or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"cannot write {path}: permission denied (choose another --out)")
    return out


def write_atomic(out, write):
    """write(tmp) then rename tmp to out: a failure leaves no partial file."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


def save(fig, out):
    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def save_json(doc, out):
    """(value, standard error) pairs become value and value_se fields; (0, None, bound) of a rate none
    achieved, value, value_se null and value_upper95."""
    def flat(d):
        if isinstance(d, list):
            return [flat(x) for x in d]
        if not isinstance(d, dict):
            return d
        out = {}
        for k, v in d.items():  # a tuple: (value, se) or (value, None, upper95)
            out.update(zip((k, f"{k}_se", f"{k}_upper95"), v) if isinstance(v, tuple) else [(k, flat(v))])
        return out
    if out is not None:
        write_atomic(out, lambda tmp: tmp.write_text(json.dumps(flat(doc), indent=1) + "\n"))


def finish(fig, ax, xlabel, ylabel, out, legend_size=8):
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    save(fig, out)


def latest_result(store, run_id, split, compared=False):
    """The run's latest evaluation on split; compared: the one a comparison uses, of the best
    checkpoint where there is one, never one after a trace prefix."""
    store.require_run(run_id)
    query = {"run_id": run_id, "params.split": split,
             **({"params.prefix_len": {"$exists": False}} if compared else {})}
    newest = lambda extra: store.results.find_one({**query, **extra}, sort=[("time", -1)])  # noqa: E731
    res = (compared and newest({"params.checkpoint": "best"})) or newest({})
    if res is None:
        raise StoreError(f"run {run_id!r} has no evaluation on the {split} split: run eval.py --run-id {run_id}"
                         f"{' --split train' if split == 'train' else ''} first")
    return res


def plot_loss(store, args):
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, run_id in enumerate(args.run_id):
        store.require_run(run_id)
        logs = store.get_logs(run_id)
        if not logs:
            raise StoreError(f"run {run_id!r} has no logs yet: train it first (train.py ... --run-id {run_id})")
        for split, style in (("train", "-"), ("test", "--")):
            recs = [r for r in logs if r["split"] == split]
            if recs:
                ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], style, color=f"C{i}",
                        marker="o" if split == "test" else None, markersize=3, label=f"{run_id} ({split})")
    ax.set_yscale("log")
    finish(fig, ax, "step", "loss (mean token cross-entropy)", args.out)


def plot_traces(store, args):
    series = []  # (label, trace lengths)
    for name in args.dataset or []:
        doc = get_dataset(store.db, name)
        lens = load_split(store.db, doc["_id"], args.split).lens["trace"][:args.first or None]
        if not len(lens) or not lens.max():
            raise DataError(f"dataset {name!r} has no traces in its {args.split} split (plan-only data cannot be "
                             f"plotted)")
        series.append((f"{name} ({args.split})", np.asarray(lens)))
    for run_id in args.run_id or []:
        res = latest_result(store, run_id, args.eval_split)
        if "optimal_trace_lens" not in res:
            raise StoreError(f"run {run_id!r}'s latest evaluation predates stored trace lengths: run eval.py "
                             f"--run-id {run_id} again (stored responses are reused)")
        lens = np.asarray(res["optimal_trace_lens"])
        if not len(lens):
            raise StoreError(f"run {run_id!r} has no optimal responses in its latest evaluation on the "
                             f"{args.eval_split} split: nothing to plot")
        series.append((f"{run_id}: optimal responses ({args.eval_split}, step {res['step']})", lens))
    if not series:
        raise ConfigError("nothing to plot: name one or more --dataset or --run-id")
    top = max(int(np.percentile(lens, 99.5)) for _, lens in series)
    step = int(np.gcd.reduce(np.concatenate([lens for _, lens in series]).astype(np.int64))) or 1  # maze: 5 per A* step
    width = step * max(1, -(-top // (40 * step)))  # about 40 bins, each a whole number of steps
    bins = np.arange(0, top + 2 * width, width) - step / 2  # centred on the lengths that occur
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, lens) in enumerate(series):
        ax.hist(np.minimum(lens, bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.8, color=f"C{i}",
                label=f"{label}: median {np.median(lens):.0f}, n={len(lens)}")
    finish(fig, ax, "trace length (tokens; the last bin holds the longest 0.5%)", "density", args.out, legend_size=7)


def plot_metrics(store, args):
    docs = [(run_id, latest_result(store, run_id, args.split)) for run_id in args.run_id]
    results = [(run_id, res["metrics"]) for run_id, res in docs]
    fig, (left, right) = drawing.metrics_figure(docs)  # with the trace diagnostics' panels where there are some
    for ax, keys, top in ((left, PERCENTS, 100), (right, RATIOS, 1)):
        width = 0.8 / len(results)
        for i, (run_id, m) in enumerate(results):
            x = np.arange(len(keys)) + (i - (len(results) - 1) / 2) * width
            values = [m.get(k) for k, _ in keys]
            shown = [j for j, v in enumerate(values) if v is not None]  # plan-only runs have no ILR
            bars = ax.bar(x[shown], [values[j] for j in shown], width, color=f"C{i}", label=run_id)
            ax.bar_label(bars, fmt="%.2f" if top == 1 else "%.0f", fontsize=7)
        ax.set_xticks(np.arange(len(keys)), [title for _, title in keys])
        ax.set_ylim(0, max(top, *(m.get(k) or 0 for _, m in results for k, _ in keys)) * 1.1)
        ax.grid(axis="y", alpha=0.3)
    left.set_ylabel(f"% of {args.split} tasks")
    right.legend(fontsize=8)
    save(fig, args.out)


def draw_task(store, args):
    doc = get_dataset(store.db, args.dataset)
    split = load_split(store.db, doc["_id"], args.split)
    row, response = drawing.row_of(doc, args.split, split, args.id), None
    if args.run_id:
        from rollouts import task_response  # imports torch: only report.py task --run-id needs it
        response = task_response(store, args.run_id, args.checkpoint, doc, args.split, split, row, args.sample,
                                 args.max_tokens)
    save(drawing.task_picture(doc, split, row, f"{doc['_id']} {args.split} task {args.id}", response), args.out)


def compared_results(store, run_ids, split):
    return [(run_id, latest_result(store, run_id, split, compared=True)) for run_id in run_ids]


def layouts(store, res):
    """The wall layout of each task of a test-split evaluation (rows 0..n-1), as small ints: the clusters
    its standard errors count (a layout's tasks are not independent). None for another split (binomial)."""
    p = res["params"]
    if p["split"] != "test":
        return None
    doc, split = get_dataset(store.db, p["dataset"]), load_split(store.db, p["dataset"], "test", False)
    if p["num_tasks"] > len(split.ids):  # not an evaluation of this split's first tasks
        return None
    task = tasks.of(doc["task"], doc.get("params", {}))
    ids = {}
    return np.array([ids.setdefault((task.layout(prompt) if task else prompt).tobytes(), len(ids))
                     for prompt in (split.get(r, "prompt") for r in range(p["num_tasks"]))])


def selected(store, run_id):
    """The validation figures that selected a run's best checkpoint (train.py --patience), or None."""
    return ((store.get_run(run_id) or {}).get("best") or {}).get("metrics")


def evaluation(named, stats):
    """What the compared evaluations share, for the JSON file and the titles."""
    p = named[0][1]["params"]
    kinds = sorted({s["checkpoint"] for s in stats})
    return {"split": p["split"], "num_tasks": p["num_tasks"], "samples": p["samples"], "temperature": p["temperature"],
            "datasets": sorted({res["params"]["dataset"] for _, res in named}),
            "checkpoint": kinds[0] if len(kinds) == 1 else "mixed"}


def describe(ev):
    which = "mixed checkpoints (see the table)" if ev["checkpoint"] == "mixed" else f"{ev['checkpoint']} checkpoints"
    return f"{ev['num_tasks']} {ev['split']} tasks, {ev['samples']} samples each, {which}"


def cmd_compare(store, args):
    named = compared_results(store, args.run_id, args.split)
    rows, stats = compare(named, layouts(store, named[0][1]))
    for st in stats:
        st["selected"] = selected(store, st["run"])
    ev = evaluation(named, stats)
    print(f"{describe(ev)}; {len(rows)} solved optimally by every run; Δ: paired difference from {named[0][0]}")
    print_table([(s["run"], s) for s in stats], columns=COMPARE_COLUMNS)
    save_json({"evaluation": ev, "common_tasks": len(rows), "runs": stats}, args.json)


def run_kind(store, cfg):
    """(model kind, training tasks) of a run's config."""
    doc = get_dataset(store.db, cfg["train_name"])
    count = min(cfg["num_train_sequences"] or math.inf, doc["counts"]["train"])
    if cfg["plan_only"]:
        return "solution-only", count
    shuffled = "shuffled_traces" in doc.get("params", {})  # data.py shuffle-traces
    return ("shuffled-trace" if shuffled else "search-augmented"), count


def run_facts(store, run, step):
    """Loss tokens seen up to step and in all (train logs), steps trained and wall time of a run, a copy's with its
    original's; one started from another run's checkpoint (a cooldown) adds that one's: tokens to its step, all else."""
    logs = store.get_logs(run["_id"], "train")
    known = bool(logs) and all("tokens" in r for r in logs)
    wall = (run["updated"] - run["created"]).total_seconds() + (run.get("copied_from") or {}).get("wall_s", 0) \
        if run.get("created") and run.get("updated") else None
    facts = {"tokens_at_eval": sum(r["tokens"] for r in logs if r["step"] <= step) if known else None,
             "tokens": sum(r["tokens"] for r in logs) if known else None, "steps_trained": run.get("step"), "wall_s": wall}
    cfg = run.get("config", {})
    start = store.get_run(cfg["start_checkpoint"]) if cfg.get("start_checkpoint") else None
    if start is None:
        return facts
    before = run_facts(store, start, start["best"]["step"] if cfg.get("start_from") == "best" else start["step"])
    return {k: None if v is None or before[k] is None else v + before[k] for k, v in facts.items()}


def efficiency_points(runs, clustered=True):
    """One point per (kind, training tasks): the mean optimal % of its runs (two or more: error the seeds' standard
    error and the runs' mean own error on the same tasks, combined), else the run's own (by layout, or its bound)."""
    points = []
    for kind in KINDS:
        for count in sorted({r["train_tasks"] for r in runs if r["kind"] == kind}):
            group = [r for r in runs if r["kind"] == kind and r["train_tasks"] == count]
            pcts, ses = [r["optimal_pct"][0] for r in group], [r["optimal_pct"][1] or 0.0 for r in group]
            one = group[0]["optimal_pct"]  # a single run's (%, clustered SE), or (0, None, its 95% upper bound)
            pct = (float(np.mean(pcts)), math.hypot(np.std(pcts, ddof=1) / len(pcts) ** 0.5, np.mean(ses))) if len(pcts) > 1 else one
            points.append({"kind": kind, "train_tasks": count, "runs": [r["run"] for r in group],
                           "optimal_pct": pct, "error": ("seeds and " if len(pcts) > 1 else "") + ("layouts" if clustered else "binomial")})
    return points


def error_bar(pct):
    """(below, above) of a percentage's error bar: ± its standard error, or 0 up to its 95% upper bound."""
    return (0.0, pct[2]) if len(pct) == 3 else (pct[1] or 0.0, pct[1] or 0.0)


def plot_efficiency(store, args):
    named = compared_results(store, args.run_id, args.split)
    check_alike(named)
    clusters = layouts(store, named[0][1])
    runs = []
    for name, res in named:
        run = store.require_run(name)
        cfg = run["config"]
        kind, count = run_kind(store, cfg)
        runs.append({"run": name, "arch": cfg.get("arch", "decoder"), "kind": kind, "train_tasks": count,
                     "seed": cfg["seed"], **{k: v for k, v in run_stats(name, res, [], clusters).items() if k != "common"},
                     "selected": selected(store, name), **run_facts(store, run, res["step"])})
    points = efficiency_points(runs, clusters is not None)
    ev = evaluation(named, runs)
    print_table([(r["run"], r) for r in runs], columns=EFFICIENCY_COLUMNS)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, kind in enumerate(KINDS):
        mine = [p for p in points if p["kind"] == kind]
        if not mine:
            continue
        dodge = 1.04 ** (i - 1)  # the kinds' error bars side by side where they share a count
        ax.errorbar([p["train_tasks"] * dodge for p in mine], [p["optimal_pct"][0] for p in mine],
                    yerr=np.array([error_bar(p["optimal_pct"]) for p in mine]).T, marker="o", capsize=3,
                    color=f"C{i}", label=kind)
        seeds = [r for r in runs if r["kind"] == kind]
        ax.scatter([r["train_tasks"] * dodge for r in seeds], [r["optimal_pct"][0] for r in seeds], s=10, alpha=0.4,
                   color=f"C{i}")
    counts = sorted({p["train_tasks"] for p in points})  # ticks at the counts, with room: one count is not zoomed into
    ax.set(xscale="log", xlim=(counts[0] / 1.5, counts[-1] * 1.5), xticks=counts, xticklabels=[f"{c:,}" for c in counts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_ylim(0, max(5.0, *(p["optimal_pct"][0] + error_bar(p["optimal_pct"])[1] for p in points)) * 1.1)
    archs = " and ".join(sorted({r["arch"] for r in runs}))
    ax.set_title(f"{archs}: {describe(ev)}\nerror bars: seeds and wall layouts (2+ runs), else clustered by wall layout; "
                 f"none solved: up to the 95% upper bound", fontsize=9)
    save_json({"evaluation": ev, "runs": runs, "points": points}, args.json)
    finish(fig, ax, "training tasks", f"optimal % of {ev['split']} tasks", args.out)


def bootstrapped_data(store, run_id):
    """What a bootstrapping step trained on (its dataset made by eval.py bootstrap): the sequences whose
    trace got shorter than the source's, the mean trace length before and after, and the optimal % on
    the training tasks of the run it sampled (its train-split evaluation); None for another dataset."""
    name = store.require_run(run_id)["config"]["train_name"]
    info = get_dataset(store.db, name).get("params", {}).get("bootstrap")
    if info is None:
        return None
    boot, src = load_split(store.db, name, "train", False), load_split(store.db, info["source"], "train", False)
    n = len(boot.ids)
    before, after = src.lens["trace"][:n].astype(float), boot.lens["trace"].astype(float)  # row r is source row r
    sampled = store.results.find_one({"run_id": info["run_id"], "params.split": "train", "step": info["step"]},
                                     sort=[("time", -1)])
    return {"dataset": name, "sampled_run": info["run_id"], "sequences": n, "shorter": int((after < before).sum()),
            "trace_len_before": float(before.mean()), "trace_len_after": float(after.mean()),
            "train_optimal_pct": sampled["metrics"]["optimal_pct"] if sampled else None}


def plot_bootstrap(store, args):
    lines = [("bootstrap", k, r) for k, r in enumerate(args.run_id)]
    lines += [("control", k + 1, r) for k, r in enumerate(args.control or [])]  # step 0's run is both lines' start
    named = compared_results(store, [r for _, _, r in lines], args.split)
    for name, res in named:
        if "trace_ratio" not in res["metrics"]:
            raise ConfigError(f"run {name!r} is plan-only: bootstrapping compares search-augmented runs")
    clusters = layouts(store, named[0][1])
    rows, stats = compare(named, clusters)
    if not rows:  # optimal % against the control still says something; trace/A* has nothing to compare on
        print("note: no task is solved optimally by every run, so trace/A* is not compared; optimal % only",
              file=sys.stderr)
    for (line, step, _), s in zip(lines, stats):
        s.update(line=line, bootstrap_step=step)
        if line == "bootstrap" and step > 0:
            s["data"] = bootstrapped_data(store, s["run"])
    for s, (name, res) in zip(stats, named):
        control = next((i for i, (line, step, _) in enumerate(lines)
                        if line == "control" and step == s["bootstrap_step"]), None)
        if s["line"] == "bootstrap" and control is not None:
            vs = paired(named[control], (name, res), rows, clusters)
            s.update({f"control_{k}": v for k, v in vs.items()})
    ev = evaluation(named, stats)
    print(f"{describe(ev)}; trace/A* on the {len(rows)} tasks that every run solves optimally; Δ: paired difference "
          f"from step 0 ({named[0][0]}), Δ control: from the control at the same step")
    print_table([(s["run"], s) for s in stats], columns=BOOTSTRAP_COLUMNS)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "trace_ratio", f"trace/A* on the {len(rows)} tasks every run solves optimally"),
                           (axes[1], "optimal_pct", f"optimal % of {ev['split']} tasks")):
        for i, line in enumerate(("bootstrap", "control")):
            mine = [s for s in stats if s["line"] == line and s.get(key) is not None]
            if line == "control" and mine:
                mine = [stats[0], *mine]
            if mine:
                ax.errorbar([s["bootstrap_step"] + 0.02 * i for s in mine], [s[key][0] for s in mine],
                            yerr=np.array([error_bar(s[key]) for s in mine]).T, marker="o", capsize=3, color=f"C{i}",
                            linestyle="-" if i == 0 else "--", label=line)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(sorted({s["bootstrap_step"] for s in stats}))
        ax.set_xlabel("bootstrapping step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(describe(ev), fontsize=9)
    save_json({"evaluation": ev, "common_tasks": len(rows), "runs": stats}, args.json)
    save(fig, args.out)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("loss", help="training and test loss curves of runs")
    p.add_argument("--run-id", action="append", required=True, help="repeatable")
    p.set_defaults(fn=plot_loss)
    p = sub.add_parser("traces", help="trace-length distributions of datasets and of runs' optimal responses")
    p.add_argument("--dataset", action="append", help="repeatable: a dataset's sequences")
    p.add_argument("--split", default="train", choices=["train", "test"], help="the datasets' split (default train)")
    p.add_argument("--first", type=int, default=0, help="only the first N sequences of each dataset (a run's "
                   "num_train_sequences)")
    p.add_argument("--run-id", action="append", help="repeatable: a run's optimal responses in its latest evaluation")
    p.add_argument("--eval-split", default="test", choices=["train", "test"],
                   help="which evaluation of the runs (default test; eval.py bootstrap's is on train)")
    p.set_defaults(fn=plot_traces)
    p = sub.add_parser("metrics", help="bars of optimal %%, correct %%, SWC and ILR of runs")
    p.add_argument("--run-id", action="append", required=True, help="repeatable")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which evaluation (default test)")
    p.set_defaults(fn=plot_metrics)
    p = sub.add_parser("task", help="one task drawn with A*'s plan and trace, and a run's response beside it")
    p.add_argument("--dataset", required=True)
    p.add_argument("--id", type=int, required=True, help="the task's sequence id (data.py show --id)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="(default test)")
    p.add_argument("--run-id", help="draw this run's response beside it")
    p.add_argument("--checkpoint", default="latest", choices=["latest", "best"], help="the run's checkpoint (default latest)")
    p.add_argument("--sample", type=int, default=0, help="which of its stored responses (default 0)")
    p.add_argument("--max-tokens", type=int, default=0, help="a fresh response's limit (default: eval.py's)")
    p.set_defaults(fn=draw_task)
    p = sub.add_parser("compare", help="a table of runs on the tasks that every one solves optimally: optimal %% "
                       "(SE clustered by wall layout), trace/A* as sum t_i / sum t*_i (delta-method SE), paired differences from the "
                       "first run")
    p.add_argument("--run-id", action="append", required=True, help="repeatable; the first is the paired reference")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("efficiency", help="optimal %% against training tasks, one line per model kind (Figure 3)")
    p.add_argument("--run-id", action="append", required=True, help="repeatable: every run of every kind and seed")
    p.set_defaults(fn=plot_efficiency)
    p = sub.add_parser("bootstrap", help="trace/A* (on the tasks every run solves optimally) and optimal %% per "
                       "bootstrapping step, with the control")
    p.add_argument("--run-id", action="append", required=True,
                   help="repeatable, in order: the runs of bootstrapping steps 0, 1, 2, ...")
    p.add_argument("--control", action="append", help="repeatable, in order: the control runs of steps 1, 2, ... "
                   "(its line starts at step 0's run)")
    p.set_defaults(fn=plot_bootstrap)
    for name in ("compare", "efficiency", "bootstrap"):
        sub.choices[name].add_argument("--split", default="test", choices=["train", "test"],
                                       help="which evaluation (default test)")
        sub.choices[name].add_argument("--json", help="also write the figures to this .json file")
    for name, p in sub.choices.items():
        if name != "compare":
            p.add_argument("--out", required=True, help="the PNG file to write")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        for run_id in ([args.run_id] if isinstance(args.run_id, str) else args.run_id or []) + (getattr(args, "control", None) or []):
            check_name(run_id)
        for flag in ("first", "sample", "max_tokens"):
            if getattr(args, flag, 0) < 0:
                raise ConfigError(f"--{flag.replace('_', '-')} must not be negative, got {getattr(args, flag)}")
        if getattr(args, "out", None) is not None:
            args.out = check_out(args.out)
        if getattr(args, "json", None) is not None:
            args.json = check_out(args.json, ".json", "--json")
        args.fn(connect(), args)
    except errors.REPORTED as e:
        sys.exit(errors.exit_message(e))


if __name__ == "__main__":
    main()
