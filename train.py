"""Train one run: `train.py single --run-id ID [flags]` or `train.py sweep --run-id ID --index N --sweep F`.

Runs as a plain process or under torchrun (DDP; gloo on CPU, NCCL on GPU). Hyper-parameters, logs
and checkpoints live in MongoDB under the run id; launching an existing id resumes it exactly.
"""
import os
import signal
import sys

import testhook


def die_with_parent():
    """torchrun starts each worker in a session of its own: have the kernel kill a worker when its
    launcher dies, so that killing torchrun (or its process group) leaves no orphan trainer behind.
    Called before the slow imports, and a worker whose launcher died before that exits at once."""
    if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() == 1:  # reparented to init: the launcher is already gone, no signal will come
            os._exit(1)


if __name__ == "__main__":
    testhook.pause("start")
    die_with_parent()

import argparse
import contextlib
import dataclasses
import json
import math
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import store
from model import SIZES, ModelConfig, Transformer
from store import StoreError


def shown(value):
    """repr(value), cut short: error messages stay one short line whatever the input."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


@dataclass
class TrainConfig:
    train_name: str = "maze.10-by-10-deterministic.simple"
    test_name: str = ""  # empty: same as train_name
    model_size: str = "s"
    plan_only: bool = False  # train on prompt then plan, without the trace
    batch_size: int = 8  # sequences per process per micro-step (global = batch x world size)
    batch_tokens: int = 0  # > 0: instead, as many sequences as fit this many padded tokens per process
    grad_accum: int = 1
    lr: float = 2.5e-4
    lr_schedule: str = "cosine"  # or "constant"
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.1  # cosine ends at this fraction of lr
    weight_decay: float = 0.01
    decay_params: str = "all"  # AdamW decay on every parameter (the reference), or "matrices": not on norm weights
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping (the reference)
    loss_norm: str = "sequence"  # mean over sequences of each one's mean token loss (the reference), or "token":
    # the mean over every loss token of the global batch (long traces weigh more)
    train_steps: int = 400000
    log_interval: int = 1000
    eval_interval: int = 40000
    checkpoint_interval: int = 1000
    num_train_sequences: int = 0  # 0: all
    num_test_sequences: int = 1000
    min_reasoning_len: int = 0
    max_reasoning_len: int = 0  # 0: no bound
    start_checkpoint: str = ""  # run id whose checkpoint initialises this run (step starts at 0)
    start_optimizer: bool = True  # with start_checkpoint: its AdamW state too (the reference); false: weights only
    seed: int = 0
    eval_tasks: int = 0  # > 0: greedy rollouts on this many test tasks at each eval (rollout_* in the test log)

    @classmethod
    def from_dict(cls, d):
        known = {f.name: f for f in fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"unknown hyper-parameter {shown(key)}")
        for key, value in d.items():
            want = known[key].type
            ok = isinstance(value, bool) if want is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
                isinstance(value, want) and not isinstance(value, bool))
            if not ok:
                raise ValueError(f"hyper-parameter {key!r} must be {want.__name__}, got {shown(value)}")
            if want is float and isinstance(value, int) and abs(value) > 2**63:
                raise ValueError(f"hyper-parameter {key!r} is out of range, got {shown(value)}")
        cfg = cls(**{k: float(v) if known[k].type is float else v for k, v in d.items()})
        cfg.validate()
        return cfg

    def validate(self):
        for f in fields(self):  # what JSON, the command line or BSON cannot carry faithfully
            v = getattr(self, f.name)
            if f.type is float and not math.isfinite(v) or f.type is int and not -2**63 <= v < 2**63:
                raise ValueError(f"hyper-parameter {f.name!r} is out of range, got {shown(v)}")
        positive = ["batch_size", "grad_accum", "train_steps", "log_interval", "eval_interval",
                    "checkpoint_interval", "num_test_sequences"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"hyper-parameter {key!r} must be positive, got {getattr(self, key)}")
        for key in ["batch_tokens", "warmup_steps", "num_train_sequences", "min_reasoning_len",
                    "max_reasoning_len", "seed", "weight_decay", "grad_clip", "eval_tasks"]:
            if getattr(self, key) < 0:
                raise ValueError(f"hyper-parameter {key!r} must not be negative, got {getattr(self, key)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and betas in [0, 1)")
        if self.model_size not in SIZES:
            raise ValueError(f"hyper-parameter 'model_size' must be one of {', '.join(SIZES)}, got {self.model_size!r}")
        for key, allowed in (("lr_schedule", ("cosine", "constant")), ("loss_norm", ("sequence", "token")),
                             ("decay_params", ("all", "matrices"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"hyper-parameter {key!r} must be {' or '.join(allowed)}, got {getattr(self, key)!r}")
        store.check_name(self.train_name, "dataset name")
        for key in ("test_name", "start_checkpoint"):
            if getattr(self, key):
                store.check_name(getattr(self, key), key)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_stored(cls, d):
        """A stored config: one written before a key existed trained as that key's old value says."""
        return cls.from_dict({**{k: v for k, v in LEGACY.items() if k in ADDED}, **d})

    def lr_at(self, step):
        """Linear warm-up, then cosine decay to min_lr_ratio x lr at train_steps (or constant)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        t = min(1.0, (step - self.warmup_steps) / max(1, self.train_steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# the defaults before the reference's training rules became the defaults; ADDED: the keys that came with
# them, so a stored config without them was made under the old defaults
LEGACY = {"loss_norm": "token", "decay_params": "matrices", "start_optimizer": False, "grad_clip": 1.0}
ADDED = ("loss_norm", "decay_params", "start_optimizer")


# ---------------------------------------------------------------------------------------------
# distributed helpers


def print0(*args, **kwargs):
    """All rank-0-only output goes through here."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def all_sum(t):
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_obj(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Lease(threading.Thread):
    """Renews rank 0's hold on the run id; a crashed holder's lease simply expires."""

    def __init__(self, st, run_id, owner, seconds):
        super().__init__(daemon=True)
        self.st, self.run_id, self.owner, self.seconds = st, run_id, owner, seconds
        self.stopped, self.lost = threading.Event(), False

    def run(self):
        while not self.stopped.wait(self.seconds / 3):
            try:
                if not self.st.acquire_lease(self.run_id, self.owner, self.seconds):
                    self.lost = True
                    return
            except Exception:
                pass  # database away: keep training, retry on the next beat

    def stop(self):
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.st.release_lease(self.run_id, self.owner)


# ---------------------------------------------------------------------------------------------
# training


class Batcher:
    """Deterministic stream of global batches, one per optimizer step, each of
    batch_size x world x grad_accum sequences (or the token budget's equivalent); its position
    (epoch, batch) is checkpointed.

    Each (micro-step, rank) pair is a share of its own: batches are cut for world x grad_accum
    shares, so every share of every batch holds at least one sequence and fits the token budget
    alone (a sequence longer than the budget still trains, in a share of one); an epoch's last
    sequences that cannot give every share one are skipped."""

    def __init__(self, seqs, cfg, world):
        self.seqs, self.cfg, self.world = seqs, cfg, world
        self.shares = world * cfg.grad_accum
        self.epoch, self.index, self._batches = 0, 0, None

    def next(self):
        if self._batches is None:
            c = self.cfg
            self._batches = data.epoch_batches(self.seqs.lengths, c.seed, self.epoch, c.batch_size, self.shares,
                                               c.batch_tokens)
        if self.index >= len(self._batches):
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
            return self.next()
        self.index += 1
        return self._batches[self.index - 1]

    def micro_batches(self, batch, rank):
        """This rank's rows for each micro-step: strided shares of the length-sorted batch, so every
        micro-step and rank gets a similar mix of lengths, and none is empty."""
        return [data.rank_share(batch, i * self.world + rank, self.shares) for i in range(self.cfg.grad_accum)]

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, s):
        self.epoch, self.index, self._batches = s["epoch"], s["index"], None


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
            tensors = [torch.from_numpy(a) for a in (x, y, plan, keep)]
            micro.append([t.pin_memory() for t in tensors] if self.device.type == "cuda" else tensors)
        return batch, self.batcher.state_dict(), micro

    def next(self):
        """(global batch, [[x, y, plan, keep] on the device for each micro-step of this rank])."""
        if self.pending is None:
            self.pending = self.pool.submit(self._prepare)
        batch, self.state, micro = self.pending.result()
        self.pending = self.pool.submit(self._prepare)  # the next step's, while this one computes
        return batch, [[t.to(self.device, non_blocking=True) for t in m] for m in micro]

    def state_dict(self):
        """The data position after the last batch handed out (not after the one prefetched)."""
        return self.state

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


