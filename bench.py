"""Speed benchmark: training throughput against a reference-style baseline, dataset loading,
checkpoint save and load, rollouts (naive, the previous engine, decode.py eager and compiled), and
the quick start's sampling stage with its tail of rows that never end (`tail`: the engine of
2354b06 against today's, benchmarks/tail.py).

  python bench.py --size s --lengths maze20 --device cpu --precision bf16
  python bench.py --sections train --size m --lengths sokoban --batch-tokens 32768 --compile   (GPU)
  python bench.py --sections train --size xl --lengths 10000:1.0 --batch-tokens 10000 --variants project
  python bench.py --sections load --dataset maze.10-by-10-deterministic.simple --load-rows 1000000
  python bench.py --sections rollout --threads 1 --rollout-sizes xs,s --rollout-lengths maze10,sokoban
  python bench.py --sections encdec --encdec-size s --lengths maze10 --batch-tokens 4096   (benchmarks/encdec.py)
  python bench.py --sections tail --threads 1 [--tail-full]
  python bench.py --sections refckpt --refckpt-size l   (benchmarks/reference_ckpt.py: import/export, embedded db)

Training runs each variant on the same sequences, one step of each in turn (so that a busy machine
slows them alike), and prints useful (non-padding) tokens per second and the ratio to the first;
a step in which torch.compile made a graph for a shape it had not seen is left out and counted:
  baseline  what the reference did: fp32, random batches of a fixed number of rows padded to the
            longest (rows = batch tokens / mean length), logits at every position, no compile
  project   this trainer's path: length-bucketed token-budget batches collated ahead in a thread,
            logits only where the loss is taken, bf16 autocast (on GPU, or with --precision bf16),
            and --compile / --activation-checkpointing when given
Other variants are features joined by '+': padded or bucket, bf16, tf32 (fp32 matmuls on tensor
cores, as train.py sets on GPU), keep (logits only at loss positions), prefetch, compile, ckpt
(activation checkpointing); e.g. --variants baseline,bucket,bucket+bf16,project measures each step.

Lengths come from a dataset in MongoDB (--dataset, real tokens) or from quantiles: a preset
(maze10, maze20, maze30, sokoban: measured on generated data) or `L:q,...` points of the quantile
function, e.g. 200:0.25,400:0.5,800:0.75,1600:1.0 (below the first point: its length).
MFU on GPU counts the useful FLOPs only (causal attention, no padding, no recomputation) against the
device's dense bf16 peak from benchmarks/measure.py (DEVICE_PEAKS).
"""
import argparse
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

import batches
import dataset
import decode
import errors
import loss
from benchmarks.measure import PeakRSS, device_name, device_peak, gib, machine_limits, max_rss, sync, table
from benchmarks.rollout_baselines import LengthModel, length_hazard, naive_generate, today_rollout, todays_attention
from benchmarks.tail import bench_tail
from benchmarks.train_variants import SDPA, Variant, variant_specs
from benchmarks.workloads import PRESETS, load_sequences
from checkpoint_store import load_checkpoint, save_checkpoint
from devices import DEVICE_HELP, parse_device
from benchmarks.encdec import bench_encdec
from benchmarks.reference_ckpt import bench_reference_ckpt
from errors import ConfigError
from model import ModelConfig, Transformer
from store import connect

# ---------------------------------------------------------------------------------------------
# training


def train_setup(args, device, rng):
    """A Variant for each of --variants on the same sequences, described on the way."""
    split, vocab, source = load_sequences(args, rng)
    seqs = batches.Sequences.build(split, np.arange(len(split.ids)), args.plan_only)
    variants = [Variant(name, f, seqs, vocab, args, device) for name, f in variant_specs(args, device)]
    first = variants[0].model
    print(f"train: model {args.size} ({first.num_params() / 1e6:.1f}M params), {source}: {len(seqs)} sequences, "
          f"mean length {seqs.lengths.mean():.0f}, max {seqs.lengths.max()}; {args.batch_tokens} tokens per step; "
          f"device {device_name(device)}, {torch.get_num_threads()} threads")
    for v in variants:
        print(f"  {v.name}: {'+'.join(sorted(v.f))}")
    return variants


