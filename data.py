"""Datasets on the command line: generate (maze, sokoban), import (the reference's layout), add A*
statistics, shuffle traces (the trace-meaning control), list, show and drop token datasets in MongoDB.

The stored format and loading are in dataset.py, generation in generate.py, the import in
reference_import.py.
"""
import argparse
import os
import sys

import numpy as np

import errors
import store
import tasks
from dataset import ASTAR_FIELD, DTYPE, PARTS, drop_dataset, generation_rule, get_dataset, origin, shuffle_traces
from errors import ConfigError, DataError
from generate import astar_stats, generate_maze, generate_sokoban
from reference_import import import_dataset
from store import check_name


def length_stats(db, name):
    """[(split, part, count, min, q25, median, q75, max)] of token lengths, parts as stored and
    `response` = trace + plan (what a search-augmented model generates)."""
    doc = get_dataset(db, name)
    rows = []
    for split in ("train", "test"):
        lens = {p: [] for p in PARTS}
        for d in db[f"ds.{name}.{doc['uid']}.{split}"].find({}, {f"{p}_len": 1 for p in PARTS}):
            for p in PARTS:
                lens[p].append(d[f"{p}_len"])
        lens["response"] = np.add(lens["trace"], lens["plan"])
        for p, v in lens.items():
            if len(v):
                q = np.percentile(v, [0, 25, 50, 75, 100]).astype(int)
                rows.append((split, p, len(v), *q))
    return rows


def render_task(doc, tokens):
    """The task as a board with its plan drawn, or None when the kind has none or tokens do not parse."""
    task = tasks.of(doc["task"], doc.get("params", {}))
    if task is None:
        return None
    try:
        return task.render(task.parse_prompt(tokens["prompt"]), task.parse_plan(tokens["plan"]))
    except ValueError:
        return None


