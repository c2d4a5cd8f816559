"""The encoder-decoder's benchmarks (bench.py --sections encdec), side by side in one run:

- training: useful (non-padding) tokens per second of `--arch encdec` against `--arch decoder` of the
  same size name (about the same parameters, docs/training.md), on the same sequences, token-budget
  batches, one step of each in turn;
- sampling: the engine (decode.py: the encoder once per prompt, its cross-attention keys and values
  kept once and read by every sample) against the naive sampler, the reference's `rollout`: the
  prompt repeated per sample through the encoder, a self-attention KV cache, and every layer's
  cross-attention keys and values recomputed from the features at every step.
Weights are random; the output layer's <eos> row is zeroed and the rest scaled up so that no row ends
early (every row generates --encdec-tokens tokens).
"""
import time

import numpy as np
import torch

import batches
import dataset
import decode
import loss
from checkpoint import ARCHS, model_config
from encdec import EncoderDecoder, rope_tables
from benchmarks.measure import sync, table
from benchmarks.workloads import PRESETS, synthetic_split


def train_rates(args, device, rng):
    """(arch, parameters, tokens/s, steps) of both architectures on the same synthetic sequences."""
    points, share, vocab = PRESETS[args.lengths] if args.lengths in PRESETS else PRESETS["maze10"]
    q, ls = zip(*points)
    split = synthetic_split(np.interp(rng.random(args.num_seqs), q, ls).round().astype(np.int64), share, vocab, rng)
    runs = []
    for arch in ("decoder", "encdec"):
        torch.manual_seed(0)
        net = ARCHS[arch][1](model_config(arch, args.encdec_size, vocab)).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        seqs = batches.Sequences.build(split, np.arange(len(split.ids)), False, arch)
        order = batches.epoch_batches(seqs.bucket_lengths, 0, 0, 1, 1, args.batch_tokens)
        runs.append([arch, net, opt, seqs, order, 0.0, 0])
    autocast = loss.autocast_for(device, args.precision)
    for i in range(args.warmup + args.steps):
        for run in runs:  # one step of each in turn: a busy machine slows both alike
            arch, net, opt, seqs, order, _, _ = run
            rows = order[i % len(order)]
            x, y, plan = batches.to_device(batches.tensors(seqs.collate(rows)), device)
            sync(device)
            t0 = time.perf_counter()
            total, _ = loss.loss_terms(net, x, y, plan, autocast)
            (total / int((y >= 0).sum())).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            if i >= args.warmup:
                run[5] += time.perf_counter() - t0
                run[6] += int(seqs.lengths[rows].sum())
    return [(arch, net.num_params(), tokens / busy) for arch, net, _, _, _, busy, tokens in runs]


def sampler_model(vocab, device):
    torch.manual_seed(0)
    net = EncoderDecoder(model_config("encdec", "m", vocab)).to(device).eval()
    with torch.no_grad():  # no row ends early: <eos> at logit 0 among large ones
        net.head.weight.mul_(30)
        net.head.weight[dataset.EOS] = 0
    return net


@torch.no_grad()
def naive_sample(net, prompt, samples, max_tokens, temperature, seed):
    """The reference's rollout: the prompt repeated per sample, cross-attention keys and values of
    every layer recomputed from the features at each step; returns the tokens (samples, max_tokens)."""
    device = net.head.weight.device
    src = torch.as_tensor(prompt, device=device)[None].repeat(samples, 1)  # (n, S)
    valid = torch.ones_like(src, dtype=torch.bool)
    feats = net.encode(src, valid)  # (n, S, C)
    cache = net.new_cache(samples, max_tokens + 1)
    tok = torch.full((samples, 1), dataset.BOS, dtype=torch.long, device=device)
    out, g = [], torch.Generator(device=device).manual_seed(seed)
    hd = net.cfg.d_model // net.cfg.n_head
    for t in range(max_tokens):
        pos = torch.tensor([t], device=device)
        cos, sin = rope_tables(pos, hd, net.cfg.rope_base)
        mask = torch.arange(cache.window, device=device) <= pos[:, None]  # (1, S)
        x = net.decoder.embed(tok)
        for block in net.decoder.blocks:
            x = EncoderDecoder._fresh_block(block, x, cos, sin, feats, valid, mask, cache, pos)
        logits = net.decoder.head(net.decoder.norm(x))[:, -1].float()  # (n, V)
        tok = torch.multinomial((logits / temperature).softmax(-1), 1, generator=g)  # (n, 1)
        out.append(tok)
    return torch.cat(out, 1)


def sample_rates(args, device, rng):
    """(sampler, tokens generated, seconds) for --encdec-samples samples of one prompt of --encdec-prompt
    tokens from enc-m-s/dec-m-s, each sampler run --rollout-reps times in turn (medians)."""
    vocab = PRESETS["sokoban"][2]
    net = sampler_model(vocab, device)
    prompt = np.concatenate([[dataset.BOS], rng.integers(len(dataset.SPECIALS), vocab, args.encdec_prompt - 2),
                             [dataset.EOS]])
    n, m = args.encdec_samples, args.encdec_tokens
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else None

    def engine():
        got = list(decode.generate(net, [np.array([dataset.BOS])], [0] * n, m, temperature=1.0, batch_size=n,
                                   autocast=autocast, sources=[prompt]))
        return sum(len(ids) for _, ids, _ in got)

    def naive():
        return naive_sample(net, prompt, n, m, 1.0, 0).numel()

    times = {"engine": [], "naive": []}
    tokens = {}
    for _ in range(args.rollout_reps):
        for name, run in (("engine", engine), ("naive", naive)):
            sync(device)
            t0 = time.perf_counter()
            tokens[name] = run()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return [(name, tokens[name], float(np.median(times[name]))) for name in ("naive", "engine")]


def bench_encdec(args, device, rng):
    print(f"encdec training: size {args.encdec_size} of each architecture, lengths {args.lengths}, "
          f"{args.batch_tokens} tokens per step, {args.steps} timed steps after {args.warmup}, {args.precision}")
    rows = train_rates(args, device, rng)
    base = rows[0][2]
    table(["arch", "params", "tokens/s", "vs decoder"],
          [(a, f"{p / 1e6:.2f}M", f"{r:,.0f}", f"{r / base:.2f}x") for a, p, r in rows])
    print(f"\nencdec sampling: {args.encdec_samples} samples of one {args.encdec_prompt}-token prompt from "
          f"enc-m-s/dec-m-s, {args.encdec_tokens} tokens each, temperature 1, medians of {args.rollout_reps}")
    rows = sample_rates(args, device, rng)
    base = rows[0][1] / rows[0][2]
    table(["sampler", "tokens", "seconds", "tokens/s", "vs naive"],
          [(s, t, f"{sec:.2f}", f"{t / sec:,.0f}", f"{t / sec / base:.2f}x") for s, t, sec in rows])
