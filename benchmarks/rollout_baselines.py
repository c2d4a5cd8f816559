"""The rollout benchmark's baselines and the model they all run: eval.py's decoding engine before
decode.py ("today", frozen), naive decoding without a cache, and LengthModel, a random Transformer
whose responses have a preset's lengths."""
import collections
import contextlib

import numpy as np
import torch
import torch.nn.functional as F

import dataset
import model as model_lib
from model import apply_rope

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
# the model every engine runs, and naive decoding


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
