"""Plots of runs and datasets, each written to the PNG file named by --out (matplotlib, headless).

  python report.py loss --run-id A [--run-id B ...] --out loss.png
      training (solid) and test (dashed) loss against the step, one colour per run
  python report.py traces [--dataset NAME ...] [--split train] [--first N] [--run-id R ...] [--eval-split test] --out traces.png
      the distribution of trace lengths in tokens: each dataset's sequences (A*'s traces, or a
      bootstrapped dataset's), and each run's optimal responses in its latest evaluation (eval.py)
  python report.py metrics --run-id A [--run-id B ...] [--split test] --out metrics.png
      optimal % / correct % and SWC / ILR of each run's latest evaluation, as bars (Table 1 as a picture)

A run's "latest evaluation" is the most recent eval.py result on that split (eval.py bootstrap stores
one on the train split). The file is written under a temporary name and renamed, so a failed plot
never leaves a partial PNG.
"""
import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import errors  # noqa: E402
from dataset import get_dataset, load_split  # noqa: E402
from errors import ConfigError, DataError, StoreError  # noqa: E402
from store import check_name, connect  # noqa: E402

PERCENTS = [("optimal_pct", "optimal %"), ("correct_pct", "correct %")]
RATIOS = [("swc", "SWC"), ("ilr_solved", "ILR-solved"), ("ilr_optimal", "ILR-optimal")]


def check_out(path):
    """The output must be a .png in an existing, writable folder: checked before any work."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {path!r} must name a .png file")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist (create it first)"
        raise ConfigError(f"cannot write {path}: {folder} {why}")
    if not os.access(folder, os.W_OK) or out.is_dir() or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"cannot write {path}: permission denied (choose another --out)")
    return out


def save(fig, out):
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


def finish(fig, ax, xlabel, ylabel, out, legend_size=8):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    save(fig, out)


def latest_result(store, run_id, split):
    store.require_run(run_id)
    res = next(iter(store.results.find({"run_id": run_id, "params.split": split}).sort([("time", -1)]).limit(1)), None)
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
    results = [(run_id, latest_result(store, run_id, args.split)["metrics"]) for run_id in args.run_id]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
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
    for p in sub.choices.values():
        p.add_argument("--out", required=True, help="the PNG file to write")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        for run_id in args.run_id or []:
            check_name(run_id)
        if getattr(args, "first", 0) < 0:
            raise ConfigError(f"--first must not be negative, got {args.first}")
        args.out = check_out(args.out)
        args.fn(connect(), args)
    except errors.REPORTED as e:
        sys.exit(errors.exit_message(e))


if __name__ == "__main__":
    main()
