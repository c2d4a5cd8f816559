"""Speed benchmark: training throughput against a reference-style baseline, dataset loading,
checkpoint save and load, and rollouts (naive, the previous engine, decode.py eager and compiled).

  python bench.py --size s --lengths maze20 --device cpu --precision bf16
  python bench.py --sections train --size m --lengths sokoban --batch-tokens 32768 --compile   (GPU)
  python bench.py --sections train --size xl --lengths 10000:1.0 --batch-tokens 10000 --variants project
  python bench.py --sections load --dataset maze.10-by-10-deterministic.simple --load-rows 1000000
  python bench.py --sections rollout --threads 1 --rollout-sizes xs,s --rollout-lengths maze10,sokoban

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
device's dense bf16 peak from DEVICE_PEAKS.
"""
import argparse
import collections
import contextlib
import os
import resource
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import batches
import dataset
import decode
import hparams
import loss
import model as model_lib
import store
from model import ModelConfig, Transformer, apply_rope

# length quantiles (q, total sequence length), prompt share of the tokens, vocabulary size, measured on
# 2,000 to 5,000 generated training sequences of each (deterministic mazes)
PRESETS = {
    "maze10": ([(0, 242), (.1, 306), (.25, 335), (.5, 382), (.75, 456), (.9, 562), (.99, 728), (1, 817)], 0.28, 121),
    "maze20": ([(0, 731), (.1, 929), (.25, 1050), (.5, 1257), (.75, 1578), (.9, 1998), (.99, 2677), (1, 3055)], 0.32, 431),
    "maze30": ([(0, 1451), (.1, 1878), (.25, 2123), (.5, 2523), (.75, 3103), (.9, 3807), (.99, 5179), (1, 6888)],
               0.36, 941),
    "sokoban": ([(0, 201), (.1, 1199), (.25, 2271), (.5, 4371), (.75, 6977), (.9, 8711), (.99, 10011), (1, 10119)],
                0.02, 82),
}

# dense bf16 tensor-core peak FLOP/s, matched in order as substrings of torch.cuda.get_device_name()
DEVICE_PEAKS = [
    ("GH200", 989e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12),
    ("B200", 2250e12),
]


SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def device_peak(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAKS if key in name), None)


def compiled_graphs():
    """Graphs torch.compile has made so far in this process."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra(self):
        return self.peak - self.base


def gib(n):
    return f"{n / 2**30:.2f}"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()


# ---------------------------------------------------------------------------------------------
# sequences


def parse_quantiles(spec):
    """'L:q,...' -> [(q, L), ...] sorted, starting at q = 0 and ending at q = 1."""
    points = sorted((float(q), int(length)) for length, q in (p.split(":") for p in spec.split(",")))
    if points[0][0] > 0:
        points.insert(0, (0.0, points[0][1]))
    if points[-1][0] < 1:
        points.append((1.0, points[-1][1]))
    return points


def synthetic_split(lengths, prompt_share, vocab, rng):
    """A Split of random tokens whose whole training sequences have the given lengths."""
    body = np.maximum(lengths - 3, 3)  # less <bos>, <sep>, <eos>
    prompt = np.maximum(1, np.round(prompt_share * body)).astype(np.int64)
    plan = np.maximum(1, (body - prompt) // 10)
    lens = {"prompt": prompt, "trace": body - prompt - plan, "plan": plan}
    flat = {p: rng.integers(len(dataset.SPECIALS), vocab, int(n.sum())).astype(dataset.DTYPE) for p, n in lens.items()}
    return dataset.Split(np.arange(len(body)), lens, flat, {})


def load_sequences(args, rng):
    """(split, vocabulary size, description) for --dataset or --lengths."""
    if args.dataset:
        db = store.connect().db
        split = dataset.load_split(db, args.dataset, "train")
        return split, len(dataset.get_dataset(db, args.dataset)["vocabulary"]), f"dataset {args.dataset}"
    points, share, vocab = PRESETS.get(args.lengths) or (parse_quantiles(args.lengths), args.prompt_share, 1000)
    q, lengths = zip(*points)
    sampled = np.interp(rng.random(args.num_seqs), q, lengths).round().astype(np.int64)
    return synthetic_split(sampled, share, args.vocab or vocab, rng), args.vocab or vocab, f"lengths {args.lengths}"


# ---------------------------------------------------------------------------------------------
# training


class PaddedBatcher:
    """The reference's batches: a fixed number of rows in random order (the Batcher's interface)."""

    def __init__(self, seqs, rows, seed=0):
        self.seqs, self.rows, self.rng, self.queue = seqs, rows, np.random.default_rng(seed), []

    def next(self):
        if not self.queue:
            perm = self.rng.permutation(len(self.seqs))
            self.queue = [perm[i:i + self.rows] for i in range(0, len(perm) - self.rows + 1, self.rows)]
        return self.queue.pop()

    def micro_batches(self, batch, rank):
        return [batch]


def reference_loss(model, x, y, autocast):
    """The reference's loss: logits at every position, copied to fp32 whole."""
    with autocast:
        logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")