STATS = 10  # length of the stats vector of loss_terms


def loss_terms(model, x, y, plan, autocast, keep=None, loss_norm="token"):
    """Summed losses and counts for one micro-batch: the loss to scale and backpropagate, and the stats
    [trace loss, trace n, plan loss, plan n, correct tokens, sequences, sequences with a trace,
    exact traces, exact plans, exact responses] (exact: every token's argmax right; the plan part
    ends with <eos>).

    loss_norm "token": the summed token losses; "sequence": the sum over sequences of each one's mean
    token loss. Logits are made only where a loss is taken (keep: flat indices of y >= 0, found here
    when not given): the prompt and the padding never reach the vocabulary projection."""
    B, T = y.shape
    per_row = (y >= 0).sum(1)  # (B,) loss tokens of each sequence
    y, plan = y.flatten(), plan.flatten()
    if keep is None:
        keep = torch.nonzero(y >= 0).squeeze(1)
    y, plan, row = y[keep], plan[keep], keep // T  # (N,)
    with autocast:
        logits = model(x, keep=keep)  # (N, V)
    ce = F.cross_entropy(logits.float(), y, reduction="none")  # (N,)
    correct = logits.argmax(-1) == y
    loss = ce.sum() if loss_norm == "token" else (ce / per_row.clamp(min=1)[row]).sum()
    # masked sums and per-row counts rather than boolean indexing: no device sync
    wrong = torch.zeros(2, B, device=ce.device).index_put_((plan.long(), row), (~correct).float(), accumulate=True)
    trace_n = torch.zeros(B, device=ce.device).index_add_(0, row, (~plan).float())  # (B,)
    has_trace = trace_n > 0
    stats = torch.stack([torch.where(plan, 0, ce).sum(), (~plan).sum(), torch.where(plan, ce, 0).sum(), plan.sum(),
                         correct.sum(), torch.tensor(B, device=ce.device), has_trace.sum(),
                         (has_trace & (wrong[0] == 0)).sum(), (wrong[1] == 0).sum(), (wrong.sum(0) == 0).sum()]
                        ).detach()
    return loss, stats