def show_sequence(db, name, split, seq_id):
    doc = get_dataset(db, name)
    seq = db[f"ds.{name}.{doc['uid']}.{split}"].find_one({"_id": seq_id})
    if seq is None:
        raise DataError(f"dataset {name!r} has no {split} sequence {seq_id} "
                        f"(ids 0..{doc['counts'][split] - 1})")
    tokens = {p: [doc["vocabulary"][i] for i in np.frombuffer(seq[p], DTYPE)] for p in PARTS}
    board = render_task(doc, tokens)
    if board is None:  # no board: show the tokens, the trace shortened
        trace = tokens["trace"][:40] + (["..."] if len(tokens["trace"]) > 40 else [])
        board = "\n".join(f"{p}: {' '.join(t)}" for p, t in (("prompt", tokens["prompt"]), ("trace", trace),
                                                              ("plan", tokens["plan"])))
    astar = f", mean A* trace {seq[ASTAR_FIELD]:.1f}" if ASTAR_FIELD in seq else ""
    return (f"{name} {split} #{seq_id} ({doc['task']}): prompt {seq['prompt_len']}, trace {seq['trace_len']}, "
            f"plan {seq['plan_len']} tokens{astar}\n{board}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Generate, list, inspect and drop token datasets in MongoDB.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("maze", help="generate n x n maze tasks with A* traces")
    p.add_argument("--size", type=int, default=10, help="maze side n (default 10)")
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--nondeterministic", action="store_true",
                   help="the reference's nondeterministic A*: shuffled children, coin-flip f-ties")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--name", help="the dataset's name (default: the standard one, printed when written)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--chunk", type=int, default=16,
                   help="wall layouts per seeded job, about 17 tasks each (part of the dataset's identity)")
    p = sub.add_parser("sokoban", help="generate 7x7 Sokoban levels (2 walls, 2 boxes) with A* traces")
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--max-trace-tokens", type=int, default=10000, help="keep levels whose trace is shorter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--name", help="the dataset's name (default: the standard one, printed when written)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--chunk", type=int, default=64, help="levels per seeded job (part of the dataset's identity)")
    p = sub.add_parser("astar-stats", help="store each test task's mean A* trace length (for ILR)")
    p.add_argument("name")
    p.add_argument("--runs", type=int, default=64, help="A* runs per task (nondeterministic A*)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=int, default=0, help="only the first N sequences (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p = sub.add_parser("import", help="convert a dataset in the reference's MongoDB layout")
    p.add_argument("--from-uri", required=True, help="MongoDB URI of the server holding it")
    p.add_argument("--from-db", default="tokenSeqDB", help="its database (default tokenSeqDB, the reference's)")
    p.add_argument("--name", required=True, help="its name (the _id in its `vocabulary` collection)")
    p.add_argument("--as", dest="new_name", help="name to give it here (default: the same)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--batch-size", type=int, default=1000, help="sequences read per batch")
    p = sub.add_parser("shuffle-traces", help="the trace-meaning control: NAME's tasks, each with another task's trace",
                       description="Write a dataset with NAME's training prompts and plans, each task carrying the A* "
                                   "trace of another task (a seeded random permutation of the traces in which no task "
                                   "keeps its own), and NAME's test split unchanged. It records its source and seed "
                                   "(data.py list / show).")
    p.add_argument("name", help="the dataset to shuffle (it must have traces)")
    p.add_argument("--name", dest="new_name", help="the new dataset's name (default shuffled.NAME)")
    p.add_argument("--seed", type=int, default=0, help="the permutation's seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    sub.add_parser("list", help="list datasets")
    p = sub.add_parser("drop", help="delete a dataset, and its local cache on this machine")
    p.add_argument("name")
    p = sub.add_parser("show", help="counts and length statistics of a dataset, or one task with --id")
    p.add_argument("name")
    p.add_argument("--id", type=int, help="print this sequence: its board with the plan drawn, and lengths")
    p.add_argument("--split", choices=("test", "train"), default="test")
    return check_args(ap.parse_args(argv))


def check_args(args):
    """Refuse values no command can use, and bad dataset names, before any database call."""
    if args.cmd in ("maze", "sokoban"):
        for flag, value, least in (("--num-train", args.num_train, 1), ("--num-test", args.num_test, 0),
                                   ("--workers", args.workers, 1), ("--chunk", args.chunk, 1)):
            if value < least:  # no train sequences: nothing to train on
                raise ConfigError(f"{flag} must be >= {least}, got {value}")
        if args.cmd == "maze" and args.size < 3:
            raise ConfigError("--size must be >= 3")
        if args.cmd == "sokoban" and args.max_trace_tokens < 100:  # shorter traces are too rare to fill a set
            raise ConfigError("--max-trace-tokens must be >= 100")
    if args.cmd == "astar-stats" and (args.runs < 1 or args.limit < 0 or args.workers < 1):
        raise ConfigError("--runs and --workers must be >= 1, --limit >= 0")
    if args.cmd == "import" and args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if args.cmd == "shuffle-traces":
        if args.seed < 0:
            raise ConfigError("--seed must be >= 0")
        check_name(args.name, "dataset name")
        args.new_name = check_name(args.new_name or f"shuffled.{args.name}", "dataset name")
    named = (args.new_name or args.name) if args.cmd in ("import", "shuffle-traces") else getattr(args, "name", None)
    if named is not None:
        check_name(named, "dataset name")
    return args


def make(db, args):
    """The commands that write a dataset: maze, sokoban, astar-stats, shuffle-traces, import."""
    if args.cmd == "maze":
        name = generate_maze(db, args.size, args.num_train, args.num_test, args.nondeterministic, args.seed,
                             args.overwrite, args.workers, args.chunk, args.name)
        print(f"wrote dataset {name}")
    elif args.cmd == "sokoban":
        name = generate_sokoban(db, args.num_train, args.num_test, args.seed, args.overwrite, args.workers,
                                args.max_trace_tokens, args.chunk, args.name)
        print(f"wrote dataset {name}")
    elif args.cmd == "astar-stats":
        n = astar_stats(db, args.name, args.split, args.runs, args.limit, args.seed, args.workers)
        print(f"{args.name}: {ASTAR_FIELD} set on {n} {args.split} sequences")
    elif args.cmd == "shuffle-traces":
        shuffle_traces(db, args.name, args.new_name, args.seed, args.overwrite)
        print(f"wrote dataset {args.new_name}: the training tasks of {args.name}, each with another one's trace "
              f"(seed {args.seed}); test split copied")
    elif args.cmd == "import":
        name, counts, skipped = import_dataset(db, args.from_uri, args.from_db, args.name, args.new_name,
                                               args.overwrite, args.batch_size)
        print(f"imported {args.name} as {name}: {counts['train']} train, {counts['test']} test sequences"
              + (f", {skipped} skipped" if skipped else ""))


def inspect(db, args):
    """The commands that read or drop one: list, show, drop."""
    if args.cmd == "list":
        print(f"{'name':45} {'task':8} {'rule':9} {'train':>9} {'test':>8}  state")
        for doc in db.datasets.find().sort("_id", 1):
            building = doc.get("building")
            state = f"building ({sum(building['counts'].values())} written)" if building else "complete"
            counts = doc.get("counts", {})
            rule = generation_rule(doc if doc.get("uid") else building)
            source = origin(doc if doc.get("uid") else building)
            print(f"{doc['_id']:45} {doc.get('task', building and building['task']):8} {rule:9} "
                  f"{counts.get('train', '-'):>9} {counts.get('test', '-'):>8}  {state}" + (f", {source}" if source else ""))
    elif args.cmd == "drop":
        drop_dataset(db, args.name)
        print(f"dropped dataset {args.name}")
    elif args.cmd == "show" and args.id is not None:
        print(show_sequence(db, args.name, args.split, args.id))
    elif args.cmd == "show":
        doc = get_dataset(db, args.name)
        print(f"{args.name}: task {doc['task']}, generation rule {generation_rule(doc)}, "
              f"vocabulary {len(doc['vocabulary'])} tokens, params {doc['params']}")
        if origin(doc):
            print(f"derived: {origin(doc)}")
        print(f"{'split':6} {'part':8} {'count':>8} {'min':>6} {'q25':>6} {'median':>6} {'q75':>6} {'max':>6}")
        for split, part, count, *q in length_stats(db, args.name):
            print(f"{split:6} {part:8} {count:>8} " + " ".join(f"{v:>6}" for v in q))


def main(argv=None):
    try:
        args = parse_args(argv)
        db = store.connect().db
        (make if args.cmd in ("maze", "sokoban", "astar-stats", "shuffle-traces", "import") else inspect)(db, args)
    except errors.REPORTED as e:  # a PyMongoError too: e.g. the database went away mid-command
        sys.exit(errors.exit_message(e))
    except KeyboardInterrupt:  # generation saves its progress chunk by chunk
        print("interrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
