"""Evaluate a run by sampling responses from its checkpoint; bootstrap a shorter-trace dataset from them.

  python eval.py --run-id ID [--split test] [--num-tasks N] [--samples K] [--temperature T] [--max-tokens M|reference]
                 [--scoring reference] [--prefix-len K]
  python eval.py bootstrap --run-id ID [--name NEW_DATASET] [--num-tasks N] [--samples K] [--only-shorter] ...
  python eval.py average --run-id A --run-id B ... (or --pattern REGEX) [filters] [--scoring reference]
  python eval.py prompt --run-id ID --prompt "TOKENS" [--greedy | --samples K ...] [--response "TOKENS"] (prompting.py)

(`eval.py run ...` is the same as `eval.py ...`.) Runs as a plain process or under torchrun: each
rank samples a share of the tasks, and responses go to MongoDB as they finish (a few dozen at a time).

Sampling (decode.py). Each response continues `<bos> prompt <sep>` with the checkpoint's model (the
engine: docs/performance.md). A row stops at <eos> or after max_tokens tokens (default:
twice the longest stored response of the split sampled and its <eos>, see --help). Greedy at
temperature 0, else a sample of softmax(logits / T) drawn from noise keyed by the seed, the task and
the sample index; bf16 autocast on GPU.

With --prefix-len K a response continues `<bos> prompt <sep>` and the first K tokens of the task's
stored (A*) trace (all of it when shorter); the response is scored and stored with that prefix.

An encoder-decoder run (--arch encdec): its prompt `<bos> prompt <eos>` encoded once per task, the response
from `<bos>` (and the prefix), cross-attention keys and values computed once per task for all its samples.

Responses. The `responses` collection holds one document per (run id, checkpoint step, sampling
parameters (prefix length and --checkpoint best included), task, sample index), the tokens as
little-endian uint16 binary. Evaluating again reuses them; an interrupted evaluation resumes by
generating only the missing ones.

Checkpoints and tasks. --checkpoint latest (default) samples the run's current checkpoint, best the
one with its best validation metric (train.py --patience). On the test split results are reported on
its first tasks, never on the run's validation tasks (train.py --eval-tasks E: the last E, and the
rest of the wall layout they start in): a --num-tasks reaching them is refused.

Metrics, per task i over its K responses (strict checking: a response must end with <eos>, hold
only task tokens and a plan of `plan x y` states from its first `plan` token on, from start to
goal (maze) or solving the level by legal moves from the worker (Sokoban); l*_i and t*_i come from
the dataset: the stored plan, and astar_mean_trace_len when `data.py astar-stats` has added it,
else the stored trace length):
  optimal %     tasks with a correct plan of optimal length
  correct %     tasks with a correct plan
  SWC           mean of c_i l*_i / max(l_i, l*_i), l_i the shortest correct plan, lengths in states
                (moves + 1) as in the paper
  ILR-solved    mean of c_i t*_i / t_i, t_i the mean trace length of the correct responses
  ILR-optimal   the same over the optimal responses
  malformed %   responses without <eos> within the limit, with a token outside the task's
                language (specials), or with no plan or one that does not parse
  trace/A*      the optimal responses' mean trace length over A*'s, summed over the tasks that have
                one (0.73 means 27% shorter)
ILRs and trace/A* are left out for plan-only runs. Trace diagnostics (traces.py): the tasks by the
best kind among their responses (optimal, correct, wrong end, invalid move, malformed, no plan); for
search-augmented runs the mean share of a trace that is legal A* steps, the % of complete A* traces,
and (deterministic mazes) the mean share equal to A*'s before the first difference; --json prints the
summary as one JSON object instead of the table. Results go to the `results` collection
(see `admin.py show`). --scoring reference also computes them with the reference's more lenient
checker and stores them as reference_metrics: no <eos> needed, the plan is every token from the
first `plan` token on read as triples whose keyword is not checked, and for Sokoban the plan's
steps are replayed as moves from the worker, illegal ones changing nothing, wherever the plan
starts. A result also holds t_i and t*_i of every task solved optimally (optimal_by_task):
report.py compares runs on the tasks that all of them solve optimally.

Bootstrapping. For every training prompt of the run (its dataset and filters), sample K responses;
among those whose plan is correct and optimal (strict checking), the one with the fewest trace
tokens replaces the sequence, even when its trace is longer, as the reference did (--only-shorter:
only when shorter); with none, the sequence stays. The new dataset has the same
task, parameters and vocabulary; its test split is a copy of the run's test dataset's test split,
so it is self-contained (training on it may still name the original with test_name).
"""
import argparse
import json
import math
import os
import re
import sys
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist
from bson import Binary
from pymongo.errors import BulkWriteError

