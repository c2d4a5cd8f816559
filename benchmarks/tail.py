"""bench.py's `tail` section: the quick start's sampling stage (100 10x10 maze tasks x 64 samples,
plan-only, temperature 1) on a stand-in model, decode.py today against the engine of 2354b06.

The stand-in: an untrained `xs` Transformer (the quick start's size) as a LengthModel whose <eos>
comes at the lengths of real 10x10 sequences (maze.py's tasks: prompt and plan), except for a share
of the rows (--tail-runaway) that never write it and run to the limit, as some of the trained
quick-start model's samples did. The prompts are those tasks' prompts. Each row's noise is keyed by
the seed and the row, so every variant decodes the same responses (up to its limit)."""
import time

import numpy as np
import torch

import dataset
import decode
import maze
import rollouts
from benchmarks import decode_2354b06
from benchmarks.measure import device_name, table
from benchmarks.rollout_baselines import LengthModel
from model import ModelConfig, Transformer


def tasks_10x10(count, seed=0):
    """(prompts as `<bos> prompt <sep>` ids, plan lengths in tokens) of the first `count` 10x10 tasks
    drawn by the reference's rules, vocabulary size."""
    vocab = [*dataset.SPECIALS, *maze.vocabulary(10)]
    index = {t: i for i, t in enumerate(vocab)}
    prompts, plans, layouts = [], [], 8
    while len(prompts) < count:
        prompts, plans = [], []
        for _, found in maze.generate(10, layouts, seed, False):
            for t in found:
                prompts.append(np.concatenate([[dataset.BOS], dataset.encode(t["prompt"], index), [dataset.SEP]]))
                plans.append(len(t["plan"]))
        layouts *= 2
    return prompts[:count], np.asarray(plans[:count]), len(vocab)


def runaway_hazard(lengths, share, positions):
    """hazard[p] (LengthModel's): P(<eos> after the token at position p), for sequences whose total
    lengths (with <eos>) are drawn from `lengths` with probability 1 - share and never end otherwise."""
    pmf = np.bincount(lengths, minlength=positions + 2).astype(np.float64) * (1 - share) / len(lengths)
    survival = pmf[::-1].cumsum()[::-1] + share  # P(length >= l), the runaway rows included
    return np.clip(pmf / survival, 1e-12, 1 - 1e-9)[2:]  # a length of p + 2 ends after position p


# name -> (label, engine, limit): the stage as it ran (the engines of 2354b06 and of today at the
# reference's limit) and as it runs now (today's engine at eval.py's default limit)
VARIANTS = {"2354b06": ("2354b06 engine, reference limit", decode_2354b06, "reference"),
            "today": ("today's engine, reference limit", decode, "reference"),
            "default": ("today's engine, default limit", decode, "default")}


def run_variant(engine, model, prompts, src, limit, batch_size):
    """(seconds, CPU seconds, [(seconds at which a row finished, tokens, eos)])."""
    t0, c0, out = time.perf_counter(), time.process_time(), []
    for i, ids, eos in engine.generate(model, prompts, src, limit, 1.0, 0, None, batch_size):
        out.append((time.perf_counter() - t0, len(ids), eos))
    return time.perf_counter() - t0, time.process_time() - c0, out


def bench_tail(args, device):
    tasks, samples = (100, 64) if args.tail_full else (args.tail_tasks, args.tail_samples)
    reference = 10000 if args.tail_full else args.tail_limit
    prompts, plans, vocab = tasks_10x10(tasks)
    total = np.asarray([len(p) for p in prompts]) + plans + 1  # whole sequences, <eos> included
    torch.manual_seed(0)
    net = Transformer(ModelConfig.from_size("xs", vocab)).to(device).eval()
    model = LengthModel(net, runaway_hazard(total, args.tail_runaway, int(total.max()) + reference)).to(device)
    src = np.repeat(np.arange(tasks), samples)
    split = dataset.Split(np.arange(tasks), {"prompt": np.zeros(tasks, np.int64), "trace": np.zeros(tasks, np.int64),
                                             "plan": plans}, {}, {})
    limits = {"reference": reference, "default": rollouts.response_limit("maze", True, split)}
    batch = decode.auto_batch_size(net.cfg, max(len(p) for p in prompts), device)  # as eval.py sizes it
    print(f"tail: the quick start's sampling stage on {device_name(device)}, {torch.get_num_threads()} threads: "
          f"{tasks} 10x10 tasks x {samples} samples, an untrained xs model ({net.num_params() / 1e6:.1f}M params) "
          f"whose rows end at the tasks' plan lengths but for a share of {args.tail_runaway:g} that never ends; "
          f"batch {batch}; reference limit {reference} tokens"
          + ("" if args.tail_full or reference == 10000 else " (10000 with --tail-full)")
          + f", default limit {limits['default']} (rollouts.response_limit)")
    names = args.tail_variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown tail variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    rows = []
    for label, engine, limit in (VARIANTS[n] for n in names):
        dt, cpu, out = run_variant(engine, model, prompts, src, limits[limit], batch)
        ran = [t for t, n, e in out if not e]  # rows that reached the limit
        ends = sorted(t for t, _, _ in out)
        body = ends[len(out) - len(ran) - 1] if len(ran) < len(out) else 0.0  # when all others were done
        tokens = sum(n + e for _, n, e in out)
        rows.append((label, limits[limit], f"{dt:.1f}", f"{cpu:.1f}", f"{body:.1f}", f"{dt - body:.1f}", len(ran),
                     f"{tokens:,}", f"{tokens / dt:,.0f}", f"{len(out) / dt:.1f}"))
        print(f"  {label}: {dt:.1f} s", flush=True)
    table(["variant", "limit", "seconds", "CPU s", "all but runaways", "tail", "runaways", "tokens", "tok/s",
           "resp/s"], rows)
    print("seconds: wall clock (CPU s: this process's CPU time, the fairer figure on a shared machine); all but "
          "runaways: seconds until every row that wrote <eos> was done; tail: the rest, the rows without <eos> "
          "running to the limit alone\n")