def step_flops(model, seqs, batch):
    """Useful training FLOPs of a batch: 6 x matmul weights per token, causal attention (fwd QK and
    AV, 2 L^2 d per layer, x3 with the backward), the vocabulary projection at the loss positions."""
    c = model.cfg
    lens = seqs.lengths[batch].astype(np.float64) - 1  # inputs per sequence
    loss_tokens = (seqs.lengths[batch] - seqs.prompt_len[batch]).sum()
    return (6 * model.num_params(embeddings=False) * lens.sum() + 6 * c.n_layer * c.d_model * (lens ** 2).sum()
            + 6 * c.d_model * c.vocab_size * loss_tokens)


class Variant:
    def __init__(self, name, features, seqs, vocab, args, device):
        unknown = features - {"padded", "bucket", "bf16", "tf32", "keep", "prefetch", "compile", "ckpt"}
        if unknown:
            raise SystemExit(f"unknown variant feature(s) {', '.join(sorted(unknown))} in {name!r}")
        self.name, self.f, self.seqs, self.device = name, features, seqs, device
        torch.manual_seed(0)  # every variant starts from the same weights
        self.model = Transformer(ModelConfig.from_size(args.size, vocab)).to(device)
        self.model.activation_checkpointing = "ckpt" in features
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.01,
                                     fused=device.type == "cuda" and name != "baseline")
        self.fwd = torch.compile(self.model, dynamic=True) if "compile" in features else self.model
        self.autocast = loss.autocast_for(device, "bf16" if "bf16" in features else "fp32")
        # --sdpa: only that attention kernel for the bf16 variants (an error if it cannot run)
        self.kernel = sdpa_kernel(SDPA[args.sdpa]) if args.sdpa != "auto" and "bf16" in features else contextlib.nullcontext()
        self.multiple = 64 if "compile" in features and device.type == "cuda" else 1
        if "padded" in features:
            self.batcher = PaddedBatcher(seqs, max(1, round(args.batch_tokens / seqs.lengths.mean())))
        else:
            cfg = hparams.TrainConfig(batch_size=1, batch_tokens=args.batch_tokens, seed=0)
            self.batcher = batches.Batcher(seqs, cfg, world=1)
        self.prefetch = batches.Prefetcher(self.batcher, 0, device, self.multiple) if "prefetch" in features else None
        self.times, self.useful, self.computed, self.flops, self.peak, self.error = [], 0, 0, 0.0, 0, None
        self.compiles = 0  # timed steps left out because they compiled

    def next_batch(self):
        if self.prefetch:
            return self.prefetch.next()
        batch = self.batcher.next()
        x, y, plan = self.seqs.collate(batch, self.multiple)
        keep = np.flatnonzero(y.ravel() >= 0)
        return batch, [[torch.from_numpy(a).to(self.device) for a in (x, y, plan, keep)]]

    def step(self, record):
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            torch.backends.cuda.matmul.allow_tf32 = "tf32" in self.f
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        graphs = compiled_graphs()
        with self.kernel:
            t0 = time.perf_counter()
            batch, micro = self.next_batch()
            total = int((self.seqs.lengths[batch] - self.seqs.prompt_len[batch]).sum())
            for x, y, plan, keep in micro:
                if "keep" in self.f:
                    loss_sum = loss.loss_terms(self.fwd, x, y, plan, self.autocast, keep)[0]
                else:
                    loss_sum = reference_loss(self.fwd, x, y, self.autocast)
                (loss_sum / total).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            sync(self.device)
            dt = time.perf_counter() - t0
        if compiled_graphs() != graphs:  # a shape torch.compile had not seen: compile time, not step time
            self.compiles += record
            return
        if not record:
            return
        if self.device.type == "cuda":
            self.peak = max(self.peak, self.resident() + torch.cuda.max_memory_allocated(self.device) - before)
        self.times.append(dt)
        self.useful += int(self.seqs.lengths[batch].sum())
        self.computed += sum(m[0].numel() + m[0].size(0) for m in micro)  # inputs plus each row's last target
        self.flops += step_flops(self.model, self.seqs, batch)

    def resident(self):
        """Bytes held between steps: weights and optimizer state (gradients are freed)."""
        tensors = [*self.model.parameters(), *(t for st in self.opt.state.values() for t in st.values()
                                               if torch.is_tensor(t))]
        return sum(t.numel() * t.element_size() for t in tensors)

    def close(self):
        if self.prefetch:
            self.prefetch.close()


