"""Whether a re-run reproduced a recorded stage: the run records two results folders share, compared
field by field with what only the clock decides left out (times, wall seconds, throughput, ids).

    python experiments/same_records.py experiments/results/eff6v2 experiments/results/eff6v2-rerun

Prints, for each run record in both folders' runs/: identical, or the first fields that differ (training
losses, validation rates, the selected checkpoint, the test evaluation's per-task results). Exits 1 when
any differs, 2 when the folders share no record or one is unreadable.

    python experiments/same_records.py experiments/results/eff6v2 experiments/results/eff6v2 \
        --pair eff6v2-pilot-search-1000-s0-cooldown=eff6v2-search-1000-s0

With --pair, two runs under other ids (a pilot and a model that repeat one training): what they computed
is compared, their logged losses and validation rates and the evaluations both have, by parameters.
"""
import argparse
import json
import sys
from pathlib import Path

CLOCK = {"time", "created", "updated", "wall_s", "tokens_per_s", "_id", "id", "host"}


def clean(x):
    """x without the fields that only the clock (or the database) decides."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if k not in CLOCK}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def differences(a, b, path="", out=None):
    """The paths at which a and b differ, at most 5."""
    out = [] if out is None else out
    if len(out) >= 5:
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            differences(a.get(k), b.get(k), f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path or '.'}: {json.dumps(a)[:60]} != {json.dumps(b)[:60]}")
    return out


def read(path):
    """A run record, or one line and exit 2."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        print(f"error: {path} is not a run record (bad JSON: {e}); export it again with admin.py export-record",
              file=sys.stderr)
        sys.exit(2)


def computed(record):
    """What a run's training and evaluation computed, without its id: the logs and, by parameters, the
    evaluations (the configuration is left out: fields added to it later read null in an old record)."""
    drop = lambda row: {k: v for k, v in row.items() if k != "run_id"}
    return {"logs": [drop(log) for log in record["logs"]], "results": {r["pkey"]: drop(r) for r in record["results"]}}


def pair(recorded, rerun, spec):
    """Paired records' differences: their computations, on the evaluations both runs have."""
    if "=" not in spec:
        print(f"error: --pair {spec}: give RECORDED=RERUN, two run ids", file=sys.stderr)
        sys.exit(2)
    ids = spec.split("=", 1)
    paths = [d / "runs" / f"{i}.json" for d, i in zip((recorded, rerun), ids)]
    for path in paths:
        if not path.is_file():
            print(f"error: --pair {spec}: no run record {path}", file=sys.stderr)
            sys.exit(2)
    a, b = (clean(computed(read(path))) for path in paths)
    both = a["results"].keys() & b["results"].keys()
    for c in (a, b):
        c["results"] = {k: v for k, v in c["results"].items() if k in both}
    return ids[1], differences(a, b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recorded", type=Path, help="the results folder of the recorded stage")
    ap.add_argument("rerun", type=Path, help="the results folder of the re-run")
    ap.add_argument("--pair", action="append", default=[], metavar="RECORDED=RERUN",
                    help="compare run RECORDED of the first folder with run RERUN of the second (repeatable)")
    args = ap.parse_args(argv)
    if args.pair:
        found = [pair(args.recorded, args.rerun, spec) for spec in args.pair]
        for name, diff in found:
            print(f"{name}: " + ("identical" if not diff else "differs at " + "; ".join(diff)))
        sys.exit(1 if any(diff for _, diff in found) else 0)
    names = sorted({p.name for p in args.recorded.glob("runs/*.json")} & {p.name for p in args.rerun.glob("runs/*.json")})
    if not names:
        print(f"error: {args.recorded}/runs and {args.rerun}/runs share no run record: give the two results folders",
              file=sys.stderr)
        sys.exit(2)
    differ = 0
    for name in names:
        a, b = (clean(read(d / "runs" / name)) for d in (args.recorded, args.rerun))
        diff = differences(a, b)
        differ += bool(diff)
        print(f"{name[:-5]}: " + ("identical" if not diff else "differs at " + "; ".join(diff)))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