def train_interleaved(args, variants):
    """Warm-up, then timed steps, one step of each variant in turn (so that a busy machine slows them alike)."""
    for i in range(args.warmup + 3 * args.steps):
        for v in variants:
            if v.error or len(v.times) >= args.steps:
                continue
            try:
                v.step(record=i >= args.warmup)
            except torch.cuda.OutOfMemoryError as e:
                v.error = f"out of memory ({str(e).splitlines()[0][:60]})"
                v.model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()


def train_rows(variants, peak_flops):
    """The results table's rows; closes each variant."""
    rows, base = [], None
    for v in variants:
        v.close()
        if v.error:
            rows.append((v.name, v.error, "", "", "", "", ""))
            continue
        busy = sum(v.times)
        rate = v.useful / busy
        base = base or rate
        mfu = f"{100 * v.flops / busy / peak_flops:.1f}%" if peak_flops else "-"
        rows.append((v.name, f"{rate:,.0f}", f"{100 * v.useful / v.computed:.1f}%",
                     f"{np.median(v.times):.3f}", gib(v.peak) if v.peak else "-", mfu, f"{rate / base:.2f}x"))
    return rows


def train_notes(args, variants, device, peak_flops):
    """What the table leaves out: each step's time (--show-steps), steps that compiled, why MFU or peak
    memory is missing."""
    if args.show_steps:
        for v in variants:
            print(f"{v.name} step seconds: {' '.join(f'{t:.2f}' for t in v.times)}")
        print()
    compiled = [f"{v.name} {v.compiles}" for v in variants if v.compiles]
    if compiled:
        print(f"steps that compiled a new shape, left out of the timing: {', '.join(compiled)}\n")
    if device.type != "cuda":
        print("MFU: not on a GPU, not printed\n")
    elif peak_flops is None:
        print(f"MFU: no bf16 peak known for {device_name(device)} (add it to DEVICE_PEAKS), not printed\n")
    if device.type == "cuda":
        print("peak GiB: the variant's weights and Adam moments plus its steps' peak above them (CUDA allocator)\n")
    else:  # the C allocator keeps freed memory: a process-wide figure is the only honest one
        print(f"peak GiB: per variant on GPU only; this process peaked at {gib(max_rss())} GiB resident\n")


def bench_train(args, device, rng):
    variants = train_setup(args, device, rng)
    train_interleaved(args, variants)
    peak_flops = device_peak(device)
    table(["variant", "useful tok/s", "pad eff", "step s (median)", "peak GiB", "MFU", "vs first"],
          train_rows(variants, peak_flops))
    train_notes(args, variants, device, peak_flops)


# ---------------------------------------------------------------------------------------------
# dataset loading