def variant_specs(args, device):
    project = {"bucket", "keep", "prefetch"} | ({"tf32"} if device.type == "cuda" else set())
    if args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda"):
        project.add("bf16")
    if args.compile:
        project.add("compile")
    if args.activation_checkpointing:
        project.add("ckpt")
    named = {"baseline": {"padded"}, "project": project}
    return [(v, named.get(v) or set(v.split("+"))) for v in args.variants.split(",")]


def bench_train(args, device, rng):
    split, vocab, source = load_sequences(args, rng)
    seqs = batches.Sequences.build(split, np.arange(len(split.ids)), args.plan_only)
    variants = [Variant(name, f, seqs, vocab, args, device) for name, f in variant_specs(args, device)]
    m = variants[0].model
    print(f"train: model {args.size} ({m.num_params() / 1e6:.1f}M params), {source}: {len(seqs)} sequences, "
          f"mean length {seqs.lengths.mean():.0f}, max {seqs.lengths.max()}; {args.batch_tokens} tokens per step; "
          f"device {device_name(device)}, {torch.get_num_threads()} threads")
    for v in variants:
        print(f"  {v.name}: {'+'.join(sorted(v.f))}")
    for i in range(args.warmup + 3 * args.steps):  # interleaved: one step of each variant in turn
        for v in variants:
            if v.error or len(v.times) >= args.steps:
                continue
            try:
                v.step(record=i >= args.warmup)
            except torch.cuda.OutOfMemoryError as e:
                v.error = f"out of memory ({str(e).splitlines()[0][:60]})"
                v.model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
    peak_flops = device_peak(device)
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
    table(["variant", "useful tok/s", "pad eff", "step s (median)", "peak GiB", "MFU", "vs first"], rows)
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


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


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
            db = store.connect().db
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
    st = store.connect()
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_size(args.size, 512)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randint(0, 512, (1, 16), device=device)).sum().backward()
    opt.step()  # creates the moments: a checkpoint as the trainer writes it
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    size = 3 * 4 * sum(p.numel() for p in model.parameters())
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    st.start_run(run_id, {}, "bench", 600, 1, socket.gethostname())
    rows = []
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            info = st.save_checkpoint(run_id, 1, state)
            dt = time.perf_counter() - t0
        rows.append(("save", f"{dt:.2f}", f"{info['size'] / 2**20 / dt:,.0f}", gib(mem.extra)))
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            loaded = st.load_checkpoint(run_id, map_location=device)
            dt = time.perf_counter() - t0
        rows.append(("load", f"{dt:.2f}", f"{info['size'] / 2**20 / dt:,.0f}", gib(mem.extra)))
        assert torch.equal(loaded["model"]["head.weight"], state["model"]["head.weight"])
    finally:
        st.drop_run(run_id, force=True)
    print(f"checkpoint: model {args.size} with AdamW state, {info['size'] / 2**30:.2f} GiB in GridFS "
          f"(tensors {size / 2**30:.2f} GiB)")
    table(["", "seconds", "MiB/s", "RSS growth GiB (clean when run alone)"], rows)