import devices
import errors
import prompting
from bootstrap import shortest_optimal, write_bootstrap
from dataset import DTYPE, Progress, filter_split, get_dataset, load_split
from errors import CheckpointError, ConfigError, DataError, StoreError
from metrics import COLUMNS, Checker, new_by_task, print_table, score, summarize
from rollouts import (LIMIT_FACTOR, Opts, batch_size_for, limit_for, load_model, max_tokens_flag, progress_line,
                      reportable_tasks, rollouts)
from store import check_checkpoint, check_name, connect, now
from traces import Diagnostics, describe


# ---------------------------------------------------------------------------------------------
# stored responses


def response_key(run_id, step, dataset_doc, split, opts, which="latest"):
    params = {"dataset": dataset_doc["_id"], "uid": dataset_doc["uid"], "split": split,
              "temperature": float(opts.temperature), "max_tokens": opts.max_tokens, "seed": opts.seed}
    if opts.prefix_len:  # absent at 0, so responses stored before the option keep their key
        params["prefix_len"] = opts.prefix_len
    if which != "latest":  # absent for the latest checkpoint, likewise: best and latest never mix
        params["checkpoint"] = which
    return {"run_id": run_id, "step": step, "pkey": json.dumps(params, sort_keys=True)}


# each of these reads or writes the database (db) through store.call, which retries it whole: they are
# safe to run again from the start


def missing_work(db, key, split, rows, samples):
    """[(row, [sample, ...])] of responses not stored yet, rows with short prompts first."""
    ids = split.ids[rows]
    have = {}
    for d in db.responses.find({**key, "sample": {"$lt": samples}}, {"task": 1, "sample": 1}):
        have.setdefault(d["task"], set()).add(d["sample"])
    work = [(r, [s for s in range(samples) if s not in have.get(int(i), ())]) for r, i in zip(rows, ids)]
    work = [(int(r), s) for r, s in work if s]
    return sorted(work, key=lambda w: split.lens["prompt"][w[0]])


def store_responses(db, key, split, finished):
    """Insert [((row, sample), ids, eos), ...]; those already stored (by another evaluation of the same
    key, or by an attempt whose answer was lost) are kept."""
    if not finished:
        return
    docs = [{**key, "task": int(split.ids[r]), "sample": s, "tokens": Binary(ids.tobytes()), "n": len(ids), "eos": e}
            for (r, s), ids, e in finished]
    try:
        db.responses.insert_many(docs, ordered=False)
    except BulkWriteError as e:  # stored already: keep that copy
        if any(err["code"] != 11000 for err in e.details["writeErrors"]):
            raise


def read_responses(db, key, tasks, samples):
    """{task: [(ids, eos), ...]} for the given task ids, samples in index order."""
    out = {t: [] for t in tasks}
    query = {**key, "task": {"$in": list(out)}, "sample": {"$lt": samples}}
    for d in db.responses.find(query, {"task": 1, "sample": 1, "tokens": 1, "eos": 1}).sort([("task", 1), ("sample", 1)]):
        out[d["task"]].append((np.frombuffer(d["tokens"], DTYPE), d["eos"]))
    return out


def iter_responses(store, key, split, rows, samples, chunk=256):
    """(row, [(ids, eos), ...]) for each row, samples in index order, read a chunk of tasks at a time."""
    for i in range(0, len(rows), chunk):
        part = [int(r) for r in rows[i:i + chunk]]
        out = store.call(read_responses, key, [int(split.ids[r]) for r in part], samples)
        yield from ((r, out[int(split.ids[r])]) for r in part)


def sample_missing(store, model, key, split, rows, samples, opts, batch_size, rank, world, device, compile=None):
    """Generate this rank's share of the responses missing for rows x samples, storing each batch."""
    work = store.call(missing_work, key, split, rows, samples)
    barrier(device)  # every rank plans from the same stored state before any writes
    mine = [(r, s) for r, missing in work[rank::world] for s in missing]  # a row's samples share a prefill
    if rank == 0:
        have = len(rows) * samples - sum(len(s) for _, s in work)
        print(f"sampling {len(rows) * samples} responses: {have} stored, {len(mine)} to generate on rank 0"
              + (f" of {len(rows) * samples - have} over {world} ranks" if world > 1 else ""), flush=True)
    show = progress_line(Progress("responses", len(mine)), opts.max_tokens) if rank == 0 else None
    finished = []
    for item in rollouts(model, split, mine, opts, batch_size, device, compile, show):
        finished.append(item)
        if len(finished) >= max(batch_size, 64):  # stored as they come: an interruption loses little
            store.call(store_responses, key, split, finished)
            finished = []
    store.call(store_responses, key, split, finished)
    barrier(device)