def summarize(stats):
    """loss_terms' stats, summed -> metrics. Losses and accuracy are token means; *_exact are the
    fractions of sequences predicted exactly (trace_exact of those with a trace; absent without)."""
    tl, tn, pl, pn, c, seqs, tseqs, te, pe, re_ = stats.tolist()
    n = max(tn + pn, 1)
    m = {"loss": (tl + pl) / n, "trace_loss": tl / max(tn, 1), "plan_loss": pl / max(pn, 1),
         "accuracy": c / n, "tokens": int(tn + pn), "sequences": int(seqs),
         "plan_exact": pe / max(seqs, 1), "response_exact": re_ / max(seqs, 1)}
    if tseqs:
        m["trace_exact"] = te / tseqs
    return m


def loss_denominator(cfg, seqs, batch):
    """What the summed loss_terms losses of a global batch are divided by: its sequences (each counted
    with its own token mean) or its loss tokens. It depends on the whole global batch only, so every
    rank and micro-step scales alike and any split gives the same gradient."""
    if cfg.loss_norm == "sequence":
        return len(batch)
    return int((seqs.lengths[batch] - seqs.prompt_len[batch]).sum())


@torch.no_grad()
def evaluate(model, seqs, rank, world, device, autocast, rows=16):
    """Test loss, token accuracy and exact sequences over all of seqs, each rank taking a share,
    reduced over ranks."""
    model.eval()
    order = np.argsort(seqs.lengths, kind="stable")[rank::world]
    stats = torch.zeros(STATS, dtype=torch.float64, device=device)
    for i in range(0, len(order), rows):
        x, y, plan = (torch.from_numpy(a).to(device) for a in seqs.collate(order[i:i + rows]))
        stats += loss_terms(model, x, y, plan, autocast)[1]
    model.train()
    return summarize(all_sum(stats))


