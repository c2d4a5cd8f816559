"""Training batches: sequences over a split's tokens, each epoch's length-bucketed global batches, and
the per-step stream of them (Batcher, checkpointed by position) collated ahead in a thread (Prefetcher)."""
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from dataset import BOS, DTYPE, EOS, PAD, PARTS, SEP


@dataclass
class Sequences:
    """Training sequences `<bos> prompt <sep> [trace] plan <eos>` over a split's token arrays; for an
    encoder-decoder (encdec) the prompt `<bos> prompt <eos>` and the response `<bos> [trace] plan <eos>`
    (the reference's layout), the same tokens carrying a loss.

    No token is copied: each batch is assembled from the split's parts (memory-mapped when they come
    from the cache, so ranks on one machine share one copy), and building is bookkeeping on (N,)
    arrays, milliseconds for a million sequences."""
    flat: dict  # part -> the split's concatenated uint16 tokens
    starts: dict  # part -> (N,) int64 start of each sequence's part in flat[part]
    part_len: dict  # part -> (N,) int64 tokens of each part (trace all 0 when plan-only)
    lengths: np.ndarray  # (N,) tokens of each whole sequence
    prompt_len: np.ndarray  # (N,) tokens up to and including <sep>: these carry no loss
    trace_len: np.ndarray  # (N,) 0 when plan-only
    encdec: bool = False

    @classmethod
    def build(cls, data, rows, plan_only, arch="decoder"):
        rows = np.asarray(rows, np.int64)
        starts = {p: data.offsets(p)[rows] for p in PARTS}
        lens = {p: np.zeros(len(rows), np.int64) if plan_only and p == "trace" else data.lens[p][rows].astype(np.int64)
                for p in PARTS}
        total = lens["prompt"] + lens["trace"] + lens["plan"] + 3
        return cls(data.flat, starts, lens, total, lens["prompt"] + 2, lens["trace"], arch == "encdec")

    def __len__(self):
        return len(self.lengths)

    @property
    def bucket_lengths(self):
        """What the length buckets pad: the sequences' (N,), or an encoder-decoder's prompts and
        responses, padded each on its own (N, 2)."""
        if not self.encdec:
            return self.lengths
        return np.stack([self.prompt_len, self.lengths - self.prompt_len], 1)

    def tokens(self, r):
        """Sequence r as one uint16 array."""
        pieces = [self.flat[p][self.starts[p][r]:self.starts[p][r] + self.part_len[p][r]] for p in PARTS]
        return np.concatenate([[BOS], pieces[0], [SEP], *pieces[1:], [EOS]]).astype(DTYPE)

    def collate(self, rows, multiple=1):
        """Right-padded inputs, targets (-1 = no loss) and a plan mask, each (B, T) int64 / bool, where
        T is the longest sequence less one, rounded up to `multiple` (fewer shapes for compiled code).
        An encoder-decoder's inputs are (response inputs (B, T), prompts (B, S), prompt mask (B, S)),
        S and T each rounded up."""
        rows = np.asarray(rows)
        if self.encdec:
            return self.collate_encdec(rows, multiple)
        n = self.lengths[rows] - 1  # (B,) inputs per row: the last token is only a target
        T = -(-int(n.max()) // multiple) * multiple
        seq = np.full((len(rows), T + 1), PAD, np.int64)
        for i, r in enumerate(rows):
            seq[i, :n[i] + 1] = self.tokens(r)
        col = np.arange(T)
        p = self.prompt_len[rows, None]  # (B, 1)
        loss = (col >= p - 1) & (col < n[:, None])  # position t predicts token t+1; the prompt carries no loss
        x = np.where(col < n[:, None], seq[:, :-1], PAD)  # (B, T)
        y = np.where(loss, seq[:, 1:], -1)  # (B, T)
        plan = loss & (col >= p - 1 + self.trace_len[rows, None])  # (B, T)
        return x, y, plan

    def collate_encdec(self, rows, multiple):
        p = self.prompt_len[rows]  # (B,) `<bos> prompt <eos>`
        n = self.lengths[rows] - p  # (B,) response inputs `<bos> [trace] plan`, as many targets
        S, T = (-(-int(m.max()) // multiple) * multiple for m in (p, n))
        src, resp = np.full((len(rows), S), PAD, np.int64), np.full((len(rows), T + 1), PAD, np.int64)
        for i, r in enumerate(rows):
            seq = self.tokens(r)  # `<bos> prompt <sep> [trace] plan <eos>`
            src[i, :p[i]] = seq[:p[i]]
            src[i, p[i] - 1] = EOS
            resp[i, 0], resp[i, 1:n[i] + 1] = BOS, seq[p[i]:]
        col = np.arange(T)
        loss = col < n[:, None]  # (B, T)
        x = np.where(loss, resp[:, :-1], PAD)
        y = np.where(loss, resp[:, 1:], -1)
        plan = loss & (col >= self.trace_len[rows, None])
        return (x, src, src != PAD), y, plan


def epoch_batches(lengths, seed, epoch, rows, world, token_budget=0, window=64):
    """One epoch's global batches: a seeded shuffle, then sorting inside windows of similar size so
    that each batch holds sequences of similar length (little padding), then a shuffled batch order.

    A batch holds `rows * world` sequences, or with a token budget as many as keep every rank's
    padded tokens (rows x longest) within it, a multiple of `world` and never fewer. With a budget a
    window holds about `window` batches whatever the lengths. Each batch is an array of indices,
    shortest first. A window's last sequences form a shorter batch; only the fewer than `world`
    left after it (too few to give every rank one) are skipped.

    lengths (N, 2): two parts padded each on its own (an encoder-decoder's prompt and response): sorted
    by their sum, a rank's padded tokens are rows x (longest first part + longest second part)."""
    parts = lengths if lengths.ndim == 2 else lengths[:, None]  # (N, k)
    lengths = parts.sum(1)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    size = rows * world
    span = size * window  # sequences sorted together
    if token_budget and len(lengths):  # about `window` batches of the budget, whatever the lengths
        span = max(span, int(window * world * token_budget / max(1.0, float(np.mean(lengths)))))
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        if not token_budget:
            batches += [chunk[i:i + size] for i in range(0, len(chunk) - world + 1, size)]
            continue
        cols = parts[chunk].T.tolist()  # python ints: this loop sees every sequence
        i = 0
        while i + world <= len(chunk):
            j = i + world  # grow while each rank's share, padded to the longest, fits the budget
            if len(cols) == 1:  # sorted: the last is the longest
                while j < len(chunk) and -(-(j + 1 - i) // world) * cols[0][j] <= token_budget:
                    j += 1
            else:  # the longest of each part so far
                top = [max(c[i:j]) for c in cols]
                while j < len(chunk):
                    grown = [max(t, c[j]) for t, c in zip(top, cols)]
                    if -(-(j + 1 - i) // world) * sum(grown) > token_budget:
                        break
                    top, j = grown, j + 1
            j = i + (j - i) // world * world  # as many rows on every rank: none waits for an extra one
            batches.append(chunk[i:j])
            i = j
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def rank_share(batch, rank, world):
    """A rank's rows of a global batch: strided over the length-sorted batch so shares are balanced."""
    return batch[rank::world]


class Batcher:
    """Deterministic stream of global batches, one per optimizer step, each of
    batch_size x world x grad_accum sequences (or the token budget's equivalent); its position
    (epoch, batch) is checkpointed.

    Each (micro-step, rank) pair is a share of its own: batches are cut for world x grad_accum
    shares, so every share of every batch holds at least one sequence and fits the token budget
    alone (a sequence longer than the budget still trains, in a share of one); a window's last
    sequences form a shorter batch, and only the fewer than one per share left after it are skipped."""

    def __init__(self, seqs, cfg, world):
        self.seqs, self.cfg, self.world = seqs, cfg, world
        self.shares = world * cfg.grad_accum
        self.epoch, self.index, self._batches = 0, 0, None

    def next(self):
        if self._batches is None:
            cfg = self.cfg
            self._batches = epoch_batches(self.seqs.bucket_lengths, cfg.seed, self.epoch, cfg.batch_size,
                                          self.shares, cfg.batch_tokens)
        if self.index >= len(self._batches):
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
            return self.next()
        self.index += 1
        return self._batches[self.index - 1]

    def micro_batches(self, batch, rank):
        """This rank's rows for each micro-step: strided shares of the length-sorted batch, so every
        micro-step and rank gets a similar mix of lengths, and none is empty."""
        return [rank_share(batch, i * self.world + rank, self.shares) for i in range(self.cfg.grad_accum)]

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, s):
        self.epoch, self.index, self._batches = s["epoch"], s["index"], None


def tensors(arrays, pin=False):
    """collate's arrays (an encoder-decoder's inputs a tuple of them) as tensors, pinned if asked."""
    if isinstance(arrays, tuple):
        return tuple(tensors(a, pin) for a in arrays)
    if isinstance(arrays, list):
        return [tensors(a, pin) for a in arrays]
    t = torch.from_numpy(arrays)
    return t.pin_memory() if pin else t


def to_device(items, device):
    """tensors(...) on the device, the nesting kept (non-blocking from pinned memory)."""
    if isinstance(items, (tuple, list)):
        return type(items)(to_device(t, device) for t in items)
    if not torch.is_tensor(items):
        items = torch.from_numpy(items)
    return items.to(device, non_blocking=True)


class Prefetcher:
    """The Batcher's batches, each step's micro-batches collated one step ahead in a background thread
    (numpy releases the GIL) and pinned on CUDA so that the copy to the device does not block. Same
    batches in the same order as the Batcher alone: results do not change."""

    def __init__(self, batcher, rank, device, multiple=1):
        self.batcher, self.rank, self.device, self.multiple = batcher, rank, device, multiple
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self.state, self.pending = batcher.state_dict(), None

    def _prepare(self):
        batch = self.batcher.next()  # only this thread touches the batcher once prefetching started
        micro = []
        for rows in self.batcher.micro_batches(batch, self.rank):
            x, y, plan = self.batcher.seqs.collate(rows, self.multiple)
            keep = np.flatnonzero(y.ravel() >= 0)  # positions that carry a loss
            micro.append(tensors((x, y, plan, keep), pin=self.device.type == "cuda"))
        return batch, self.batcher.state_dict(), micro

    def next(self):
        """(global batch, [[x, y, plan, keep] on the device for each micro-step of this rank])."""
        if self.pending is None:
            self.pending = self.pool.submit(self._prepare)
        batch, self.state, micro = self.pending.result()
        self.pending = self.pool.submit(self._prepare)  # the next step's, while this one computes
        return batch, [to_device(m, self.device) for m in micro]

    def state_dict(self):
        """The data position after the last batch handed out (not after the one prefetched)."""
        return self.state

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
