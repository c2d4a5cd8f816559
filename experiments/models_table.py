"""The v2 models' training table for docs/laptop.md, from committed results files only.

    python experiments/models_table.py experiments/results/eff6v2

Reads efficiency.json and efficiency-<arch>.json (report.py efficiency) and each model's two run records
in runs/ (<id>-p: the patience stop; <id>: the cooldown from its best checkpoint; admin.py export-record)
and prints one markdown row per model, in the order the script trained them (stages.tsv).
"""
import argparse
import json
import sys
from pathlib import Path

ARCH_NAMES = {"decoder": "decoder-only", "encdec": "encoder-decoder"}


def load(path):
    with open(path) as f:
        return json.load(f)


def rows(results: Path):
    order = {}
    if (results / "stages.tsv").exists():  # training order: the line a model's stage finished on
        for i, line in enumerate((results / "stages.tsv").read_text().splitlines()):
            stage = line.split("\t")[0]
            if stage.startswith("model "):
                order[stage[len("model "):]] = i
    runs, evaluation = [], None
    for name in sorted(results.glob("efficiency*.json")):
        arch = "decoder" if name.stem == "efficiency" else name.stem.split("-", 1)[1]
        doc = load(name)
        evaluation = evaluation or doc["evaluation"]
        runs += [(r.get("arch", arch), r) for r in doc["runs"]]  # "arch": report.py since 2026-12-07
    runs.sort(key=lambda ar: order.get(ar[1]["run"], len(order)))
    table = []
    for arch, r in runs:
        path = results / "runs" / f"{r['run']}.json"
        if not path.exists():
            sys.exit(f"error: {path} is missing: the experiment script writes each model's record there; "
                     "copy it with the efficiency files")
        pat_path = results / "runs" / f"{r['run']}-p.json"
        table.append((arch, r, load(pat_path)["run"] if pat_path.exists() else None, load(path)["run"]))
    return evaluation, table


def fmt_stop(run):
    best = run["best"]
    return f"{best['step']:,} of {run['step']:,} ({best['metrics']['optimal_pct']:.1f}%)"


def fmt_test(r):
    if r.get("optimal_pct_upper95") is not None:  # none solved: no ± 0.0, its 95% upper bound (report.py)
        return f"0 of {r['tasks']} (95% upper bound {r['optimal_pct_upper95']:.1f})"
    return f"{r['optimal_pct']:.1f} ± {r['optimal_pct_se']:.1f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the experiment's results folder, e.g. experiments/results/eff6v2")
    args = ap.parse_args(argv)
    if not (args.results / "runs").is_dir():
        sys.exit(f"error: {args.results} has no runs/ folder: give the experiment's results folder")
    evaluation, table = rows(args.results)
    if evaluation is None:
        sys.exit(f"error: {args.results} has no efficiency*.json: run report.py efficiency (the script does) first")
    print("| model | patience stop: best step (validation) | cooldown: best step (validation) | test: optimal % of "
          f"{evaluation['num_tasks']} x {evaluation['samples']} samples | steps trained, both runs | wall s, both runs |")
    print("|---|---|---|---|---|---|")
    for arch, r, pat, cool in table:
        seed = f", seed {r['seed']}" if r["seed"] else ""
        model = f"{ARCH_NAMES.get(arch, arch)} {r['kind']}, {r['train_tasks']:,} tasks{seed}"
        first = fmt_stop(pat) if pat else "(patience alone)"
        wall = "-" if r["wall_s"] is None else f"{r['wall_s']:,.0f}"
        print(f"| {model} | {first} | {fmt_stop(cool)} | {fmt_test(r)} | {r['steps_trained']:,} | {wall} |")


if __name__ == "__main__":
    main()