# ---------------------------------------------------------------------------------------------
# rollouts: today's engine, kept as the baseline
#
# eval.py's decoding engine as of commit 1236d91, copied verbatim but for the three lines marked
# [adapted] (model.py's cache interface changed) and the names (today_*). It runs under
# todays_attention(), the Attention.forward of that commit (SDPA for one-query decoding too).


TODAY_HEADROOM = 256


class TodayCache:
    """Keys and values of a batch of rollouts, as Transformer.forward uses a cache, on a time axis
    shared by all rows: rows can leave (keep), join (extend, aligned at the end) and the positions
    no row needs any more can be cut (trim). `valid` (B, capacity) marks positions a row may attend
    to; a row's RoPE position is its cache index minus its `pad`, kept by the caller."""

    def __init__(self, cfg, batch, capacity, dtype, device):
        shape = (cfg.n_layer, batch, cfg.n_head, capacity, cfg.d_model // cfg.n_head)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0

    def reserve(self, t):
        """Room for t more positions: at least double the capacity when full."""
        grow = self.length + t - self.k.size(3)
        if grow > 0:
            grow = max(grow, self.k.size(3), TODAY_HEADROOM)
            self.k = torch.cat([self.k, self.k.new_zeros(*self.k.shape[:3], grow, self.k.size(4))], dim=3)
            self.v = torch.cat([self.v, self.v.new_zeros(*self.v.shape[:3], grow, self.v.size(4))], dim=3)
            self.valid = torch.cat([self.valid, self.valid.new_zeros(self.valid.size(0), grow)], dim=1)

    def keep(self, rows):
        """Keep (and repeat) the given rows, in that order."""
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]

    def trim(self, m):
        """Drop the first m positions (no row attends to them any more)."""
        self.k, self.v, self.valid = self.k[:, :, :, m:], self.v[:, :, :, m:], self.valid[:, m:]
        self.length -= m

    def extend(self, other):
        """Append other's rows, the shorter cache left-padded so both end at the same position.
        Returns the shifts (self's, other's) of their positions."""
        n = max(self.length, other.length)
        shifts = n - self.length, n - other.length

        def aligned(x, shift, length):  # x (L, B, H, S, hd) -> (L, B, H, n, hd)
            return torch.cat([x.new_zeros(*x.shape[:3], shift, x.size(4)), x[:, :, :, :length]], dim=3)

        self.k = torch.cat([aligned(self.k, shifts[0], self.length), aligned(other.k, shifts[1], other.length)], dim=1)
        self.v = torch.cat([aligned(self.v, shifts[0], self.length), aligned(other.v, shifts[1], other.length)], dim=1)
        self.valid = torch.cat([F.pad(self.valid[:, :self.length], (shifts[0], 0)),
                                F.pad(other.valid[:, :other.length], (shifts[1], 0))], dim=0)
        self.length = n
        return shifts

    def update(self, layer, k, v, pos=None):  # [adapted] model.py now passes the positions
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def today_pick(logits, temperature, generator=None):
    """Next token per row from logits (B, V): argmax at temperature 0, else a sample."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def today_prefill(model, prompts, max_tokens, autocast, dtype):
    """Left-padded prompts through the model: a Decoding of one row per prompt."""
    device = model.head.weight.device
    U, P = len(prompts), max(len(p) for p in prompts)
    idx = torch.full((U, P), dataset.PAD, dtype=torch.long)
    for u, p in enumerate(prompts):
        idx[u, P - len(p):] = torch.as_tensor(np.asarray(p, np.int64))
    idx = idx.to(device)
    pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (U,)
    ar = torch.arange(P, device=device)
    valid = ar[None] >= pad[:, None]  # (U, P)
    pos = (ar[None] - pad[:, None]).clamp(min=0)  # (U, P)
    mask = torch.ones(P, P, dtype=torch.bool, device=device).tril() & valid[:, None, :]  # (U, P, P)
    mask |= torch.eye(P, dtype=torch.bool, device=device)  # padding queries see themselves: no empty softmax
    cache = TodayCache(model.cfg, U, P, dtype, device)
    cache.valid[:] = valid
    with autocast:
        logits = model(idx, pos=pos, mask=mask[:, None], cache=cache)[:, -1]  # (U, V)
    cache.length += P  # [adapted] the old model.forward advanced the cache itself
    return TodayDecoding(cache, pad, logits, max_tokens)


class TodayDecoding:
    """Rows decoding together: their cache, RoPE offsets (position = cache index - pad), next-token
    logits, tokens so far (out, n) and whether they are still going. `rows` are the caller's ids."""
    FIELDS = ("rows", "pad", "logits", "out", "n", "alive")

    def __init__(self, cache, pad, logits, max_tokens):
        B, device = len(pad), pad.device
        self.cache, self.pad, self.logits, self.max_tokens = cache, pad, logits, max_tokens
        self.rows = torch.arange(B, device=device)
        self.out = torch.zeros(B, max_tokens, dtype=torch.int32, device=device)
        self.n = torch.zeros(B, dtype=torch.long, device=device)
        self.alive = torch.ones(B, dtype=torch.bool, device=device)

    def select(self, rows):
        """Keep (and repeat) the given rows, in that order."""
        self.cache.keep(rows)
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f)[rows])
        return self

    def compact(self):
        """Drop finished rows, then the positions that only they needed."""
        self.select(self.alive.nonzero().squeeze(1))
        if len(self.pad) and self.pad.min() > 0:
            m = int(self.pad.min())
            self.cache.trim(m)
            self.pad = self.pad - m

    def join(self, other):
        a, b = self.cache.extend(other.cache)
        other.pad = other.pad + b
        self.pad = self.pad + a
        for f in self.FIELDS:
            setattr(self, f, torch.cat([getattr(self, f), getattr(other, f)]))
        return self

    def step(self, model, temperature, generator, autocast):
        """Pick every row's next token; return the rows that finished as [(row, ids, eos)], then feed
        the new tokens to the model."""
        tok = today_pick(self.logits, temperature, generator)  # (B,)
        eos = tok == dataset.EOS
        grow = self.alive & ~eos
        self.out[grow, self.n[grow]] = tok[grow].int()
        self.n = self.n + grow
        done = self.alive & (eos | (self.n == self.max_tokens))
        finished = []
        if done.any():
            ids = self.out[done].cpu().numpy()
            finished = [(row, ids[k, :length].astype(dataset.DTYPE), e) for k, (row, length, e) in
                        enumerate(zip(self.rows[done].tolist(), self.n[done].tolist(), eos[done].tolist()))]
            self.alive &= ~done
        if self.alive.any():
            c = self.cache
            c.reserve(1)
            c.valid[:, c.length] = True
            pos = (c.length - self.pad)[:, None]  # (B, 1)
            mask = c.valid[:, None, None, :c.length + 1]  # (B, 1, 1, S)
            with autocast:
                self.logits = model(tok[:, None], pos=pos, mask=mask, cache=c)[:, -1]  # (B, V)
            c.length += 1  # [adapted] as above
        return finished