# ---------------------------------------------------------------------------------------------
# running


def barrier(device):
    if dist.is_initialized():
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def dataset_for(store, ck, split):
    """The run's dataset for a split (test_name for test), checked against the checkpoint's vocabulary."""
    cfg = ck["config"]
    name = (cfg["test_name"] or cfg["train_name"]) if split == "test" else cfg["train_name"]
    doc = store.call(get_dataset, name)
    if doc["vocabulary"] != ck["vocabulary"]:
        raise CheckpointError(f"dataset {name!r} has another vocabulary than run {ck['run_id']!r}'s checkpoint")
    return doc


def resolve_opts(args, doc, split, plan_only):
    max_tokens = limit_for(args.max_tokens, doc["task"], plan_only, split)
    prefix_len = getattr(args, "prefix_len", 0)
    if prefix_len and plan_only:
        raise ConfigError(f"run {args.run_id!r} is plan-only: its sequences have no trace to start from "
                          f"(drop --prefix-len)")
    return Opts(args.temperature, max_tokens, args.seed, prefix_len)


def test_rows(run_id, cfg, doc, split, num_tasks):
    """The first num_tasks test tasks (0: all), never one the run validates on (rollouts.reportable_tasks):
    its validation tasks select its best checkpoint."""
    eval_tasks = cfg.get("eval_tasks", 0)
    if not eval_tasks:
        return np.arange(len(split.ids))[:num_tasks or None]
    allowed = reportable_tasks(doc, split, eval_tasks)
    if num_tasks > allowed or allowed == 0:
        how = f"give --num-tasks {allowed} or less (0: all of those)" if allowed else "none is left to report on"
        raise ConfigError(f"run {run_id!r} validates on the last {eval_tasks} test tasks of {doc['_id']} "
                          f"(--eval-tasks), so results are reported on its first {allowed} at most: {how}")
    return np.arange(num_tasks or allowed)


def sample_run(store, args, split_name, rank, world, device, rows_of=None):
    """Sample the responses of a run for a split; returns what scoring and writing need (rank 0)."""
    which = getattr(args, "checkpoint", "latest")
    model, ck = load_model(store, args.run_id, device, which)
    cfg = ck["config"]
    doc = dataset_for(store, ck, split_name)
    checker = Checker(doc)
    split = store.call(load_split, doc["_id"], split_name)
    if split_name == "test":
        rows = test_rows(args.run_id, cfg, doc, split, args.num_tasks)
    else:
        rows = rows_of(split, cfg) if rows_of else np.arange(len(split.ids))
        if args.num_tasks:
            rows = rows[:args.num_tasks]
    opts = resolve_opts(args, doc, split, cfg["plan_only"])
    key = response_key(args.run_id, ck["step"], doc, split_name, opts, which)
    size = args.batch_size or batch_size_for(model, split, device, opts.prefix_len)
    t0 = time.monotonic()
    sample_missing(store, model, key, split, rows, args.samples, opts, size, rank, world, device, args.compile)
    if rank == 0:
        print(f"sampling took {time.monotonic() - t0:.0f}s", flush=True)
    return ck, doc, checker, split, rows, opts, key


def params_of(doc, split_name, num_tasks, samples, opts, which="latest"):
    params = {"dataset": doc["_id"], "split": split_name, "num_tasks": num_tasks, "samples": samples,
              "temperature": float(opts.temperature), "max_tokens": opts.max_tokens, "seed": opts.seed}
    if opts.prefix_len:
        params["prefix_len"] = opts.prefix_len
    if which != "latest":
        params["checkpoint"] = which
    return params