def autocast_for(device, precision):
    """bf16 autocast on GPU (tensor cores, flash attention), on CPU when asked (faster on AMX CPUs)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def wrap_ddp(model, device, grad_accum):
    """Gradients as views into the all-reduce buckets (no copy); a static graph (every step runs the
    same one) except with accumulation, whose no_sync() a static graph does not support."""
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
               bucket_cap_mb=64, static_graph=grad_accum == 1)


def make_optimizer(model, cfg, device):
    """AdamW over two groups, matrices then the rest (norm weights), whatever decays: every checkpoint's
    optimizer state has one layout, so a run can start from any other's state."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    rest_decay = cfg.weight_decay if cfg.decay_params == "all" else 0.0
    return torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": rest_decay}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def start_from(model, opt, init, cfg):
    """Initialise a new run from another run's checkpoint: its weights and, with start_optimizer, its
    AdamW moments and per-parameter step counts (the reference's fine-tuning). Hyper-parameters (lr,
    betas, decay) stay this run's, and its step counter and LR schedule start at 0."""
    why = lambda e: (str(e).splitlines() or [type(e).__name__])[0][:120]
    try:
        model.load_state_dict(init["model"])
    except (RuntimeError, KeyError) as e:
        raise StoreError(f"start_checkpoint run {cfg.start_checkpoint!r} has another model ({why(e)})") from None
    if cfg.start_optimizer:
        mine = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        try:
            opt.load_state_dict(init["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise StoreError(f"start_checkpoint run {cfg.start_checkpoint!r}: its optimizer state does not fit "
                             f"({why(e)}); start_optimizer=false takes the weights only") from None
        for g, m in zip(opt.param_groups, mine):
            g.update(m)


def load_data(st, cfg, use_cache):
    test_name = cfg.test_name or cfg.train_name
    train_doc, test_doc = data.get_dataset(st.db, cfg.train_name), data.get_dataset(st.db, test_name)
    if train_doc["vocabulary"] != test_doc["vocabulary"]:
        raise StoreError(f"datasets {cfg.train_name!r} and {test_name!r} have different vocabularies")
    max_len = cfg.max_reasoning_len or None
    seqs = {}
    for split, name, limit in (("train", cfg.train_name, cfg.num_train_sequences), ("test", test_name, cfg.num_test_sequences)):
        part = data.load_split(st.db, name, split, use_cache)
        rows = data.filter_split(part, cfg.min_reasoning_len, max_len, limit or None)
        seqs[split] = data.Sequences.build(part, rows, cfg.plan_only)
    return train_doc["vocabulary"], seqs["train"], seqs["test"]


def build(cfg, vocab_size, device):
    """A run's model, optimizer and LR schedule, fresh: what a checkpoint's states are loaded into."""
    torch.manual_seed(cfg.seed)
    model = Transformer(ModelConfig.from_size(cfg.model_size, vocab_size)).to(device)
    opt = make_optimizer(model, cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_at(s) / cfg.lr)
    return model, opt, sched


def restore(ck, model, opt, sched, batcher, acc):
    """Load a checkpoint's training state into these objects, as a resume does, checking every part
    it reads; ValueError (one line) when one is missing or does not fit. Returns (step, log sums)."""
    try:
        step = ck["step"]
        if type(step) is not int or step < 0:
            raise ValueError(f"step must be a non-negative int, got {shown(step)}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for p, state in opt.state.items():  # load_state_dict checks group sizes, not the tensors' shapes
            for key, t in state.items():
                if key != "step" and (not torch.is_tensor(t) or t.shape != p.shape):
                    raise ValueError(f"optimizer state {key!r} does not fit a parameter of shape {tuple(p.shape)}")
        sc = ck["scheduler"]
        if not isinstance(sc, dict) or sc.get("last_epoch") != step or len(sc.get("base_lrs", ())) != len(opt.param_groups):
            raise ValueError("the LR scheduler state does not match the step and the optimizer")
        sched.load_state_dict(sc)
        pos = ck["data"]
        if not isinstance(pos, dict) or sorted(pos) != ["epoch", "index"] or \
                not all(type(v) is int and 0 <= v < 2**62 for v in pos.values()):
            raise ValueError(f"malformed data position {shown(pos)}")
        batcher.load_state_dict(pos)
        rng = ck["rng"]["cpu"]
        torch.Generator().set_state(rng)  # raises on anything that is not a CPU generator state
        log_acc = ck["log_acc"]
        if torch.is_tensor(log_acc) and log_acc.shape == (5,):  # from before the exact-sequence counts
            log_acc = F.pad(log_acc, (0, len(acc) - 5))
        if not torch.is_tensor(log_acc) or log_acc.dtype != acc.dtype or log_acc.shape != acc.shape:
            raise ValueError(f"log_acc must be a {acc.dtype} tensor of shape {tuple(acc.shape)}")
    except KeyError as e:
        raise ValueError(f"missing {e}") from None
    except (TypeError, RuntimeError, IndexError) as e:
        raise ValueError((str(e).strip().splitlines() or [type(e).__name__])[0][:200]) from None
    return step, rng, log_acc


def check_resumable(ck):
    """Raise ValueError (one line) unless a training run can resume from this checkpoint dict."""
    cfg = TrainConfig.from_stored(ck["config"])
    vocab = ck["vocabulary"]
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError("vocabulary must be a list of token strings")
    model, opt, sched = build(cfg, len(vocab), torch.device("cpu"))
    if ck["model_config"] != model.cfg.to_dict():
        raise ValueError(f"model_config does not match model size {cfg.model_size!r} with {len(vocab)} tokens")
    if "world_size" in ck and (type(ck["world_size"]) is not int or ck["world_size"] < 1):
        raise ValueError(f"bad world_size {shown(ck['world_size'])}")
    restore(ck, model, opt, sched, Batcher(None, cfg, ck.get("world_size", 1)), torch.zeros(STATS, dtype=torch.float64))


def check_inputs(st, cfg, run_id):
    """What a launch can check before it creates or re-opens the run, so that bad input changes
    nothing: the datasets, and the start checkpoint when it will be used (returned, loaded)."""
    test_name = cfg.test_name or cfg.train_name
    vocab = data.get_dataset(st.db, cfg.train_name)["vocabulary"]
    if data.get_dataset(st.db, test_name)["vocabulary"] != vocab:
        raise StoreError(f"datasets {cfg.train_name!r} and {test_name!r} have different vocabularies")
    if not cfg.start_checkpoint or (st.get_run(run_id) or {}).get("checkpoint"):
        return None  # a new run, or one that resumes from its own checkpoint
    init = st.load_checkpoint(cfg.start_checkpoint)  # raises for a run that does not exist
    if init is None:
        raise StoreError(f"start_checkpoint run {cfg.start_checkpoint!r} has no checkpoint yet")
    check_vocabulary(init, vocab, f"start_checkpoint run {cfg.start_checkpoint!r}", cfg.train_name)
    if init.get("model_config") != ModelConfig.from_size(cfg.model_size, len(vocab)).to_dict():
        raise StoreError(f"start_checkpoint run {cfg.start_checkpoint!r} has another model than model_size "
                         f"{cfg.model_size!r}; give the size it was trained with")
    return init


def check_vocabulary(ck, vocab, what, dataset):
    if ck.get("vocabulary") != vocab:
        theirs = ck.get("vocabulary") or []
        diff = next((i for i, (a, b) in enumerate(zip(theirs, vocab)) if a != b), min(len(theirs), len(vocab)))
        raise StoreError(f"{what} was trained on another vocabulary than dataset {dataset!r} ({len(theirs)} vs "
                         f"{len(vocab)} tokens, first difference at id {diff}); train on a dataset with its vocabulary")


def device_sync(device):
    """Wait for the device's queued work: on a GPU the host runs ahead, and a time taken without this
    is the time to enqueue the work, not to do it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eta_seconds(cfg, step, step_s, eval_s, checkpoint_s):
    """Time left after the log at `step`: the remaining steps at step_s each, plus every evaluation and
    checkpoint still due (this step's and the final ones included) at their last measured durations."""
    def due(interval):  # multiples of interval in [step, train_steps], and train_steps itself
        return cfg.train_steps // interval - (step - 1) // interval + (cfg.train_steps % interval != 0)
    return (cfg.train_steps - step) * step_s + due(cfg.eval_interval) * eval_s + due(cfg.checkpoint_interval) * checkpoint_s


def train(cfg, run_id, rt, st, rank, world, device, init=None):
    # one process per machine reads MongoDB and fills the local cache; the others then read the cache
    first, queue = int(os.environ.get("LOCAL_RANK", 0)) == 0, world > 1 and not rt.no_cache
    if queue and not first:
        dist.barrier()
    vocab, train_seqs, test_seqs = load_data(st, cfg, not rt.no_cache)
    if queue and first:
        dist.barrier()
    batcher = Batcher(train_seqs, cfg, world)
    need = batcher.shares if cfg.batch_tokens else cfg.batch_size * batcher.shares
    if len(train_seqs) < need or len(test_seqs) == 0:
        raise StoreError(f"too few sequences after filtering: {len(train_seqs)} train, {len(test_seqs)} test; "
                         f"need at least {need} train sequences (batch_size x world size x grad_accum)")
    model, opt, sched = build(cfg, len(vocab), device)
    model.activation_checkpointing = rt.activation_checkpointing
    step, acc = 0, torch.zeros(STATS, dtype=torch.float64, device=device)

    ckpt = st.load_checkpoint(run_id)
    if ckpt is not None:
        if ckpt.get("world_size", world) != world:
            raise StoreError(store.world_size_refusal(run_id, ckpt["world_size"], world))
        check_vocabulary(ckpt, vocab, f"the checkpoint of run {run_id!r}", cfg.train_name)
        try:
            step, rng, log_acc = restore(ckpt, model, opt, sched, batcher, acc)
        except ValueError as e:
            raise StoreError(f"the checkpoint of run {run_id!r} cannot be resumed: {e}") from None
        torch.set_rng_state(rng)
        if rank == 0:
            acc = log_acc.to(device)  # other ranks' shares were folded into rank 0's at save time
            st.truncate_logs(run_id, step, owner=rt.owner)
        print0(f"resuming {run_id} from step {step}")
    elif cfg.start_checkpoint:
        init = init or check_inputs(st, cfg, run_id)  # rank 0 loaded and checked it before starting the run
        start_from(model, opt, init, cfg)
        print0(f"initialised from {cfg.start_checkpoint} (step {init['step']}): "
               f"{'weights and optimizer state' if cfg.start_optimizer else 'weights only'}, step reset to 0")
    print0(f"{run_id}: model {cfg.model_size} ({model.num_params() / 1e6:.1f}M params), {len(train_seqs)} train / "
           f"{len(test_seqs)} test sequences, world size {world}, device {device}")

    ddp_model = wrap_ddp(model, device, cfg.grad_accum) if world > 1 else model
    fwd = torch.compile(ddp_model, dynamic=True) if rt.compile else ddp_model
    autocast = autocast_for(device, rt.precision)
    # compiled on GPU: padded lengths rounded up to a multiple of 64, so few shapes ever occur
    prefetch = Prefetcher(batcher, rank, device, 64 if rt.compile and device.type == "cuda" else 1)
    # training time (device work included, evaluations, checkpoints and logging left out) and
    # non-padding tokens since the last log; the last evaluation's and checkpoint's durations
    busy, tokens_since, eval_s, checkpoint_s, logged = 0.0, 0, 0.0, 0.0, step
    t0 = time.perf_counter()
    while step < cfg.train_steps:
        if rt.lease is not None and rt.lease.lost:
            raise StoreError(f"lost the lease on run {run_id!r} to another process")
        batch, micro = prefetch.next()
        total = loss_denominator(cfg, train_seqs, batch)
        for i, (x, y, plan, keep) in enumerate(micro):
            sync = i == len(micro) - 1 or world == 1
            with contextlib.nullcontext() if sync else ddp_model.no_sync():
                loss_sum, stats = loss_terms(fwd, x, y, plan, autocast, keep, cfg.loss_norm)
                (loss_sum * (world / total)).backward()  # DDP averages over ranks; undo that
            acc += stats
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_since += int(train_seqs.lengths[batch].sum())  # non-padding tokens

        if step % cfg.log_interval == 0 or step == cfg.train_steps:
            device_sync(device)
            busy += time.perf_counter() - t0
            metrics = summarize(all_sum(acc))
            acc.zero_()
            metrics.update(lr=lr, tokens_per_s=tokens_since / busy)
            step_s, logged = busy / (step - logged), step
            eta = eta_seconds(cfg, step, step_s, eval_s, checkpoint_s)
            if rank == 0:
                st.log(run_id, step, "train", metrics, owner=rt.owner)
            print0(f"step {step}/{cfg.train_steps} | loss {metrics['loss']:.4f} (trace {metrics['trace_loss']:.4f} "
                   f"plan {metrics['plan_loss']:.4f}) | acc {metrics['accuracy']:.3f} "
                   f"exact {metrics['response_exact']:.3f} | lr {lr:.2e} | "
                   f"{metrics['tokens_per_s']:,.0f} tok/s | ETA {eta / 60:.1f}m")
            busy, tokens_since = 0.0, 0
            t0 = time.perf_counter()
        if step % cfg.eval_interval == 0 or step == cfg.train_steps:
            device_sync(device)
            busy += (t1 := time.perf_counter()) - t0
            metrics = evaluate(model, test_seqs, rank, world, device, autocast)
            if cfg.eval_tasks:
                from eval import rollout_metrics  # imported here: only runs that ask for rollouts need it
                metrics.update({f"rollout_{k}": v for k, v in rollout_metrics(model, st.db, cfg, rank, world, device).items()})
            if rank == 0:
                st.log(run_id, step, "test", metrics, owner=rt.owner)
            rollout = f" | optimal {metrics['rollout_optimal_pct']:.1f}% of {cfg.eval_tasks} tasks" if cfg.eval_tasks else ""
            print0(f"step {step} | test loss {metrics['loss']:.4f} | test acc {metrics['accuracy']:.3f} | exact plan "
                   f"{metrics['plan_exact']:.3f} response {metrics['response_exact']:.3f}{rollout}")
            device_sync(device)
            eval_s = (t0 := time.perf_counter()) - t1
        if step % cfg.checkpoint_interval == 0 or step == cfg.train_steps:
            device_sync(device)
            busy += (t1 := time.perf_counter()) - t0
            all_sum(acc)  # fold every rank's pending log sums into rank 0's, which the checkpoint keeps
            if rank != 0:
                acc.zero_()
            if rank == 0:
                st.save_checkpoint(run_id, step, owner=rt.owner, state={
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "run_id": run_id, "step": step, "data": prefetch.state_dict(), "rng": {"cpu": torch.get_rng_state()},
                    "log_acc": acc.cpu(), "config": cfg.to_dict(), "model_config": model.cfg.to_dict(),
                    "vocabulary": vocab, "world_size": world})
            checkpoint_s = (t0 := time.perf_counter()) - t1
        testhook.pause(f"step-{step}")
    prefetch.close()
    return model


# ---------------------------------------------------------------------------------------------
# command line


def add_config_flags(ap):
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            ap.add_argument(flag, type=f.type, default=None, metavar=f.type.__name__.upper())


def add_runtime_flags(ap):
    ap.add_argument("--run-id", required=True, help="the run's id: launching an existing id resumes it")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved hyper-parameters and exit")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (big models)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast on GPU, fp32 on CPU (bf16 there is faster on CPUs with AMX)")
    ap.add_argument("--no-cache", action="store_true", help="read datasets from MongoDB, not the local cache")
    ap.add_argument("--lease-seconds", type=float, default=60.0, help="how long a dead trainer blocks a relaunch")
    ap.add_argument("--db-retry-seconds", type=float, default=300.0,
                    help="how long to wait for a lost database before failing")


NEGATIVE = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf(inity)?|-nan", re.IGNORECASE)


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "-1e-3" for an option: join a negative number to the flag before it ("--lr=-1e-3")
    for i in range(len(argv) - 1, 0, -1):
        if NEGATIVE.fullmatch(argv[i]) and argv[i - 1].startswith("--") and "=" not in argv[i - 1]:
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    single = sub.add_parser("single", help="one run from flags (defaults as in TrainConfig)")
    add_runtime_flags(single)
    add_config_flags(single)
    sw = sub.add_parser("sweep", help="one entry of a sweep file")
    add_runtime_flags(sw)
    sw.add_argument("--sweep", required=True, help="JSON list of hyper-parameter dicts")
    sw.add_argument("--index", type=int, required=True, help="entry index (e.g. a job array's index)")
    return ap.parse_args(argv)


def resolve_config(args, defaults=None):
    """The config the flags or the sweep entry give; keys they leave out take `defaults`, then TrainConfig's."""
    if args.mode == "sweep":
        import sweep  # imported here: sweep imports this module's TrainConfig
        return sweep.load(args.sweep, args.index, defaults)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:
        return TrainConfig.from_dict({**(defaults or {}), **given})
    except (ValueError, StoreError) as e:
        raise StoreError(str(e)) from None


def settle_legacy(st, args, cfg):
    """A run stored before the reference's training rules became the defaults trained under the old
    ones: a relaunch takes those for what its flags leave out (so the same command resumes it as it
    trained), and its stored config gains the new keys with their old values."""
    doc = st.get_run(args.run_id)
    if doc is None or all(k in doc["config"] for k in ADDED):
        return cfg
    cfg = resolve_config(args, LEGACY)
    missing = [k for k in ADDED if k not in doc["config"]]
    st.runs.update_one({"_id": args.run_id, **{f"config.{k}": {"$exists": False} for k in missing}},
                       {"$set": {f"config.{k}": LEGACY[k] for k in missing}})
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        store.check_name(args.run_id)
    except (StoreError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.dry_run:
        print(json.dumps({"run_id": args.run_id, **cfg.to_dict()}, indent=2))
        return

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # preemption: record the run as failed
    code = 0
    try:
        code = run(cfg, args, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()
    sys.exit(code)


def run(cfg, args, rank, world, device):
    try:
        st = store.connect(retry_s=args.db_retry_seconds)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    err, init = None, None
    if rank == 0:
        try:
            cfg = settle_legacy(st, args, cfg)
            init = check_inputs(st, cfg, args.run_id)  # before the run is created: bad input changes nothing
            st.start_run(args.run_id, cfg.to_dict(), owner, args.lease_seconds, world, socket.gethostname())
        except StoreError as e:
            err = str(e)
    err, stored = broadcast_obj((err, cfg.to_dict()))
    if err:
        print0(f"error: {err}", file=sys.stderr)
        return 1
    cfg = TrainConfig.from_dict(stored)  # every rank trains with rank 0's config
    args.lease = Lease(st, args.run_id, owner, args.lease_seconds) if rank == 0 else None
    args.owner = owner if rank == 0 else None  # rank 0's writes are fenced by its lease
    if args.lease:
        args.lease.start()
    try:
        train(cfg, args.run_id, args, st, rank, world, device, init)
        if rank == 0:
            st.set_status(args.run_id, "finished", owner=owner)
        return 0
    except BaseException as e:
        if rank == 0:
            with contextlib.suppress(Exception), store.bounded(3):  # one short try: the database may be gone
                st.with_retry(0).set_status(args.run_id, "failed", f"{type(e).__name__}: {e}"[:2000], owner=owner)
        if isinstance(e, StoreError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    finally:
        if args.lease:
            with store.bounded(3):
                args.lease.stop()


if __name__ == "__main__":
    main()