@torch.no_grad()
def today_rollout(model, prompts, src, max_tokens, temperature=0.0, generator=None, batch_size=64, autocast=None,
            cache_dtype=None):
    """Yield (i, ids, eos) as row i finishes: row i continues prompts[src[i]] (`<bos> prompt <sep>`
    ids); ids are the generated tokens before <eos> (uint16), eos whether <eos> came within
    max_tokens.

    Up to batch_size rows decode at once. Finished rows leave and waiting rows join (one prefill per
    distinct prompt), so a long response does not hold up the others. Rows that joined together form
    a cohort with its own cache; a cohort merges into an older one once its window is at least half
    as long, so young rows never attend over (masked) windows much longer than their own."""
    autocast = autocast or contextlib.nullcontext()
    dtype = cache_dtype or model.head.weight.dtype
    device = model.head.weight.device
    waiting = collections.deque(range(len(src)))
    cohorts = []  # oldest (longest window) first
    while waiting or cohorts:
        live = sum(int(c.alive.sum()) for c in cohorts)
        if waiting and live <= 3 * batch_size // 4:  # refill in bulk: a prefill per refill
            new = [waiting.popleft() for _ in range(min(batch_size - live, len(waiting)))]
            uniq = {s: u for u, s in enumerate(sorted({src[i] for i in new}))}
            joining = today_prefill(model, [prompts[s] for s in uniq], max_tokens, autocast, dtype)
            joining.select(torch.tensor([uniq[src[i]] for i in new], device=device))
            joining.rows = torch.tensor(new, device=device)
            cohorts.append(joining)
        for i in range(len(cohorts) - 1, 0, -1):
            if 2 * cohorts[i].cache.length >= cohorts[i - 1].cache.length:
                cohorts[i - 1].join(cohorts.pop(i))
        for c in cohorts:
            yield from c.step(model, temperature, generator, autocast)
            if 4 * int((~c.alive).sum()) >= len(c.alive):
                c.compact()  # finished rows still cost compute
        cohorts = [c for c in cohorts if len(c.rows)]