def tile_split(split, rows):
    """The split repeated up to `rows` sequences (a stand-in for a big dataset of that shape)."""
    reps = -(-rows // len(split.ids))
    lens = {p: np.tile(split.lens[p], reps)[:rows] for p in dataset.PARTS}
    flat = {p: np.tile(np.asarray(split.flat[p]), reps)[:int(lens[p].sum())] for p in dataset.PARTS}
    return dataset.Split(np.arange(rows), lens, flat, {})


def ready_to_train(folder, plan_only):
    """Cache to a first collated batch: what a relaunch does before its first step."""
    t = {}
    t0 = time.perf_counter()
    split = dataset.read_cache(folder)
    t["open cache (mmap)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = dataset.filter_split(split)
    seqs = batches.Sequences.build(split, rows, plan_only)
    t["build sequences"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    epoch = batches.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=16384)
    t["epoch batches (16k tokens)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqs.collate(epoch[0])
    t["first batch"] = time.perf_counter() - t0
    return t, split


def bench_load(args, rng):
    tmp = tempfile.mkdtemp(prefix="bench-cache-")
    rows = []
    try:
        split, _, source = load_sequences(args, rng)
        if args.dataset:
            db = connect().db
            t0 = time.perf_counter()
            split = dataset.load_split(db, args.dataset, "train", use_cache=False)
            dt = time.perf_counter() - t0
            rows.append((f"MongoDB read ({len(split.ids):,} sequences)", f"{dt:.3f}", f"{len(split.ids) / dt:,.0f} seq/s"))
        big = tile_split(split, args.load_rows)
        tokens = sum(int(big.lens[p].sum()) for p in dataset.PARTS)
        folder = Path(tmp) / "train"
        t0 = time.perf_counter()
        dataset.write_cache(folder, big)
        dt = time.perf_counter() - t0
        rows.append((f"cache write ({args.load_rows:,} sequences, {tokens * 2 / 2**20:,.0f} MiB)", f"{dt:.3f}",
                     f"{tokens * 2 / 2**20 / dt:,.0f} MiB/s"))
        del big
        times, cached = ready_to_train(folder, args.plan_only)
        rows += [(k, f"{v:.3f}", "") for k, v in times.items()]
        rows.append(("ready to train from the cache", f"{sum(times.values()):.3f}", ""))
        t0 = time.perf_counter()
        touched = sum(int(np.asarray(cached.flat[p][::2048]).sum()) for p in dataset.PARTS)  # one read per page
        dt = time.perf_counter() - t0
        rows.append(("page in every token (file in the page cache)", f"{dt:.3f}", f"{tokens * 2 / 2**20 / dt:,.0f} MiB/s"))
        t0 = time.perf_counter()
        cached.select(np.sort(rng.permutation(args.load_rows)[:args.load_rows // 2]))
        rows.append(("Split.select of half the rows", f"{time.perf_counter() - t0:.3f}", ""))
        del touched
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load: {source} tiled to {args.load_rows:,} sequences")
    table(["step", "seconds", "rate"], rows)


# ---------------------------------------------------------------------------------------------
# checkpoints


def bench_checkpoint(args, device):
    store = connect()
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_size(args.size, 512)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randint(0, 512, (1, 16), device=device)).sum().backward()
    opt.step()  # creates the moments: a checkpoint as the trainer writes it
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    size = 3 * 4 * sum(p.numel() for p in model.parameters())
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    store.start_run(run_id, {}, "bench", 600, 1, socket.gethostname())
    rows = []
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            info = save_checkpoint(store, run_id, 1, state)
            dt = time.perf_counter() - t0
        rows.append(("save", f"{dt:.2f}", f"{info['size'] / 2**20 / dt:,.0f}", gib(mem.extra)))
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            loaded = load_checkpoint(store, run_id, map_location=device)
            dt = time.perf_counter() - t0
        rows.append(("load", f"{dt:.2f}", f"{info['size'] / 2**20 / dt:,.0f}", gib(mem.extra)))
        assert torch.equal(loaded["model"]["head.weight"], state["model"]["head.weight"])
    finally:
        store.drop_run(run_id, force=True)
    print(f"checkpoint: model {args.size} with AdamW state, {info['size'] / 2**30:.2f} GiB in GridFS "
          f"(tensors {size / 2**30:.2f} GiB)")
    table(["", "seconds", "MiB/s", "RSS growth GiB (clean when run alone)"], rows)


# ---------------------------------------------------------------------------------------------
# rollouts: naive, today's engine and decode.py's on the same LengthModel (benchmarks/rollout_baselines.py)


def decode_cost(cfg, attended, dtype_bytes):
    """(matmul FLOPs, attention FLOPs, KV cache bytes read) per generated token that attends over
    `attended` keys."""
    per_token = 2 * (cfg.n_layer * (4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.d_ff) + cfg.d_model * cfg.vocab_size)
    return per_token, 4 * cfg.n_layer * cfg.d_model * attended, 2 * cfg.n_layer * cfg.d_model * dtype_bytes * attended


def rollout_workload(args, size, lengths, device, rng):
    """(net, model, prompts, src, max_tokens): a LengthModel of that size on a preset's lengths, and
    --rollout-prompts prompts of random tokens, each sampled --rollout-samples times (src)."""
    points, share, vocab = PRESETS[lengths]
    torch.manual_seed(0)
    net = Transformer(ModelConfig.from_size(size, vocab)).to(device).eval()
    model = LengthModel(net, length_hazard(points, rng)).to(device)
    q, ls = zip(*points)
    drawn = np.interp(rng.random(args.rollout_prompts), q, ls)
    prompts = [np.concatenate([[dataset.BOS], rng.integers(len(dataset.SPECIALS), vocab, max(1, round(share * n) - 2)),
                               [dataset.SEP]]) for n in drawn]
    src = np.repeat(np.arange(len(prompts)), args.rollout_samples)
    return net, model, prompts, src, int(max(ls)) + 1


def rollout_engines(args, model, prompts, src, max_tokens, device, autocast, cache_dtype):
    """today, eager and compiled: each a function decoding every row, returning [(row, tokens, eos)]."""
    def today():
        gen = torch.Generator(device).manual_seed(0)
        with todays_attention():
            return [(i, len(ids), e) for i, ids, e in today_rollout(
                model, prompts, src, max_tokens, 1.0, gen, args.rollout_rows, autocast, cache_dtype)]

    def new(compiled):
        return lambda: [(i, len(ids), e) for i, ids, e in decode.generate(
            model, prompts, src, max_tokens, 1.0, 0, None, args.rollout_rows, autocast=autocast,
            cache_dtype=cache_dtype, compile=compiled, every=args.rollout_every)]

    return {"today": today, "eager": new(False), "compiled": new(True)}


def compile_first(args, model, prompts, max_tokens, autocast, cache_dtype, label):
    """Compiling is not decoding: compile once before the timed runs, and say how long it took."""
    t0 = time.perf_counter()
    list(decode.generate(model, prompts[:1], [0] * min(4, args.rollout_rows), max_tokens, 1.0,
                         batch_size=args.rollout_rows, autocast=autocast, cache_dtype=cache_dtype,
                         compile=True, every=args.rollout_every))
    print(f"  {label}: compiling took {time.perf_counter() - t0:.0f} s (left out)")


def time_rollouts(args, variants, engines, model, prompts, device):
    """{variant: [(seconds, output, peak bytes)]}: each variant once per repetition, interleaved."""
    runs = {v: [] for v in variants}
    for rep in range(args.rollout_reps):
        for v in variants:
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                if v == "naive":
                    gen = torch.Generator(device).manual_seed(rep)
                    out = naive_generate(model, prompts[0], args.naive_rows, args.naive_tokens, gen)
                else:
                    out = engines[v]()
                sync(device)
                dt = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else mem.extra
            runs[v].append((dt, out, peak))
    return runs


def profile_rollouts(variants, engines, device, label):
    """Where the time goes: one more run of each variant but naive under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    for v in variants:
        if v == "naive":
            continue
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            engines[v]()
        print(f"  profile of {v} ({label}):")
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda"
                                        else "self_cpu_time_total", row_limit=12))


def rollout_row(args, v, runs, prompts, src, cfg, bf16, limits):
    """(table row, tokens per second) of a variant's median run, with its share of the machine's limit:
    compute or KV-cache bandwidth, whichever binds at its mean attended length."""
    peak_flops, bandwidth = limits
    dt = float(np.median([r[0] for r in runs]))
    out = runs[int(np.argsort([r[0] for r in runs])[len(runs) // 2])][1]
    if v == "naive":
        tokens, responses, attended = out, 0, None
        note = f"{args.naive_rows} rows x <= {args.naive_tokens} tokens"
    else:
        tokens = sum(n + e for _, n, e in out)  # <eos> is a generated token too
        responses = len(out)
        # row i fed positions len(prompt) - 1 ... len(prompt) - 1 + n (+ the <eos> step)
        attended = sum(sum(range(len(prompts[src[i]]), len(prompts[src[i]]) + n + e)) for i, n, e in out)
        note = f"{len(out)} rows, {tokens / len(out):.0f} tokens each"
    rate = tokens / dt
    share = "-"
    if attended:
        mm, att, kv = decode_cost(cfg, attended / tokens, 2 if bf16 else 4)
        limit = min(peak_flops / (mm + att), bandwidth / kv)
        bound = "compute" if peak_flops / (mm + att) < bandwidth / kv else "KV bandwidth"
        share = (f"{100 * rate / limit:.0f}% of {limit:,.0f} ({bound}); "
                 f"{rate * (mm + att) / 1e9:.1f} GFLOP/s, {rate * kv / 1e9:.1f} GB/s")
    row = (v, f"{rate:,.0f}", f"{responses / dt:,.1f}" if responses else "-", f"{dt:.1f}",
           gib(max(r[2] for r in runs)), share, note)
    return row, rate


def bench_rollout(args, device, rng):
    bf16 = device.type == "cuda" and args.precision != "fp32"
    autocast = loss.autocast_for(device, "bf16" if bf16 else "fp32")
    cache_dtype = torch.bfloat16 if bf16 else None
    limits = peak_flops, bandwidth = machine_limits(device)
    variants = args.rollout_variants.split(",")
    unknown = set(variants) - {"naive", "today", "eager", "compiled"}
    if unknown:
        raise SystemExit(f"unknown rollout variant(s) {', '.join(sorted(unknown))}")
    print(f"rollout: device {device_name(device)}, {torch.get_num_threads()} threads, "
          f"{'bf16' if bf16 else 'fp32'}; measured now: matmul {peak_flops / 1e9:,.0f} GFLOP/s, "
          f"memory bandwidth {bandwidth / 1e9:,.1f} GB/s; temperature 1, batch {args.rollout_rows} rows")
    for size in args.rollout_sizes.split(","):
        for lengths in args.rollout_lengths.split(","):
            net, model, prompts, src, max_tokens = rollout_workload(args, size, lengths, device, rng)
            engines = rollout_engines(args, model, prompts, src, max_tokens, device, autocast, cache_dtype)
            if "compiled" in variants:
                compile_first(args, model, prompts, max_tokens, autocast, cache_dtype, f"{size} {lengths}")
            runs = time_rollouts(args, variants, engines, model, prompts, device)
            if args.rollout_profile:
                profile_rollouts(variants, engines, device, f"{size}, {lengths}")
            rows, base_rate = [], None
            for v in variants:
                row, rate = rollout_row(args, v, runs[v], prompts, src, net.cfg, bf16, limits)
                rows.append(row)
                if v == "today":
                    base_rate = rate
            rows = [r + (f"{float(r[1].replace(',', '')) / base_rate:.2f}x" if base_rate else "-",) for r in rows]
            print(f"  {size} ({net.num_params() / 1e6:.1f}M params) on {lengths} lengths: {args.rollout_prompts} prompts "
                  f"x {args.rollout_samples} samples, up to {max_tokens} tokens; medians of {args.rollout_reps} "
                  f"interleaved runs")
            table(["variant", "tok/s", "resp/s", "seconds", "peak GiB", "share of the machine's limit (tok/s)",
                   "workload", "vs today"], rows)
    print("naive: no cache, the whole sequence through the model per token, on a short workload (its cost per "
          "token grows with the length); today: eval.py's engine before decode.py; eager/compiled: decode.py. "
          "peak GiB: CUDA allocator peak on GPU, resident-memory growth on CPU\n")


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="train,load,checkpoint,rollout,tail",
                    help="comma-separated subset (encdec, refckpt: also available, not by default)")
    ap.add_argument("--size", default="s", help="model size (model.SIZES)")
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    ap.add_argument("--lengths", default="maze20", help=f"preset ({', '.join(PRESETS)}) or L:q,... quantiles")
    ap.add_argument("--prompt-share", type=float, default=0.3, help="prompt share of tokens for custom quantiles")
    ap.add_argument("--vocab", type=int, default=0, help="vocabulary size (default: the preset's, else 1000)")
    ap.add_argument("--dataset", default="", help="take sequences from this MongoDB dataset instead")
    ap.add_argument("--plan-only", action="store_true", help="with --dataset: prompt and plan only")
    ap.add_argument("--num-seqs", type=int, default=4096, help="synthetic sequences to draw")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="token budget per step (baseline: the same "
                    "number of tokens on average)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps per variant (default 2, 4 with --compile)")
    ap.add_argument("--show-steps", action="store_true", help="print every timed step's seconds")
    ap.add_argument("--variants", default="baseline,project", help="comma-separated; the first is the reference")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="project variant: auto = bf16 on GPU, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="project variant: torch.compile")
    ap.add_argument("--activation-checkpointing", action="store_true", help="project variant: recompute activations")
    ap.add_argument("--sdpa", choices=["auto", *SDPA], default="auto",
                    help="attention kernel of the bf16 variants (auto: torch's choice)")
    ap.add_argument("--load-rows", type=int, default=1_000_000, help="sequences for the cache load test")
    ap.add_argument("--rollout-sizes", default="xs,s", help="model sizes of the rollout comparison")
    ap.add_argument("--rollout-lengths", default="maze10", help="length presets of the rollout comparison")
    ap.add_argument("--rollout-variants", default="naive,today,eager,compiled",
                    help="naive (no cache), today (the engine before decode.py), eager, compiled (decode.py)")
    ap.add_argument("--rollout-rows", type=int, default=256, help="rows decoding at once")
    ap.add_argument("--rollout-prompts", type=int, default=12)
    ap.add_argument("--rollout-samples", type=int, default=32)
    ap.add_argument("--rollout-reps", type=int, default=3, help="interleaved repetitions (medians are shown)")
    ap.add_argument("--rollout-every", type=int, default=8, help="decode steps between collections")
    ap.add_argument("--rollout-profile", action="store_true", help="also profile one run of each variant")
    ap.add_argument("--encdec-size", default="s", help="encdec section: the size both architectures train at")
    ap.add_argument("--encdec-prompt", type=int, default=90, help="encdec section: the sampled prompt's tokens")
    ap.add_argument("--encdec-samples", type=int, default=64, help="encdec section: samples of that prompt")
    ap.add_argument("--encdec-tokens", type=int, default=32, help="encdec section: tokens each sample generates")
    ap.add_argument("--refckpt-size", default="s", help="refckpt: the reference size imported and exported (s, m, l, xl)")
    ap.add_argument("--refckpt-vocab", type=int, default=100, help="refckpt: token ids of that checkpoint")
    ap.add_argument("--tail-tasks", type=int, default=10, help="tail: 10x10 tasks (--tail-full: 100)")
    ap.add_argument("--tail-samples", type=int, default=64, help="tail: samples per task (--tail-full: 64)")
    ap.add_argument("--tail-limit", type=int, default=1000, help="tail: the reference's limit, cut for a short run "
                    "(--tail-full: 10000)")
    ap.add_argument("--tail-runaway", type=float, default=0.002, help="tail: share of rows that never write <eos>")
    ap.add_argument("--tail-full", action="store_true", help="tail: the quick start's size, 100 tasks x 64 "
                    "samples, the reference's limit of 10000 tokens (long: each runaway row takes a minute or more)")
    ap.add_argument("--tail-variants", default="2354b06,today,default",
                    help="tail: 2354b06 and today (the engines at the reference's limit), default (eval.py's limit)")
    ap.add_argument("--naive-rows", type=int, default=8)
    ap.add_argument("--naive-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    args.warmup = args.warmup or (4 if args.compile else 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        device = parse_device(args.device)
    except ConfigError as e:
        sys.exit(errors.exit_message(e))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sections = args.sections.split(",")
    for s in sections:
        if s not in ("train", "load", "checkpoint", "rollout", "tail", "encdec", "refckpt"):
            raise SystemExit(f"unknown section {s!r}")
    if "train" in sections:
        bench_train(args, device, rng)
    if "load" in sections:
        bench_load(args, rng)
    if "checkpoint" in sections:
        bench_checkpoint(args, device)
    if "rollout" in sections:
        bench_rollout(args, device, rng)
    if "encdec" in sections:
        bench_encdec(args, device, rng)
    if "tail" in sections:
        bench_tail(args, device)
    if "refckpt" in sections:
        bench_reference_ckpt(args)


if __name__ == "__main__":
    main()
