"""The v2 models' tables for docs/laptop.md, from committed results files only.

    python experiments/models_table.py experiments/results/eff6v2                  # the models
    python experiments/models_table.py experiments/results/eff6v2 --comparisons    # the paired differences
    python experiments/models_table.py experiments/results/eff6v2 --claim-a        # claim (a), over seeds

Reads efficiency.json and efficiency-<arch>.json (report.py efficiency) and each model's two run records
in runs/ (<id>-p: the patience stop; <id>: the cooldown from its best checkpoint; admin.py export-record)
and prints one markdown row per model, in the order the script trained them (stages.tsv). With
--comparisons: one row per paired difference in the compare-*.json files (report.py compare), named from
the efficiency files, by count and seed. With --claim-a: solution-only − search-augmented per architecture
and count, averaged over seeds, its error with the training randomness that the seed pairs measure added.
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


def pairs(results: Path):
    """(file name, (arch, kind, count, seed) of the first run, of the second, Δ, se) per paired difference
    in the compare-*.json files (Δ: second − first); a pair in two files once."""
    meta = {r["run"]: (arch, r["kind"], r["train_tasks"], r["seed"]) for arch, r in efficiency_runs(results)[1]}
    out, seen = [], set()
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
            out.append((path.name, meta[pair[0]], meta[pair[1]], r["optimal_pct_diff"], r["optimal_pct_diff_se"]))
    return out


def comparisons(results: Path):
    """(count, seed, order, label, diff, se, file) per paired difference."""
    table = []
    for name, (arch_a, kind_a, count, seed_a), (arch_b, kind_b, _, seed_b), diff, se in pairs(results):
        seed = "" if seed_b == 0 else f", seed {seed_b}"
        if seed_a != seed_b:
            order, label = 2, f"{ARCH_NAMES.get(arch_a, arch_a)} {kind_a}: seed {seed_b} − seed {seed_a}"
        elif arch_a != arch_b:
            order, label = 1, f"{kind_a}{seed}: {ARCH_NAMES.get(arch_b, arch_b)} − {ARCH_NAMES.get(arch_a, arch_a)}"
        else:
            order, label = 0, f"{ARCH_NAMES.get(arch_a, arch_a)}{seed}: {kind_b} − {kind_a}"
        table.append((count, max(seed_a, seed_b), order, label, diff, se, name))
    return sorted(table, key=lambda row: row[:3])


def training_variance(found, count=None):
    """σ² of one model's test rate from its training randomness alone, pooled over the seed pairs (at one
    count, or all): a pair's difference d on the same test tasks has variance 2σ² + se², so each gives
    (d² − se²) / 2, unbiased; their mean is floored at 0. None where no seed pair was trained."""
    seeds = [(d, se) for _, a, b, d, se in found if a[:3] == b[:3] and a[3] != b[3] and count in (None, a[2])]
    return max(0.0, sum((d * d - se * se) / 2 for d, se in seeds) / len(seeds)) if seeds else None


def claim_a(results: Path):
    """Claim (a) per architecture and count: solution-only − search-augmented, the mean over the seeds that
    have both; its error from the test tasks (their mean paired se: the seeds share the tasks, so it does
    not shrink) and with the training randomness added (2σ² / seeds; σ from the seed pairs at that count,
    else from all of them, marked as assumed)."""
    found = pairs(results)
    by = {}
    for _, a, b, d, se in found:
        kinds = {a[1]: 1, b[1]: -1}
        if a[0] == b[0] and a[3] == b[3] and set(kinds) == {"search-augmented", "solution-only"}:
            by.setdefault((a[0], a[2]), []).append((a[3], d * kinds["search-augmented"], se))
    rows_ = []
    for (arch, count), per_seed in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0] != "decoder")):
        n = len(per_seed)
        diff, se_test = sum(d for _, d, _ in per_seed) / n, sum(se for _, _, se in per_seed) / n
        var, assumed = training_variance(found, count), False
        if var is None:
            var, assumed = training_variance(found), True
        se_all = None if var is None else (se_test ** 2 + 2 * var / n) ** 0.5
        rows_.append((count, arch, sorted(s for s, _, _ in per_seed), diff, se_test, se_all, var, assumed))
    return rows_


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
    table = ap.add_mutually_exclusive_group()
    table.add_argument("--comparisons", action="store_true",
                       help="print the paired differences (compare-*.json) instead of the models")
    table.add_argument("--claim-a", action="store_true",
                       help="print claim (a) per architecture and count, over seeds, with training randomness")
    args = ap.parse_args(argv)
    if args.claim_a:
        rows_ = claim_a(args.results)
        if not rows_:
            sys.exit(f"error: {args.results} has no solution-only and search-augmented pair in compare-*.json: "
                     "run report.py compare (the script does) first")
        print("| training tasks | architecture | seeds | solution-only − search-augmented | ± test tasks | "
              "σ, training randomness | ± with it | Δ / se, with it |")
        print("|---|---|---|---|---|---|---|---|")
        for count, arch, seeds, diff, se_test, se_all, var, assumed in rows_:
            sigma = "not measured" if var is None else f"{var ** 0.5:.1f}" + " (assumed)" * assumed
            with_, ratio = ("-", "-") if not se_all else (f"{se_all:.1f}", signed(diff / se_all))
            print(f"| {count:,} | {ARCH_NAMES.get(arch, arch)} | {', '.join(map(str, seeds))} | {signed(diff)} | "
                  f"{se_test:.1f} | {sigma} | {with_} | {ratio} |")
        return
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