def todays_attention_forward(self, x, cos, sin, mask=None, cache=None, pos=None):
    """model.Attention.forward as of commit 1236d91 (the cache call adapted as above)."""
    B, T, C = x.shape
    q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        k, v = cache.update(self.layer, k, v, pos)
    if mask is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.proj(y.transpose(1, 2).reshape(B, T, C))


@contextlib.contextmanager
def todays_attention():
    new = model_lib.Attention.forward
    model_lib.Attention.forward = todays_attention_forward
    try:
        yield
    finally:
        model_lib.Attention.forward = new


# ---------------------------------------------------------------------------------------------
# rollouts: the comparison


class LengthModel(torch.nn.Module):
    """A Transformer whose <eos> probability at each position (temperature 1) makes sequence
    lengths follow a preset's distribution: random weights alone would end rows after about
    vocabulary-size tokens. Every engine runs this same model."""

    def __init__(self, net, hazard):
        super().__init__()
        self.net, self.cfg, self.head = net, net.cfg, net.head
        self.register_buffer("logit", torch.tensor(np.log(hazard) - np.log1p(-hazard), dtype=torch.float32))

    def new_cache(self, *a, **kw):
        return self.net.new_cache(*a, **kw)

    def forward(self, idx, pos=None, mask=None, cache=None, keep=None):
        logits = self.net(idx, pos=pos, mask=mask, cache=cache, keep=keep)
        if keep is not None:
            return logits  # a prefill: its logits are not used
        B, T = idx.shape
        p = torch.arange(T, device=idx.device) if pos is None else pos
        p = p.expand(B, T).clamp(max=len(self.logit) - 1)  # (B, T) position of the input token
        others = logits.float().index_fill(-1, torch.tensor([dataset.EOS], device=idx.device), float("-inf"))
        eos = self.logit[p] + others.logsumexp(-1)  # P(<eos> next) = hazard of a length of p + 2
        return torch.cat([logits[..., :dataset.EOS], eos[..., None].to(logits.dtype), logits[..., dataset.EOS + 1:]], -1)