def report(store, args, ck, doc, split_name, rows, opts, sums, optimal_traces, by_task, reference=None,
           diagnostics=None):
    """Store the metrics with the run (results collection) and print them. optimal_traces: the trace
    length of every optimal response (report.py plots their distribution); by_task: the per-task
    record of metrics.new_by_task (report.py compares runs on the tasks they all solve optimally);
    reference: the sums under the reference's checker, stored as reference_metrics and shown in a
    second row; diagnostics: traces.Diagnostics' summary, stored and printed below the table (--json: the
    summary as one JSON object instead)."""
    metrics = summarize(sums, ck["config"]["plan_only"])
    which = getattr(args, "checkpoint", "latest")
    params = params_of(doc, split_name, len(rows), args.samples, opts, which)
    rkey = {"run_id": args.run_id, "step": ck["step"], "pkey": json.dumps(params, sort_keys=True)}
    result = {**rkey, "params": params, "metrics": metrics, "optimal_trace_lens": [int(t) for t in optimal_traces],
              "optimal_by_task": by_task, "time": now(), **({"diagnostics": diagnostics} if diagnostics else {})}
    if reference:
        result["reference_metrics"] = summarize(reference, ck["config"]["plan_only"])
    store.call(lambda db: db.results.replace_one(rkey, result, upsert=True))
    if getattr(args, "json", False):
        keys = ("run_id", "step", "params", "metrics", "reference_metrics", "diagnostics")
        print(json.dumps({k: result[k] for k in keys if k in result}))
        return
    prefix = f", starting after {opts.prefix_len} trace tokens" if opts.prefix_len else ""
    print(f"run {args.run_id} at step {ck['step']}{' (best checkpoint)' if which == 'best' else ''}: {len(rows)} {split_name} tasks of {doc['_id']}, {args.samples} "
          f"samples each, temperature {opts.temperature:g}, up to {opts.max_tokens} tokens{prefix}")
    rows = [(args.run_id, metrics)]
    if reference:
        rows.append((f"{args.run_id} (reference scoring)", result["reference_metrics"]))
    print_table(rows)
    if diagnostics:
        print(describe(diagnostics))


def cmd_run(store, args, rank, world, device):
    ck, doc, checker, split, rows, opts, key = sample_run(store, args, args.split, rank, world, device)
    if rank == 0:
        reference = {} if args.scoring == "reference" else None
        optimal_traces, diagnostics = [], Diagnostics(checker, not ck["config"]["plan_only"])

        def keep_optimal_traces(row, responses, verdicts):
            optimal_traces.extend(v.trace_len for v in verdicts if v.kind == "optimal")
            diagnostics.add(split.get(row, "prompt"), responses, verdicts)

        by_task = new_by_task(split, rows)
        sums = score(checker, split, iter_responses(store, key, split, rows, args.samples), keep_optimal_traces,
                     reference, by_task)
        report(store, args, ck, doc, args.split, rows, opts, sums, optimal_traces, by_task, reference,
               diagnostics.summary())


def cmd_bootstrap(store, args, rank, world, device):
    cfg = store.require_run(args.run_id)["config"]
    if cfg.get("plan_only"):
        raise ConfigError(f"run {args.run_id!r} is plan-only: bootstrapping needs a search-augmented run")
    name = check_name(args.name or f"bootstrap.{args.run_id}", "dataset name")
    if (store.call(lambda db: db.datasets.find_one({"_id": name})) or {}).get("uid") and not args.overwrite:
        raise DataError(f"dataset {name!r} exists; pass --overwrite to replace it")

    def training_rows(split, cfg):  # the run's own training sequences
        return filter_split(split, cfg["min_reasoning_len"], cfg["max_reasoning_len"] or None,
                            cfg["num_train_sequences"] or None)

    ck, doc, checker, split, rows, opts, key = sample_run(store, args, "train", rank, world, device, training_rows)
    if rank != 0:
        return
    chosen, optimal_traces = {}, []

    def keep_shortest(row, responses, verdicts):
        optimal_traces.extend(v.trace_len for v in verdicts if v.kind == "optimal")
        k = shortest_optimal(verdicts, split.lens["trace"][row], args.only_shorter)
        if k is not None:
            chosen[row] = (responses[k][0], verdicts[k].trace_len)

    by_task = new_by_task(split, rows)
    sums = score(checker, split, iter_responses(store, key, split, rows, args.samples), keep_shortest,
                 by_task=by_task)
    report(store, args, ck, doc, "train", rows, opts, sums, optimal_traces, by_task)
    info = {"source": doc["_id"], "source_uid": doc["uid"], "run_id": args.run_id, "step": ck["step"],
            "samples": args.samples, "temperature": float(opts.temperature), "max_tokens": opts.max_tokens,
            "seed": opts.seed, "rows": len(rows), "rule": "only-shorter" if args.only_shorter else "reference",
            **({"checkpoint": "best"} if args.checkpoint == "best" else {})}
    test_name = dataset_for(store, ck, "test")["_id"]
    # run again from the start after a lost connection: the writer starts the unfinished dataset over, and
    # a retry after its commit landed knows its own dataset by the token
    replaced, before, after = store.call(write_bootstrap, name, doc, test_name, split, rows, chosen, info, args.overwrite,
                                         uuid.uuid4().hex)
    shorter = sum(cut < split.lens["trace"][r] for r, (_, cut) in chosen.items())
    change = f" ({100 * (after / before - 1):+.1f}%)" if before else ""
    print(f"wrote dataset {name}: {len(rows)} train sequences, {replaced} replaced by their shortest correct optimal "
          f"response ({shorter} shorter than the original); mean trace length {before:.1f} -> {after:.1f} "
          f"tokens{change}; test split copied from {test_name}")


