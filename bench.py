"""Speed benchmark: training throughput against a reference-style baseline, dataset loading,
checkpoint save and load, rollout tokens per second.

  python bench.py --size s --lengths maze20 --device cpu --precision bf16
  python bench.py --sections train --size m --lengths sokoban --batch-tokens 32768 --compile   (GPU)
  python bench.py --sections train --size xl --lengths 10000:1.0 --batch-tokens 10000 --variants project
  python bench.py --sections load --dataset maze.10-by-10-deterministic.simple --load-rows 1000000

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

import data
import train
from model import ModelConfig, Transformer

# length quantiles (q, total sequence length), prompt share of the tokens, vocabulary size
PRESETS = {
    "maze10": ([(0, 250), (.1, 295), (.25, 314), (.5, 345), (.75, 393), (.9, 465), (.99, 657), (1, 805)], 0.34, 121),
    "maze20": ([(0, 720), (.1, 894), (.25, 976), (.5, 1108), (.75, 1307), (.9, 1620), (.99, 2297), (1, 3037)], 0.40, 431),
    "maze30": ([(0, 1392), (.1, 1806), (.25, 2004), (.5, 2281), (.75, 2762), (.9, 3550), (.99, 5318), (1, 6269)],
               0.42, 941),
    "sokoban": ([(0, 204), (.1, 1275), (.25, 2430), (.5, 4507), (.75, 6873), (.9, 8703), (.99, 9996), (1, 10137)],
                0.03, 82),
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
    flat = {p: rng.integers(len(data.SPECIALS), vocab, int(n.sum())).astype(data.DTYPE) for p, n in lens.items()}
    return data.Split(np.arange(len(body)), lens, flat, {})


def load_sequences(args, rng):
    """(split, vocabulary size, description) for --dataset or --lengths."""
    if args.dataset:
        import store
        db = store.connect().db
        split = data.load_split(db, args.dataset, "train")
        return split, len(data.get_dataset(db, args.dataset)["vocabulary"]), f"dataset {args.dataset}"
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
        self.autocast = train.autocast_for(device, "bf16" if "bf16" in features else "fp32")
        # --sdpa: only that attention kernel for the bf16 variants (an error if it cannot run)
        self.kernel = sdpa_kernel(SDPA[args.sdpa]) if args.sdpa != "auto" and "bf16" in features else contextlib.nullcontext()
        self.multiple = 64 if "compile" in features and device.type == "cuda" else 1
        if "padded" in features:
            self.batcher = PaddedBatcher(seqs, max(1, round(args.batch_tokens / seqs.lengths.mean())))
        else:
            cfg = train.TrainConfig(batch_size=1, batch_tokens=args.batch_tokens, seed=0)
            self.batcher = train.Batcher(seqs, cfg, world=1)
        self.prefetch = train.Prefetcher(self.batcher, 0, device, self.multiple) if "prefetch" in features else None
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
                    loss_sum = train.loss_terms(self.fwd, x, y, plan, self.autocast, keep)[0]
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
    seqs = data.Sequences.build(split, np.arange(len(split.ids)), args.plan_only)
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
    lens = {p: np.tile(split.lens[p], reps)[:rows] for p in data.PARTS}
    flat = {p: np.tile(np.asarray(split.flat[p]), reps)[:int(lens[p].sum())] for p in data.PARTS}
    return data.Split(np.arange(rows), lens, flat, {})


def ready_to_train(folder, plan_only):
    """Cache to a first collated batch: what a relaunch does before its first step."""
    t = {}
    t0 = time.perf_counter()
    split = data.read_cache(folder)
    t["open cache (mmap)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = data.filter_split(split)
    seqs = data.Sequences.build(split, rows, plan_only)
    t["build sequences"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = data.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=16384)
    t["epoch batches (16k tokens)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    seqs.collate(batches[0])
    t["first batch"] = time.perf_counter() - t0
    return t, split


def bench_load(args, rng):
    tmp = tempfile.mkdtemp(prefix="bench-cache-")
    rows = []
    try:
        split, _, source = load_sequences(args, rng)
        if args.dataset:
            import store
            db = store.connect().db
            t0 = time.perf_counter()
            split = data.load_split(db, args.dataset, "train", use_cache=False)
            dt = time.perf_counter() - t0
            rows.append((f"MongoDB read ({len(split.ids):,} sequences)", f"{dt:.3f}", f"{len(split.ids) / dt:,.0f} seq/s"))
        big = tile_split(split, args.load_rows)
        tokens = sum(int(big.lens[p].sum()) for p in data.PARTS)
        folder = Path(tmp) / "train"
        t0 = time.perf_counter()
        data.write_cache(folder, big)
        dt = time.perf_counter() - t0
        rows.append((f"cache write ({args.load_rows:,} sequences, {tokens * 2 / 2**20:,.0f} MiB)", f"{dt:.3f}",
                     f"{tokens * 2 / 2**20 / dt:,.0f} MiB/s"))
        del big
        times, cached = ready_to_train(folder, args.plan_only)
        rows += [(k, f"{v:.3f}", "") for k, v in times.items()]
        rows.append(("ready to train from the cache", f"{sum(times.values()):.3f}", ""))
        t0 = time.perf_counter()
        touched = sum(int(np.asarray(cached.flat[p][::2048]).sum()) for p in data.PARTS)  # one read per page
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
    import store
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
# rollouts


@torch.no_grad()
def greedy_rollout(model, prompts, samples, max_tokens, autocast):
    """A minimal KV-cached greedy loop: every row is a prompt repeated `samples` times."""
    idx = torch.as_tensor(np.repeat(np.stack(prompts), samples, axis=0), device=model.head.weight.device)
    cache = model.new_cache(len(idx), idx.size(1) + max_tokens)
    with autocast:
        tok = model(idx, cache=cache)[:, -1].argmax(-1)
        for _ in range(max_tokens - 1):
            tok = model(tok[:, None], cache=cache)[:, -1].argmax(-1)
    return len(idx) * max_tokens


def bench_rollout(args, device, rng):
    torch.manual_seed(0)
    _, _, vocab = PRESETS.get(args.lengths, (None, None, args.vocab or 1000))
    model = Transformer(ModelConfig.from_size(args.size, args.vocab or vocab)).to(device).eval()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    autocast = train.autocast_for(device, "bf16" if bf16 else "fp32")
    prompts = [rng.integers(len(data.SPECIALS), model.cfg.vocab_size, args.rollout_prompt_len) for _ in range(args.rollout_prompts)]
    try:
        import eval as evaluation
        how = "eval.rollout (KV cache, shared prefill per prompt, rows leave and join as they finish)"
        src = np.repeat(np.arange(len(prompts)), args.rollout_samples)
        def run():
            rows = evaluation.rollout(model, prompts, src, args.rollout_tokens, temperature=1.0,
                                      generator=torch.Generator(device).manual_seed(0), batch_size=len(src),
                                      autocast=autocast, cache_dtype=torch.bfloat16 if bf16 else None)
            return sum(len(ids) + bool(eos) for _, ids, eos in rows)  # <eos> is a generated token too
    except ImportError:
        how = "greedy loop over model.new_cache"
        run = lambda: greedy_rollout(model, prompts, args.rollout_samples, args.rollout_tokens, autocast)
    run()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    tokens = run()
    sync(device)
    dt = time.perf_counter() - t0
    print(f"rollout: {how}; model {args.size}, {args.rollout_prompts} prompts x {args.rollout_samples} samples, "
          f"prompt {args.rollout_prompt_len} tokens, up to {args.rollout_tokens} new tokens, temperature 1")
    table(["rows", "tokens", "seconds", "tokens/s"],
          [(args.rollout_prompts * args.rollout_samples, tokens, f"{dt:.2f}", f"{tokens / dt:,.0f}")])


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
    ap.add_argument("--rollout-prompts", type=int, default=8)
    ap.add_argument("--rollout-samples", type=int, default=8)
    ap.add_argument("--rollout-prompt-len", type=int, default=400)
    ap.add_argument("--rollout-tokens", type=int, default=256)
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
