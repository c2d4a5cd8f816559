"""decode.py as of commit 2354b06, frozen: the sampling engine before the memory budget (a lane opened
whatever the budget, emptied lanes kept open), the baseline of bench.py's `tail` section. Copied
verbatim, this paragraph added; its docstring follows.

Sampling engine in the style of gpt-fast: static KV caches written at positions, one decode step
that torch.compile can compile, no host synchronisation per token.

  for i, ids, eos in generate(model, prompts, src, max_tokens, temperature=1.0, seed=0): ...

Row i continues prompts[src[i]] (token ids, e.g. `<bos> prompt <sep>`); ids are its generated tokens
before <eos> (uint16), eos whether <eos> came within max_tokens.

Layout. Rows decode in lanes: a lane holds up to `slots` rows whose positions fit its capacity C,
with a preallocated cache (n_layer, slots, H, C + 1, hd) and each row's tokens by position. Its rows
sit packed in its first n slots, and a step computes only those: a row that leaves is replaced by
the last one. Lane capacities grow by half from the longest prompt plus 64 up to the longest
possible row, so a row attends over a window at most about 1.5 times its own length, and memory
follows the rows' actual lengths rather than the token limit. A row about to fill its lane moves to
the next (its keys and values are copied), growing that lane (slot counts double, the old cache's
memory reused) while the memory budget allows; else it waits.

Per token, `decode_step` feeds every row's last token at its own position, picks the next
one (argmax, or Gumbel-max with noise hashed from (seed, row key, position) for the next `every`
steps at once, so a row's samples do not depend on batching), and updates tokens, positions and flags in place. Every `every` steps the
host collects: finished rows leave, full rows move up, waiting rows join (refills keep the batch
full). Joining rows share one prefill per distinct prompt; its keys and values are copied into
their slots. Position C of a lane's cache is scratch: rows that are not running write there.
"""
import collections
import contextlib

import numpy as np
import torch

import dataset
from dataset import EOS

GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
MIX1, MIX2 = -4658895280553007687, -7723592293110705685  # splitmix64 multipliers as int64
PREFILL_PROMPTS = 64  # distinct prompts per prefill forward


def srl(z, s):
    """Logical right shift of int64 tensors (>> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix(z):
    """splitmix64's finalizer on int64 tensors: a well-spread hash (multiplication wraps)."""
    z = (z ^ srl(z, 30)) * MIX1
    z = (z ^ srl(z, 27)) * MIX2
    return z ^ srl(z, 31)


def gumbel(key, pos, vocab):
    """Gumbel noise (..., V), float32, hashed from each row's key (...) and position (...)."""
    base = mix(key + pos * GOLDEN)  # (...)
    z = mix(base[..., None] + torch.arange(1, vocab + 1, device=key.device) * GOLDEN)  # (..., V)
    u = (srl(z, 11).double() + 0.5) * 2.0 ** -53  # uniform in (0, 1)
    return (-torch.log(-torch.log(u))).float()


def decode_step(model, cache, seq, pos, stop, live, eos, noise, temperature):
    """One token for every running row of a lane, all on the device, in place.

    seq (B, C + 2) tokens by position (column C + 1 is scratch); pos (B,) position of each row's
    last token, whose keys are not cached yet; stop (B,) the position of a row's last allowed token;
    live (B,) still generating; eos (B,) ended with <eos>; noise (B, V) Gumbel noise (None when
    greedy). A live row at pos == C is full: it waits for the host to move it to a larger lane."""
    C = seq.size(1) - 2
    run = live & (pos < C)  # (B,)
    at = torch.where(run, pos, C)  # (B,) rows not running write to the scratch position
    tok = seq.gather(1, at[:, None])  # (B, 1)
    logits = model(tok, pos=at[:, None], cache=cache)[:, -1].float()  # (B, V)
    if noise is not None:
        logits = logits / temperature + noise  # Gumbel-max: a sample of softmax(logits / T)
    nxt = logits.argmax(-1)  # (B,)
    ended = nxt == EOS
    grow = run & ~ended
    seq.scatter_(1, torch.where(grow, pos + 1, C + 1)[:, None], nxt[:, None])
    pos.add_(grow.long())
    done = run & (ended | (pos == stop))
    eos.logical_or_(run & ended)
    live.logical_and_(~done)


