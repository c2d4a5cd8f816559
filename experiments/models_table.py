"""The v2 models' tables for docs/laptop.md, from committed results files only.

    python experiments/models_table.py experiments/results/eff6v2                  # the models
    python experiments/models_table.py experiments/results/eff6v2 --comparisons    # the paired differences

Reads efficiency.json and efficiency-<arch>.json (report.py efficiency) and each model's two run records
in runs/ (<id>-p: the patience stop; <id>: the cooldown from its best checkpoint; admin.py export-record)
and prints one markdown row per model, in the order the script trained them (stages.tsv). With
--comparisons: one row per paired difference in the compare-*.json files (report.py compare), named from
the efficiency files, by count and seed.
"""
import argparse
import json
import sys
from pathlib import Path

ARCH_NAMES = {"decoder": "decoder-only", "encdec": "encoder-decoder"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read {path} ({e}): restore it from git or write it again (report.py, admin.py export-record)")


def efficiency_runs(results: Path):
    """(evaluation, [(arch, run row)]) from efficiency.json (decoder-only) and efficiency-<arch>.json."""
    runs, evaluation = [], None
    for name in sorted(results.glob("efficiency*.json")):
        arch = "decoder" if name.stem == "efficiency" else name.stem.split("-", 1)[1]
        doc = load(name)
        evaluation = evaluation or doc["evaluation"]
        runs += [(r.get("arch", arch), r) for r in doc["runs"]]  # "arch": report.py since 2026-12-07
    return evaluation, runs


def signed(x):
    return f"{x:+.1f}".replace("-", "−")


def rows(results: Path):
    order = {}
    if (results / "stages.tsv").exists():  # training order: the line a model's stage finished on
        for i, line in enumerate((results / "stages.tsv").read_text().splitlines()):
            stage = line.split("\t")[0]
            if stage.startswith("model "):
                order[stage[len("model "):]] = i
    evaluation, runs = efficiency_runs(results)
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


def comparisons(results: Path):
    """(count, seed, order, label, diff, se, file) per paired difference; a pair in two files once."""
    meta = {r["run"]: (arch, r["kind"], r["train_tasks"], r["seed"]) for arch, r in efficiency_runs(results)[1]}
    table, seen = [], set()
    for path in sorted(results.glob("compare-*.json")):  # …-search-solution.json before its three-kind file
        runs = load(path)["runs"]
        for r in runs[1:]:
            pair = (runs[0]["run"], r["run"])
            if pair in seen:
                continue
            seen.add(pair)
            if pair[0] not in meta or pair[1] not in meta:
                sys.exit(f"error: {path.name} compares {pair[0]} and {pair[1]}, not both in efficiency*.json: "
                         "regenerate the efficiency files (report.py efficiency) over every run")
            (arch_a, kind_a, count, seed_a), (arch_b, kind_b, _, seed_b) = meta[pair[0]], meta[pair[1]]
            seed = "" if seed_b == 0 else f", seed {seed_b}"
            if seed_a != seed_b:
                order, label = 2, f"{ARCH_NAMES.get(arch_a, arch_a)} {kind_a}: seed {seed_b} − seed {seed_a}"
            elif arch_a != arch_b:
                order, label = 1, f"{kind_a}{seed}: {ARCH_NAMES.get(arch_b, arch_b)} − {ARCH_NAMES.get(arch_a, arch_a)}"
            else:
                order, label = 0, f"{ARCH_NAMES.get(arch_a, arch_a)}{seed}: {kind_b} − {kind_a}"
            table.append((count, max(seed_a, seed_b), order, label, r["optimal_pct_diff"], r["optimal_pct_diff_se"],
                          path.name))
    return sorted(table, key=lambda row: row[:3])


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
    ap.add_argument("--comparisons", action="store_true",
                    help="print the paired differences (compare-*.json) instead of the models")
    args = ap.parse_args(argv)
    if args.comparisons:
        rows_ = comparisons(args.results)
        if not rows_:
            sys.exit(f"error: {args.results} has no compare-*.json: run report.py compare (the script does) first")
        print("| training tasks | comparison | Δ optimal % (paired) | Δ / se | file |")
        print("|---|---|---|---|---|")
        for count, _, _, label, diff, se, name in rows_:
            print(f"| {count:,} | {label} | {signed(diff)} ± {se:.1f} | {signed(diff / se) if se else '-'} | `{name}` |")
        return
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