def length_hazard(points, rng, draws=1_000_000):
    """hazard[p]: the probability that a sequence of at least p + 2 tokens has exactly p + 2."""
    q, lengths = zip(*points)
    drawn = np.interp(rng.random(draws), q, lengths).round().astype(np.int64)
    pmf = np.bincount(drawn, minlength=drawn.max() + 3).astype(np.float64)
    survival = pmf[::-1].cumsum()[::-1]  # sequences of at least l tokens
    hazard = np.divide(pmf, survival, out=np.zeros_like(pmf), where=survival > 0)[2:]
    return np.clip(np.append(hazard, 1.0), 1e-12, 1 - 1e-9)  # beyond the longest: certain


@torch.no_grad()
def naive_generate(model, prompt, rows, max_new, gen):
    """No cache: every step runs the whole sequence of every row through the model."""
    seq = torch.as_tensor(np.asarray(prompt, np.int64), device=model.head.weight.device).repeat(rows, 1)
    alive = torch.ones(rows, dtype=torch.bool, device=seq.device)
    tokens = 0
    for _ in range(max_new):
        probs = model(seq)[:, -1].float().softmax(-1)  # (rows, V)
        nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        tokens += int(alive.sum())
        alive &= nxt != dataset.EOS
        if not alive.any():
            break
        seq = torch.cat([seq, nxt[:, None]], 1)
    return tokens