class Lane:
    """Rows whose positions fit `capacity`: their cache, tokens by position and state on the device;
    which caller row sits in which slot, and where its response starts, on the host."""

    def __init__(self, model, slots, capacity, dtype, storage=None):
        device = model.head.weight.device
        self.capacity, self.dtype = capacity, dtype
        self.cache = model.new_cache(slots, capacity + 1, dtype, storage)  # + scratch position
        self.seq = torch.zeros(slots, capacity + 2, dtype=torch.long, device=device)
        self.pos, self.stop, self.key = (torch.zeros(slots, dtype=torch.long, device=device) for _ in range(3))
        self.live, self.eos = (torch.zeros(slots, dtype=torch.bool, device=device) for _ in range(2))
        self.row = np.full(slots, -1)  # caller's row per slot, -1 = free
        self.n = 0  # rows sit in slots [0, n) (between collections, finished ones too)
        self.start = np.zeros(slots, dtype=np.int64)  # prompt length: where the response starts
        self.running = False  # some row can take a step (known at the last collection)
        self.high = 0  # the highest position of a running row at the last collection

    @property
    def slots(self):
        return len(self.row)

    def tensors(self):
        return self.cache, self.seq, self.pos, self.stop, self.key, self.live, self.eos

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.cache.storage, self.seq))

    def free(self):
        return np.arange(self.n, self.slots)

    def view(self, rows):
        """The step's arguments for the first `rows` slots (all: the tensors themselves, whose
        addresses CUDA graphs keep)."""
        if rows == self.slots:
            return self.cache, self.seq, self.pos, self.stop, self.live, self.eos
        return (self.cache.rows(rows), *(t[:rows] for t in (self.seq, self.pos, self.stop, self.live, self.eos)))

    def move_into(self, new):
        """Move the rows into `new`, an empty lane of the same capacity and at least as many slots."""
        n = self.n
        new.cache.k[:, :n] = self.cache.k[:, :n]
        new.cache.v[:, :n] = self.cache.v[:, :n]
        for a, b in zip(new.tensors()[1:], self.tensors()[1:]):
            a[:n] = b[:n]
        new.row[:n], new.start[:n], new.n, new.running, new.high = self.row[:n], self.start[:n], n, self.running, self.high
        return new

    def compact(self, upto):
        """Fill the free slots among the first n with the last rows (their positions < upto copied)."""
        used = self.row[:self.n] >= 0
        m = int(used.sum())
        dst, src = np.flatnonzero(~used[:m]), np.flatnonzero(used[m:]) + m
        if len(dst):
            d, s = (torch.as_tensor(x, device=self.seq.device) for x in (dst, src))
            self.cache.k[:, d, :, :upto] = self.cache.k[:, s, :, :upto]
            self.cache.v[:, d, :, :upto] = self.cache.v[:, s, :, :upto]
            for t in self.tensors()[1:]:
                t[d] = t[s]
            self.live[s] = False
            self.row[dst], self.start[dst], self.row[src] = self.row[src], self.start[src], -1
        self.n = m


def memory_budget(device):
    """Bytes the caches may take: half of what is free now."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        avail = 8 << 30
    return avail // 2


def values_per_token(cfg):
    return 2 * cfg.n_layer * cfg.d_model  # keys and values of every layer


def bytes_per_token(cfg, dtype):
    return values_per_token(cfg) * torch.tensor([], dtype=dtype).element_size()


def new_storage(numel, dtype, device):
    """Memory for a lane's cache, left as it is (tests fill it with NaN to show it is never read)."""
    return torch.empty(numel, dtype=dtype, device=device)