def cmd_average(store, args, rank, world, device):
    ids = list(args.run_id or [])
    if args.pattern:
        ids += [r["_id"] for r in store.list_runs() if re.fullmatch(args.pattern, r["_id"]) and r["_id"] not in ids]
    if not ids:
        raise ConfigError(f"no run id matches {args.pattern!r} (see `python admin.py list-all`)")
    wanted = {k: getattr(args, k) for k in ("split", "num_tasks", "samples", "temperature", "max_tokens")
              if getattr(args, k) is not None}
    # results with a trace prefix only when asked for, and then only that prefix
    prefix = {"params.prefix_len": args.prefix_len} if args.prefix_len else {"params.prefix_len": {"$exists": False}}
    # and of the latest checkpoint, or only of the best one when asked for
    checkpoint = {"params.checkpoint": "best" if args.checkpoint == "best" else {"$exists": False}}
    field = "reference_metrics" if args.scoring == "reference" else "metrics"
    rows = []
    for run_id in ids:
        store.require_run(run_id)
        query = {"run_id": run_id, **{f"params.{k}": v for k, v in wanted.items()}, **prefix, **checkpoint,
                 field: {"$exists": True}}
        res = store.call(lambda db: db.results.find_one(query, sort=[("time", -1)]))
        if res is None:
            given = ", ".join(f"{k}={v}" for k, v in wanted.items()) or "any parameters"
            given += f", prefix_len={args.prefix_len}" if args.prefix_len else ""
            given += ", the best checkpoint" if args.checkpoint == "best" else ""
            how = (" --scoring reference" if args.scoring == "reference" else "") + \
                (" --checkpoint best" if args.checkpoint == "best" else "")
            raise StoreError(f"run {run_id!r} has no evaluation result{' with reference scoring' if how else ''} "
                             f"with {given}; run `python eval.py --run-id {run_id}{how}` first")
        rows.append((f"{run_id} @{res['step']}", res[field]))
    mean = {}
    for key, *_ in COLUMNS:
        vals = [m[key] for _, m in rows if m.get(key) is not None]
        if len(vals) == len(rows):
            se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
            mean[key] = (float(np.mean(vals)), se)
    print_table(rows + [(f"mean ± se ({len(rows)} runs)", mean)],
                "run (reference scoring)" if args.scoring == "reference" else "run")


CHECKPOINT_HELP = ("latest (default): the run's current checkpoint; best: the one with the best validation metric, "
                   "kept by runs trained with --patience")