def machine_limits(device):
    """(matmul FLOP/s, memory bandwidth B/s) measured now on this device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn(256 << 20 if device.type == "cuda" else 128 << 20, device=device)  # 1 GiB / 512 MiB fp32
    flops, bw = [], []
    for _ in range(4):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        flops.append(2 * n ** 3 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        bw.append(x.numel() * 4 / (time.perf_counter() - t0))
    return max(flops[1:]), max(bw[1:])


def decode_cost(cfg, attended, dtype_bytes):
    """(FLOPs, KV cache bytes read) of generating tokens that attend over `attended` keys in all."""
    per_token = 2 * (cfg.n_layer * (4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.d_ff) + cfg.d_model * cfg.vocab_size)
    return per_token, 4 * cfg.n_layer * cfg.d_model * attended, 2 * cfg.n_layer * cfg.d_model * dtype_bytes * attended


def bench_rollout(args, device, rng):
    bf16 = device.type == "cuda" and args.precision != "fp32"
    autocast = loss.autocast_for(device, "bf16" if bf16 else "fp32")
    cache_dtype = torch.bfloat16 if bf16 else None
    peak_flops, bandwidth = machine_limits(device)
    variants = args.rollout_variants.split(",")
    unknown = set(variants) - {"naive", "today", "eager", "compiled"}
    if unknown:
        raise SystemExit(f"unknown rollout variant(s) {', '.join(sorted(unknown))}")
    print(f"rollout: device {device_name(device)}, {torch.get_num_threads()} threads, "
          f"{'bf16' if bf16 else 'fp32'}; measured now: matmul {peak_flops / 1e9:,.0f} GFLOP/s, "
          f"memory bandwidth {bandwidth / 1e9:,.1f} GB/s; temperature 1, batch {args.rollout_rows} rows")
    for size in args.rollout_sizes.split(","):
        for lengths in args.rollout_lengths.split(","):
            points, share, vocab = PRESETS[lengths]
            torch.manual_seed(0)
            net = Transformer(ModelConfig.from_size(size, vocab)).to(device).eval()
            model = LengthModel(net, length_hazard(points, rng)).to(device)
            q, ls = zip(*points)
            drawn = np.interp(rng.random(args.rollout_prompts), q, ls)
            prompts = [np.concatenate([[dataset.BOS], rng.integers(len(dataset.SPECIALS), vocab, max(1, round(share * n) - 2)),
                                       [dataset.SEP]]) for n in drawn]
            src = np.repeat(np.arange(len(prompts)), args.rollout_samples)
            max_tokens = int(max(ls)) + 1
            runs = {v: [] for v in variants}

            def today():
                gen = torch.Generator(device).manual_seed(0)
                with todays_attention():
                    return [(i, len(ids), e) for i, ids, e in today_rollout(
                        model, prompts, src, max_tokens, 1.0, gen, args.rollout_rows, autocast, cache_dtype)]

            def new(compiled):
                return lambda: [(i, len(ids), e) for i, ids, e in decode.generate(
                    model, prompts, src, max_tokens, 1.0, 0, None, args.rollout_rows, autocast=autocast,
                    cache_dtype=cache_dtype, compile=compiled, every=args.rollout_every)]

            fns = {"today": today, "eager": new(False), "compiled": new(True)}
            if "compiled" in variants:  # compiling is not decoding: once before the timed runs
                t0 = time.perf_counter()
                list(decode.generate(model, prompts[:1], [0] * min(4, args.rollout_rows), max_tokens, 1.0,
                                     batch_size=args.rollout_rows, autocast=autocast, cache_dtype=cache_dtype,
                                     compile=True, every=args.rollout_every))
                print(f"  {size} {lengths}: compiling took {time.perf_counter() - t0:.0f} s (left out)")
            for rep in range(args.rollout_reps):  # interleaved: each variant once per repetition
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
                            out = fns[v]()
                        sync(device)
                        dt = time.perf_counter() - t0
                    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else mem.extra
                    runs[v].append((dt, out, peak))
            if args.rollout_profile:  # where the time goes: one more run of each variant under torch.profiler
                from torch.profiler import ProfilerActivity, profile
                for v in variants:
                    if v == "naive":
                        continue
                    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
                    with profile(activities=acts) as prof:
                        fns[v]()
                    print(f"  profile of {v} ({size}, {lengths}):")
                    print(prof.key_averages().table(sort_by="self_cuda_time_total" if device.type == "cuda"
                                                    else "self_cpu_time_total", row_limit=12))
            rows, base_rate = [], None
            for v in variants:
                dt = float(np.median([r[0] for r in runs[v]]))
                out = runs[v][int(np.argsort([r[0] for r in runs[v]])[len(runs[v]) // 2])][1]
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
                if v == "today":
                    base_rate = rate
                share = "-"
                if attended:
                    mm, att, kv = decode_cost(net.cfg, attended / tokens, 2 if bf16 else 4)
                    limit = min(peak_flops / (mm + att), bandwidth / kv)
                    bound = "compute" if peak_flops / (mm + att) < bandwidth / kv else "KV bandwidth"
                    share = (f"{100 * rate / limit:.0f}% of {limit:,.0f} ({bound}); "
                             f"{rate * (mm + att) / 1e9:.1f} GFLOP/s, {rate * kv / 1e9:.1f} GB/s")
                rows.append((v, f"{rate:,.0f}", f"{responses / dt:,.1f}" if responses else "-", f"{dt:.1f}",
                             gib(max(r[2] for r in runs[v])), share, note))
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
    ap.add_argument("--sections", default="train,load,checkpoint,rollout", help="comma-separated subset")
    ap.add_argument("--size", default="s", help="model size (model.SIZES)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
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
    ap.add_argument("--naive-rows", type=int, default=8)
    ap.add_argument("--naive-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    args.warmup = args.warmup or (4 if args.compile else 2)
    return args


def main(argv=None):
    args = parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    sections = args.sections.split(",")
    for s in sections:
        if s not in ("train", "load", "checkpoint", "rollout"):
            raise SystemExit(f"unknown section {s!r}")
    if "train" in sections:
        bench_train(args, device, rng)
    if "load" in sections:
        bench_load(args, rng)
    if "checkpoint" in sections:
        bench_checkpoint(args, device)
    if "rollout" in sections:
        bench_rollout(args, device, rng)


if __name__ == "__main__":
    main()