def first_capacity(prompt_len):
    """The smallest lane: the longest prompt and 64 tokens more, a multiple of 64."""
    return max(128, -(-(prompt_len + 64) // 64) * 64)


def next_capacity(capacity):
    """Lanes grow by half (a multiple of 16): a row attends over at most 1.5 times its length."""
    return -(-3 * capacity // 32) * 16


def auto_batch_size(cfg, prompt_len, device, dtype=None, memory=None):
    """Rows decoding at once: the first lane takes at most a quarter of the memory budget; at most
    256 on CPU (the weights of models that fit there stay in cache already) and 1024 on GPU."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    memory = memory or memory_budget(device)
    rows = memory // 4 // (bytes_per_token(cfg, dtype) * (first_capacity(prompt_len) + 1))
    return int(max(1, min(256 if device.type == "cpu" else 1024, rows)))


class Engine:
    """The decoding state of one `generate` call: lanes, the (compiled) step, the prefill."""

    def __init__(self, model, max_prompt, max_tokens, temperature, batch_size, memory, autocast, dtype, compile,
                 every):
        self.model, self.temperature, self.batch_size, self.every = model, temperature, batch_size, every
        self.device = model.head.weight.device
        self.autocast = autocast or contextlib.nullcontext()
        self.dtype = dtype or model.head.weight.dtype
        self.memory = memory or memory_budget(self.device)
        top = max_prompt - 1 + max_tokens  # the last position a row can reach
        caps = [min(first_capacity(max_prompt), top)]
        while caps[-1] < top:
            caps.append(min(next_capacity(caps[-1]), top))
        self.caps = caps
        self.slot_steps = 0  # rows computed, busy or idle (the bench's utilisation figure)
        cuda = self.device.type == "cuda"
        self.step, self.compiled = decode_step, compile
        # eager on GPU attends up to the furthest running row; compiled keeps one shape; on CPU a
        # shorter window is a strided view, which batched matmuls read at ~60% of a contiguous one's speed
        self.trim = not compile and self.device.type != "cpu"
        if compile:
            self.step = torch.compile(decode_step, mode="reduce-overhead" if cuda else None, dynamic=True)
        self.spare = []  # cache storage of retired lanes, reused: fresh memory costs a page fault per 4 KiB
        self.lanes = [self.new_lane(batch_size, caps[0])] + [None] * (len(caps) - 1)

    def allocated(self):
        return (sum(lane.nbytes() for lane in self.lanes if lane is not None)
                + sum(t.numel() * t.element_size() for t in self.spare))

    def new_lane(self, slots, capacity):
        """An empty lane, its cache in the smallest spare storage that holds it without wasting half;
        when none does, the spares are freed first. The cache is not cleared: a slot's positions
        are written or zeroed when a row enters it (so memory is touched as rows need it)."""
        need = slots * (capacity + 1) * values_per_token(self.model.cfg)
        fits = [i for i, t in enumerate(self.spare) if need <= t.numel() <= 2 * need]
        if fits:
            storage = self.spare.pop(min(fits, key=lambda i: self.spare[i].numel()))
        else:
            self.spare = []
            storage = new_storage(need, self.dtype, self.device)
        return self.prepare(Lane(self.model, slots, capacity, self.dtype, storage))

    def retire(self, lane):
        self.spare.append(lane.cache.storage)

    def resize(self, lane, slots):
        new = self.new_lane(slots, lane.capacity)
        lane.move_into(new)
        self.retire(lane)
        return new

    def occupied(self):
        return sum(lane.n for lane in self.lanes if lane is not None)

    def prepare(self, lane):
        if self.step is not decode_step and self.device.type == "cuda":  # CUDA graphs need fixed addresses
            for t in (lane.cache.k, lane.cache.v, *lane.tensors()[1:]):
                torch._dynamo.mark_static_address(t)
        return lane

    def run(self, steps):
        """`steps` decode steps of every lane with running rows."""
        busy = [lane for lane in self.lanes if lane is not None and lane.running]
        rows = [lane.slots if self.compiled else lane.n for lane in busy]  # compiled: one shape
        views = [lane.view(b) for lane, b in zip(busy, rows)]
        noise = [None] * len(busy)
        if self.temperature > 0:  # a running row feeds positions pos, pos + 1, ...: all its noise at once
            for k, (lane, b) in enumerate(zip(busy, rows)):  # (hashed outside the compiled step: inductor
                at = lane.pos[:b, None] + torch.arange(steps, device=self.device)  # 2.13 miscompiles it on CPU)
                noise[k] = gumbel(lane.key[:b, None], at, self.model.cfg.vocab_size)  # (b, steps, V)
        self.slot_steps += steps * sum(rows)
        with self.autocast:
            for j in range(steps):
                for lane, (cache, seq, pos, stop, live, eos), z in zip(busy, views, noise):
                    if self.trim:  # attend only up to the furthest running row
                        cache.window = min(lane.capacity + 1, -(-(lane.high + j + 1) // 32) * 32)
                    self.step(self.model, cache, seq, pos, stop, live, eos, None if z is None else z[:, j],
                              self.temperature)

    def collect(self):
        """Finished rows as [(row, ids, eos)], freeing their slots; full rows move up a lane."""
        finished = []
        for i in range(len(self.lanes) - 1, -1, -1):  # top lane first: it frees room for the one below
            lane = self.lanes[i]
            if lane is None:
                continue
            n = lane.n
            state = torch.stack([lane.live[:n].long(), lane.eos[:n].long(), lane.pos[:n]]).cpu().numpy()  # the one sync
            live, eos, pos = state[0].astype(bool), state[1].astype(bool), state[2]
            used = lane.row[:n] >= 0
            done = np.flatnonzero(used & ~live)
            if len(done):
                seqs = lane.seq[torch.as_tensor(done, device=self.device)].cpu().numpy()
                for k, s in enumerate(done):
                    finished.append((int(lane.row[s]), seqs[k, lane.start[s]:pos[s] + 1].astype(dataset.DTYPE),
                                     bool(eos[s])))
                lane.row[done] = -1
            # rows that would fill the lane before the next collection move up now, so none idles
            full = np.flatnonzero(used & live & (pos + self.every >= lane.capacity)) if i + 1 < len(self.lanes) else []
            if len(full):
                self.move_up(i, full)
            running = (lane.row[:n] >= 0) & live & (pos < lane.capacity)
            lane.running, lane.high = bool(running.any()), int(pos[running].max(initial=0))
            lane.compact(int(pos.max(initial=0)) + 1)
        return finished

    def move_up(self, i, full):
        """Move rows of lane i into lane i + 1, growing it while the budget allows; rows that find
        no room stay (and wait, once full)."""
        lane, up = self.lanes[i], self.lanes[i + 1]
        want = len(full) + (0 if up is None else up.n)
        size = 0 if up is None else up.slots
        new = size
        while new < min(want, self.batch_size):
            new = max(1, 2 * new)
        new = min(new, self.batch_size)
        extra = (new - size) * (self.caps[i + 1] + 1) * bytes_per_token(self.model.cfg, self.dtype)
        if new > size and (size == 0 or self.allocated() + extra <= self.memory):
            up = self.new_lane(new, self.caps[i + 1]) if up is None else self.resize(up, new)
            self.lanes[i + 1] = up
        dst = up.free()[:len(full)] if up is not None else []
        if not len(dst):
            return  # no room above: these rows wait, full
        src = full[:len(dst)]
        s, d = (torch.as_tensor(x, device=self.device) for x in (src, dst))
        n = lane.capacity
        up.cache.k[:, d, :, :n] = lane.cache.k[:, s, :, :n]
        up.cache.v[:, d, :, :n] = lane.cache.v[:, s, :, :n]
        up.cache.k[:, d, :, n:] = 0  # masked positions must hold finite numbers
        up.cache.v[:, d, :, n:] = 0
        up.seq[d, :n + 1] = lane.seq[s, :n + 1]
        for name in ("pos", "stop", "key", "live", "eos"):
            getattr(up, name)[d] = getattr(lane, name)[s]
        lane.live[s] = False
        up.row[dst], up.start[dst] = lane.row[src], lane.start[src]
        up.n += len(dst)
        lane.row[src] = -1
        up.running, up.high = True, max(up.high, lane.capacity)

    def admit(self, prompts, src, keys, rows, max_tokens, seed):
        """Rows join the first lane: one prefill per distinct prompt, copied into their slots."""
        lane = self.lanes[0]
        slots = lane.free()[:len(rows)]
        by_prompt = collections.defaultdict(list)
        for r, s in zip(rows, slots):
            by_prompt[src[r]].append((r, s))
        order = sorted(by_prompt, key=lambda p: len(prompts[p]))  # similar lengths share a prefill
        for first in range(0, len(order), PREFILL_PROMPTS):
            chunk = order[first:first + PREFILL_PROMPTS]
            P = max(len(prompts[p]) for p in chunk) - 1  # the last prompt token is the first decode step's input
            pairs = [(u, r, s) for u, p in enumerate(chunk) for r, s in by_prompt[p]]
            d = torch.as_tensor([s for _, _, s in pairs], device=self.device)
            if P > 0:
                idx = torch.full((len(chunk), P), dataset.PAD, dtype=torch.long)  # right-padded: causal, so harmless
                for u, p in enumerate(chunk):
                    idx[u, :len(prompts[p]) - 1] = torch.as_tensor(np.asarray(prompts[p][:-1], np.int64))
                pre = self.model.new_cache(len(chunk), P, self.dtype)
                with self.autocast:
                    self.model(idx.to(self.device), cache=pre, keep=torch.zeros(1, dtype=torch.long, device=self.device))
                u = torch.as_tensor([u for u, _, _ in pairs], device=self.device)
                lane.cache.k[:, d, :, :P] = pre.k[:, u]
                lane.cache.v[:, d, :, :P] = pre.v[:, u]
            lane.cache.k[:, d, :, P:] = 0  # masked positions must hold finite numbers
            lane.cache.v[:, d, :, P:] = 0
            seq = torch.zeros(len(pairs), lane.capacity + 2, dtype=torch.long)
            for k, (_, r, _) in enumerate(pairs):
                seq[k, :len(prompts[src[r]])] = torch.as_tensor(np.asarray(prompts[src[r]], np.int64))
            lens = torch.as_tensor([len(prompts[src[r]]) for _, r, _ in pairs])
            lane.seq[d] = seq.to(self.device)
            lane.pos[d] = (lens - 1).to(self.device)
            lane.stop[d] = (lens - 1 + max_tokens).to(self.device)
            key = torch.as_tensor([keys[r] for _, r, _ in pairs], dtype=torch.long, device=self.device)
            lane.key[d] = mix(key ^ mix(torch.full_like(key, seed)))
            lane.live[d], lane.eos[d] = True, False
            for (_, r, s), n in zip(pairs, lens.tolist()):
                lane.row[s], lane.start[s] = r, n
            lane.high = max(lane.high, int(lens.max()) - 1)
        lane.n += len(slots)
        lane.running = True


@torch.no_grad()
def generate(model, prompts, src, max_tokens, temperature=0.0, seed=0, keys=None, batch_size=64, memory=None,
             autocast=None, cache_dtype=None, compile=False, every=8):
    """Yield (i, ids, eos) as row i finishes (see the module's docstring). keys: an int per row
    that, with seed, fixes its random stream (default: i); batch_size: slots of the first lane,
    kept full while rows wait (rows that outgrow it move to larger lanes of up to as many slots);
    memory: bytes the larger lanes may grow to (default half the free memory); every: decode steps
    between collections of finished rows."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not len(src):
        return
    keys = list(range(len(src))) if keys is None else keys
    eng = Engine(model, max(len(prompts[s]) for s in set(src)), max_tokens, temperature, batch_size, memory,
                 autocast, cache_dtype, compile, every)
    waiting = collections.deque(range(len(src)))
    while True:
        yield from eng.collect()
        room = min(len(eng.lanes[0].free()), len(waiting))
        if room > 0:
            eng.admit(prompts, src, keys, [waiting.popleft() for _ in range(room)], max_tokens, seed)
        if not waiting and not eng.occupied():
            return
        eng.run(every)