def add_sampling_flags(p, samples, num_tasks, help_tasks):
    p.add_argument("--run-id", required=True)
    p.add_argument("--num-tasks", type=int, default=num_tasks, help=help_tasks)
    p.add_argument("--samples", type=int, default=samples, help=f"responses per task (default {samples})")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--max-tokens", type=max_tokens_flag, default=0, metavar="{N,reference}",
                   help=f"generated tokens per response. Default: {LIMIT_FACTOR} x the longest stored response of the "
                        f"split sampled (plan-only: plan, else trace and plan) + 1 (<eos>), at most the reference's "
                        f"limit; reference: that limit (maze 10000, Sokoban 11000, plan-only Sokoban 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0, help="rows per decoding batch (default: from memory)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the decode step (default: on GPU only; on CPU compiling takes minutes)")
    devices.add_flags(p)
    p.add_argument("--checkpoint", default="latest", metavar="{latest,best}", help=CHECKPOINT_HELP)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="sample and score a run's responses (the default command)")
    add_sampling_flags(p, 64, 200, "the first N tasks of the split (default 200; 0 = all). On the test split never "
                                   "the run's validation tasks (train.py --eval-tasks E: the last E test tasks and "
                                   "the rest of the wall layout they start in); asking for them is refused, 0 "
                                   "means all before them")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--scoring", choices=["strict", "reference"], default="strict",
                   help="reference: also score with the reference's lenient checker (no <eos> needed, plan from the "
                        "first `plan` token, Sokoban moves replayed with illegal ones as no-ops), stored and shown "
                        "beside the strict figures")
    p.add_argument("--prefix-len", type=int, default=0,
                   help="start each rollout after the first K tokens of the task's stored (A*) trace")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (the last line)")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("bootstrap", help="write a dataset of the run's shortest correct optimal responses")
    add_sampling_flags(p, 32, 0, "only the first N training sequences of the run (default all)")
    p.add_argument("--name", help="new dataset name (default bootstrap.<run id>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--only-shorter", action="store_true",
                   help="replace a sequence only by a response with a shorter trace (default, as the reference: by "
                        "the shortest-trace optimal response even when longer)")
    p.set_defaults(fn=cmd_bootstrap)
    p = sub.add_parser("average", help="mean and standard error of the latest results of several runs")
    p.add_argument("--run-id", action="append", help="repeatable")
    p.add_argument("--pattern", help="regular expression matched against whole run ids")
    p.add_argument("--split", choices=["test", "train"])
    for flag, kind in (("--num-tasks", int), ("--samples", int), ("--temperature", float), ("--max-tokens", int)):
        p.add_argument(flag, type=kind, help="only results with this value")
    p.add_argument("--prefix-len", type=int, default=0,
                   help="results of rollouts after this trace prefix (default: none)")
    p.add_argument("--scoring", choices=["strict", "reference"], default="strict",
                   help="reference: the figures of the reference's lenient checker")
    p.add_argument("--checkpoint", default="latest", metavar="{latest,best}",
                   help="results of the run's latest checkpoint (default) or of its best (eval.py --checkpoint best)")
    p.set_defaults(fn=cmd_average)
    prompting.add_flags(sub.add_parser("prompt", help="a run's responses to a prompt typed by hand, or a response's "
                                                       "log-probabilities"))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "bootstrap", "average", "prompt", "-h", "--help"):
        argv = ["run", *argv]  # `eval.py --run-id ID ...` means `eval.py run --run-id ID ...`
    args = ap.parse_args(argv)
    if args.cmd == "average":
        if not (args.run_id or args.pattern):
            raise ConfigError("give --run-id ID (repeatable) or --pattern REGEX")
        try:
            re.compile(args.pattern or "")
        except re.error as e:
            raise ConfigError(f"--pattern is not a regular expression: {e}") from None
    if args.cmd == "prompt":
        prompting.check_flags(args)
    elif args.cmd != "average":
        for flag, value, least in (("--num-tasks", args.num_tasks, 0), ("--samples", args.samples, 1),
                                   ("--temperature", args.temperature, 0), ("--max-tokens", args.max_tokens, 0),
                                   ("--batch-size", args.batch_size, 0)):
            if value != "reference" and not value >= least:  # a NaN temperature too
                raise ConfigError(f"{flag} must be >= {least}, got {value}")
        if args.temperature == 0 and args.samples > 1:
            raise ConfigError("greedy decoding (--temperature 0) gives identical samples: use --samples 1")
    check_checkpoint(args.checkpoint)
    if getattr(args, "prefix_len", 0) < 0:
        raise ConfigError(f"--prefix-len must be >= 0, got {args.prefix_len}")
    for rid in ([args.run_id] if isinstance(args.run_id, str) else args.run_id or []):
        check_name(rid)
    return args


def main(argv=None):
    try:
        args = parse_args(argv)
        device = torch.device("cpu") if args.cmd == "average" else devices.from_flags(args)  # average: results only
    except errors.REPORTED as e:
        sys.exit(errors.exit_message(e))
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # decoding steps are small: extra threads mostly wait (use ranks for cores)
    if world > 1:
        devices.init_process_group(device, getattr(args, "dist_timeout_minutes", devices.DIST_TIMEOUT_MINUTES))
    try:
        args.fn(connect(retry_s=60.0), args, rank, world, device)
    except errors.REPORTED as e:
        sys.exit(errors.exit_message(e))
    except KeyboardInterrupt:  # the responses stored so far are kept: the same command continues
        if rank == 0:
            print("interrupted; run the same command again to continue (stored responses are reused)", file=sys.stderr)
        sys.exit(130)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
