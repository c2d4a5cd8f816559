"""Train one run: `train.py single --run-id ID [flags]` or `train.py sweep --index N --sweep F [--run-id ID]`.

Runs as a plain process or under torchrun (DDP; gloo on CPU, NCCL on GPU). Hyper-parameters, logs
and checkpoints live in MongoDB under the run id; launching an existing id resumes it exactly.
"""
import ctypes
import os
import signal
import sys

import testhook


def die_with_parent(launcher):
    """torchrun starts each worker in a session of its own: have the kernel kill a worker when its
    launcher dies, so that killing torchrun (or its process group) leaves no orphan trainer behind.
    launcher: the parent's pid as the process found it on starting. Called before the slow imports; a
    worker whose parent changed since (the launcher died before the kernel was asked) exits at once. A
    parent of PID 1 is no sign of a lost launcher: torchrun is PID 1 as a container's entrypoint."""
    if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != launcher:  # reparented: the launcher is already gone, no signal will come
            os._exit(1)


if __name__ == "__main__":
    launcher = os.getppid()  # first of all: whatever happens to the launcher later changes it
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped while starting: quietly (main() installs the real handlers)
        signal.signal(sig, lambda *_: sys.exit(130))
    testhook.pause("start")
    die_with_parent(launcher)

import argparse
import contextlib
import json
import re
import time
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import devices
import errors
import sweep
import tasks
from batches import Batcher, Prefetcher, Sequences, tensors, to_device
from checkpoint import build, check_vocabulary, model_config, restore, start_from
from checkpoint_store import load_checkpoint, point_best, read_checkpoint_file, save_checkpoint
from dataset import filter_split, get_dataset, load_split
from errors import CheckpointError, ConfigError, DataError, StoreError
from hparams import ADDED, CHOICES, TrainConfig
from loss import STATS, autocast_for, loss_denominator, loss_terms, summarize
from rollouts import rollout_metrics
from runguard import INTERRUPTED, Interrupted, RunGuard, Signals
from store import check_name, connect, world_size_refusal


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


def any_rank(flag, group=None):
    """True on every rank when flag is on any: one small collective at a step boundary, on the CPU
    (group: a gloo group beside NCCL, so the host does not wait for the device)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def broadcast_obj(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------
# training


@torch.no_grad()
def evaluate(model, seqs, rank, world, device, autocast, rows=16):
    """Test loss, token accuracy and exact sequences over all of seqs, each rank taking a share,
    reduced over ranks."""
    model.eval()
    order = np.argsort(seqs.lengths, kind="stable")[rank::world]
    stats = torch.zeros(STATS, dtype=torch.float64, device=device)
    for i in range(0, len(order), rows):
        x, y, plan = to_device(tensors(seqs.collate(order[i:i + rows])), device)
        stats += loss_terms(model, x, y, plan, autocast)[1]
    model.train()
    return summarize(all_sum(stats))


def wrap_ddp(model, device, grad_accum):
    """Gradients as views into the all-reduce buckets (no copy); a static graph (every step runs the
    same one) except with accumulation, whose no_sync() a static graph does not support."""
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
               bucket_cap_mb=64, static_graph=grad_accum == 1)


def load_data(store, cfg, use_cache):
    test_name = cfg.test_name or cfg.train_name
    train_doc, test_doc = store.call(get_dataset, cfg.train_name), store.call(get_dataset, test_name)
    if train_doc["vocabulary"] != test_doc["vocabulary"]:
        raise DataError(f"datasets {cfg.train_name!r} and {test_name!r} have different vocabularies")
    max_len = cfg.max_reasoning_len or None
    seqs = {}
    for split, name, limit in (("train", cfg.train_name, cfg.num_train_sequences), ("test", test_name, cfg.num_test_sequences)):
        part = store.call(load_split, name, split, use_cache)
        rows = filter_split(part, cfg.min_reasoning_len, max_len, limit or None)
        seqs[split] = Sequences.build(part, rows, cfg.plan_only, cfg.arch)
    # the validation tasks' sequences (the last eval_tasks test tasks, those the rollouts select on): the
    # selection's tie-break loss comes from them, never from the reported tasks at the split's start
    val_rows = np.arange(max(0, len(part.ids) - cfg.eval_tasks), len(part.ids))
    seqs["val"] = Sequences.build(part, val_rows, cfg.plan_only, cfg.arch) if cfg.eval_tasks else None
    return train_doc["vocabulary"], seqs["train"], seqs["test"], seqs["val"]


def check_inputs(store, cfg, run_id):
    """What a launch can check before it creates or re-opens the run, so that bad input changes
    nothing: the datasets, and the start checkpoint when it will be used (returned, loaded, with its
    file id; else (None, None))."""
    test_name = cfg.test_name or cfg.train_name
    vocab = store.call(get_dataset, cfg.train_name)["vocabulary"]
    if store.call(get_dataset, test_name)["vocabulary"] != vocab:
        raise DataError(f"datasets {cfg.train_name!r} and {test_name!r} have different vocabularies")
    if not cfg.start_checkpoint or (store.get_run(run_id) or {}).get("checkpoint"):
        return None, None  # a new run, or one that resumes from its own checkpoint
    return pick_start(store, cfg, vocab)


def pick_start(store, cfg, vocab):
    """Rank 0's choice of the start checkpoint, checked: (its dict, its file id)."""
    # raises for a run that does not exist
    init, file_id = load_checkpoint(store, cfg.start_checkpoint, which=cfg.start_from, with_id=True)
    if init is None:
        why = "no best checkpoint (it trained without --patience)" if cfg.start_from == "best" else "no checkpoint yet"
        raise StoreError(f"start_checkpoint run {cfg.start_checkpoint!r} has {why}")
    check_vocabulary(init, vocab, f"start_checkpoint run {cfg.start_checkpoint!r}", cfg.train_name)
    if init.get("model_config") != model_config(cfg.arch, cfg.model_size, len(vocab)).to_dict():
        raise CheckpointError(f"start_checkpoint run {cfg.start_checkpoint!r} has another model than model_size "
                              f"{cfg.model_size!r} (arch {cfg.arch}); give the size and arch it was trained with")
    return init, file_id


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


def load_data_once(store, cfg, use_cache, world):
    """load_data, one process per machine reading MongoDB and filling the local cache, the others
    then reading the cache."""
    first, queue = int(os.environ.get("LOCAL_RANK", 0)) == 0, world > 1 and use_cache
    if queue and not first:
        dist.barrier()
    loaded = load_data(store, cfg, use_cache)
    if queue and first:
        dist.barrier()
    return loaded


class Clock:
    """Training time (device work included; evaluations, checkpoints and logging left out), the
    non-padding tokens since the last log, and the last evaluation's and checkpoint's durations:
    what the tokens/s and ETA of a log line come from."""

    def __init__(self, device, step):
        self.device, self.busy, self.tokens, self.eval_s, self.checkpoint_s, self.logged = device, 0.0, 0, 0.0, 0.0, step
        self.t0 = time.perf_counter()

    def pause(self):
        """Stop counting training time (once the device's queued work is done); returns the moment."""
        device_sync(self.device)
        t = time.perf_counter()
        self.busy += t - self.t0
        return t


def selection_rank(m):
    """What model selection maximises (a best evaluation's record, as select() makes it; one stored before
    the plan loss decided ties ranks below any new evaluation of the same optimal %)."""
    return (m["optimal_pct"] or 0.0, m.get("correct_pct") or 0.0, -m.get("plan_loss", float("inf")))


QUICK_CHECKPOINT_S = 10.0  # an interrupted run saves its current step when a checkpoint takes at most this


class Training:
    """One rank's training of a run: setup() builds (or resumes) it, loop() runs it to train_steps,
    with the periodic log, test evaluation and checkpoint; with patience, it keeps the best checkpoint
    and stops after that many evaluations in a row without a better one."""

    def __init__(self, cfg, run_id, flags, store, rank, world, device):
        self.cfg, self.run_id, self.flags, self.store, self.rank, self.world, self.device = \
            cfg, run_id, flags, store, rank, world, device

    def setup(self, init=None, start_id=None):
        cfg, device = self.cfg, self.device
        testhook.pause(f"setup-{self.rank}")  # tests: one rank held while the others wait for it
        self.vocab, self.train_seqs, self.test_seqs, self.val_seqs = load_data_once(self.store, cfg, not self.flags.no_cache, self.world)
        test_doc = self.store.call(get_dataset, cfg.test_name or cfg.train_name)
        # rollouts need a task whose plans can be checked (a synthetic dataset: the validation loss alone)
        self.checkable = tasks.of(test_doc["task"], test_doc.get("params", {})) is not None
        self.batcher = Batcher(self.train_seqs, cfg, self.world)
        need = self.batcher.shares if cfg.batch_tokens else cfg.batch_size * self.batcher.shares
        if len(self.train_seqs) < need or len(self.test_seqs) == 0:
            raise DataError(f"too few sequences after filtering: {len(self.train_seqs)} train, {len(self.test_seqs)} "
                            f"test; need at least {need} train sequences (batch_size x world size x grad_accum)")
        self.model, self.opt, self.sched = build(cfg, len(self.vocab), device)
        self.model.activation_checkpointing = self.flags.activation_checkpointing
        # the train log's pending sums (loss_terms stats since the last log)
        self.step, self.sums = 0, torch.zeros(STATS, dtype=torch.float64, device=device)
        self.selection = {"best": None, "stale": 0}  # the best evaluation so far, the evaluations since (select())
        self.saved = None  # the step of the run's latest checkpoint
        self.resume_or_start(init, start_id)
        print0(f"{self.run_id}: model {cfg.model_size} {cfg.arch} ({self.model.num_params() / 1e6:.1f}M params), "
               f"{len(self.train_seqs)} train / {len(self.test_seqs)} test sequences, world size {self.world}, "
               f"device {device}")
        self.ddp_model = wrap_ddp(self.model, device, cfg.grad_accum) if self.world > 1 else self.model
        self.forward = torch.compile(self.ddp_model, dynamic=True) if self.flags.compile else self.ddp_model
        self.autocast = autocast_for(device, self.flags.precision)
        # compiled on GPU: padded lengths rounded up to a multiple of 64, so few shapes ever occur
        multiple = 64 if self.flags.compile and device.type == "cuda" else 1
        self.prefetch = Prefetcher(self.batcher, self.rank, device, multiple)
        return self

    def resume_or_start(self, init, start_id):
        """Load the run's own checkpoint (a resume), or the start checkpoint's weights (and optimizer
        state) into a new run: the file rank 0 picked (start_id; init on rank 0)."""
        cfg, run_id = self.cfg, self.run_id
        ckpt = load_checkpoint(self.store, run_id)
        if ckpt is not None:
            if ckpt.get("world_size", self.world) != self.world:
                raise CheckpointError(world_size_refusal(run_id, ckpt["world_size"], self.world))
            check_vocabulary(ckpt, self.vocab, f"the checkpoint of run {run_id!r}", cfg.train_name)
            try:
                self.step, rng, log_sums, self.selection = restore(ckpt, self.model, self.opt, self.sched,
                                                                   self.batcher, self.sums)
            except ValueError as e:
                raise CheckpointError(f"the checkpoint of run {run_id!r} cannot be resumed: {e}") from None
            torch.set_rng_state(rng)
            self.saved = self.step
            if ckpt["config"]["train_steps"] != cfg.train_steps:
                self.extend(ckpt["config"]["train_steps"])
            if self.rank == 0:
                self.sums = log_sums.to(self.device)  # other ranks' shares were folded into rank 0's at save time
                self.store.truncate_logs(run_id, self.step, owner=self.flags.owner)
                best = (self.selection["best"] or {}).get("step")
                if cfg.patience and not point_best(self.store, run_id, best, owner=self.flags.owner):
                    print0(f"note: the best checkpoint (step {best}) is not stored (an imported run): "
                           f"the run has none until a better evaluation")
            print0(f"resuming {run_id} from step {self.step}")
        elif cfg.start_checkpoint:
            init = self.same_start(init, start_id)
            start_from(self.model, self.opt, init, cfg)
            print0(f"initialised from {cfg.start_checkpoint} ({cfg.start_from} checkpoint, step {init['step']}): "
                   f"{'weights and optimizer state' if cfg.start_optimizer else 'weights only'}, step reset to 0")

    def same_start(self, init, file_id):
        """The start checkpoint, one file on every rank (else their AdamW states would start apart, and
        DDP never brings them together): the one rank 0 checked. When the start run, training on, saved
        a newer one meanwhile (deleting it) before every rank read it, rank 0 picks again."""
        for _ in range(5):
            if self.rank != 0:
                init = read_checkpoint_file(self.store, file_id)
            if not any_rank(init is None):
                return init
            if self.rank == 0:
                init, file_id = pick_start(self.store, self.cfg, self.vocab)
            file_id = broadcast_obj(file_id)
        raise CheckpointError(f"start_checkpoint run {self.cfg.start_checkpoint!r} replaced its checkpoint again and "
                              f"again while this run started; relaunch")

    def extend(self, old):
        """A run continued past its stored train_steps (store.start_run allows raising it): the LR goes on
        from where it is at this step (no jump), along a cosine to its minimum at the new train_steps
        (hparams.lr_at); the scheduler's state keeps that for every later resume."""
        cfg, step, sched = self.cfg, self.step, self.sched
        sched.extension = cfg.extension_at(step, old, sched.extension)
        lr = cfg.lr_at(step, sched.extension)
        for g, base in zip(self.opt.param_groups, sched.base_lrs):  # as the scheduler sets it at this step
            g["lr"] = base * (lr / cfg.lr)
        schedule = (f"the LR goes on from {lr:.2e} at step {step}, without a jump, along a cosine to "
                    f"{cfg.lr * cfg.min_lr_ratio:.2e} at step {cfg.train_steps}" if sched.extension is not None and
                    sched.extension[0] == step else f"the LR schedule is now {cfg.train_steps} steps long "
                    f"(LR {lr:.2e} at step {step}, unchanged)")
        print0(f"extending {self.run_id} from {old} to {cfg.train_steps} steps; {schedule}")

    def loop(self, guard=None):
        cfg = self.cfg
        self.clock = Clock(self.device, self.step)
        while self.step < cfg.train_steps and not self.out_of_patience():
            if guard is not None and any_rank(guard.check(), self.flags.cpu_group):
                self.stop()
            lr = self.optimizer_step()
            due = lambda interval: self.step % interval == 0 or self.step == cfg.train_steps  # noqa: E731
            if due(cfg.log_interval):
                self.log(lr)
            if due(cfg.eval_interval) and self.test():
                self.checkpoint("best")
            if due(cfg.checkpoint_interval) or self.out_of_patience():
                self.checkpoint()
            testhook.pause(f"step-{self.step}")
        self.prefetch.close()
        if self.out_of_patience():
            best = self.selection["best"]
            if self.rank == 0:
                self.store.set_stopped_early(self.run_id, self.step, best["step"], owner=self.flags.owner)
            print0(f"stopped early at step {self.step}: {cfg.patience} evaluations in a row without improvement; "
                   f"best checkpoint: step {best['step']}")
        return self.model

    def out_of_patience(self):
        return self.cfg.patience > 0 and self.selection["stale"] >= self.cfg.patience

    def select(self, metrics):
        """Model selection (patience > 0), on the validation tasks alone: this evaluation is the new best
        when it ranks higher by (optimal %, correct %, -plan loss) on them (the rates of greedy rollouts, or of
        eval_samples samples a task as eval.py reports). The plan loss (the
        plan's tokens given the prompt and the stored trace) breaks ties: a model kind that does not learn
        the stored traces (a shuffled-trace control) is judged by its plans, not by its loss on traces.
        Returns whether it is."""
        best = self.selection["best"]
        now = {"step": self.step, "optimal_pct": metrics.get("rollout_optimal_pct"),
               "correct_pct": metrics.get("rollout_correct_pct"), "plan_loss": metrics["val_plan_loss"]}
        better = best is None or selection_rank(now) > selection_rank(best)
        # every rank takes rank 0's decision (their metrics are reduced alike, but a tie must not split them)
        self.selection = broadcast_obj({"best": now if better else best, "stale": 0 if better else self.selection["stale"] + 1})
        return self.selection["best"]["step"] == self.step

    def stop(self):
        """Every rank at this step boundary after a signal: save the step when it is not saved and a
        checkpoint is quick (rank 0's last one, or unmeasured, its size at 100 MB/s), then leave."""
        quick = (self.clock.checkpoint_s or self.model.num_params() * 12 / 100e6) <= QUICK_CHECKPOINT_S
        if self.saved != self.step and broadcast_obj(quick):
            self.checkpoint()
        raise Interrupted(self.step, self.saved)

    def optimizer_step(self):
        """One step over a global batch, this rank's share in micro-steps; returns the step's LR."""
        cfg, world = self.cfg, self.world
        batch, micro = self.prefetch.next()
        total = loss_denominator(cfg, self.train_seqs, batch)
        for i, (x, y, plan, keep) in enumerate(micro):
            sync = i == len(micro) - 1 or world == 1
            with contextlib.nullcontext() if sync else self.ddp_model.no_sync():
                loss_sum, stats = loss_terms(self.forward, x, y, plan, self.autocast, keep, cfg.loss_norm)
                (loss_sum * (world / total)).backward()  # DDP averages over ranks; undo that
            self.sums += stats
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.clock.tokens += int(self.train_seqs.lengths[batch].sum())  # non-padding tokens
        return lr

    def log(self, lr):
        cfg, clock, step = self.cfg, self.clock, self.step
        clock.pause()
        metrics = summarize(all_sum(self.sums))
        self.sums.zero_()
        metrics.update(lr=lr, tokens_per_s=clock.tokens / clock.busy)
        step_s, clock.logged = clock.busy / (step - clock.logged), step
        eta = eta_seconds(cfg, step, step_s, clock.eval_s, clock.checkpoint_s)
        if self.rank == 0:
            self.store.log(self.run_id, step, "train", metrics, owner=self.flags.owner)
        print0(f"step {step}/{cfg.train_steps} | loss {metrics['loss']:.4f} (trace {metrics['trace_loss']:.4f} "
               f"plan {metrics['plan_loss']:.4f}) | acc {metrics['accuracy']:.3f} "
               f"exact {metrics['response_exact']:.3f} | lr {lr:.2e} | "
               f"{metrics['tokens_per_s']:,.0f} tok/s | ETA {eta / 60:.1f}m")
        clock.busy, clock.tokens = 0.0, 0
        clock.t0 = time.perf_counter()

    def test(self):
        cfg, clock = self.cfg, self.clock
        t1 = clock.pause()
        # the test loss (logged, never selected on: its first rows are reported tasks)
        metrics = evaluate(self.model, self.test_seqs, self.rank, self.world, self.device, self.autocast)
        if cfg.eval_tasks:  # what selection reads: the validation tasks alone
            val = evaluate(self.model, self.val_seqs, self.rank, self.world, self.device, self.autocast)
            metrics.update({f"val_{k}": val[k] for k in ("loss", "plan_loss", "accuracy", "plan_exact")})
            if self.checkable:
                rollout = rollout_metrics(self.model, self.store, cfg, self.rank, self.world, self.device,
                                          not self.flags.no_cache)
                metrics.update({f"rollout_{k}": v for k, v in rollout.items()})
        if self.rank == 0:
            self.store.log(self.run_id, self.step, "test", metrics, owner=self.flags.owner)
        better = cfg.patience > 0 and self.select(metrics)
        how = f" x {cfg.eval_samples} samples" if cfg.eval_samples else ""
        rollout = f" | optimal {metrics['rollout_optimal_pct']:.1f}% of {cfg.eval_tasks} tasks{how}" \
            if "rollout_optimal_pct" in metrics else ""
        best = f" | best step {self.selection['best']['step']}" if cfg.patience else ""
        print0(f"step {self.step} | test loss {metrics['loss']:.4f} | test acc {metrics['accuracy']:.3f} | exact plan "
               f"{metrics['plan_exact']:.3f} response {metrics['response_exact']:.3f}{rollout}{best}")
        device_sync(self.device)
        clock.t0 = time.perf_counter()
        clock.eval_s = clock.t0 - t1
        return better

    def checkpoint(self, which="latest"):
        """Save the training state as the run's latest checkpoint, or as its best (with the selection
        metrics of this step's evaluation)."""
        clock = self.clock
        t1 = clock.pause()
        all_sum(self.sums)  # fold every rank's pending log sums into rank 0's, which the checkpoint keeps
        if self.rank != 0:
            self.sums.zero_()
        if self.rank == 0:
            best = self.selection["best"] if which == "best" else None
            save_checkpoint(self.store, self.run_id, self.step, owner=self.flags.owner, which=which, metrics=best, state={
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "run_id": self.run_id, "step": self.step,
                "data": self.prefetch.state_dict(), "rng": {"cpu": torch.get_rng_state()},
                "log_acc": self.sums.cpu(), "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                "vocabulary": self.vocab, "world_size": self.world, "selection": self.selection})
        if which == "latest":
            self.saved = self.step
        clock.t0 = time.perf_counter()
        clock.checkpoint_s = clock.t0 - t1


# ---------------------------------------------------------------------------------------------
# command line


def add_config_flags(ap):
    """One flag per TrainConfig field, its help its default and choices; a flag left out takes the
    stored run's value when the run exists (settle_stored), else that default."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                            help=f"default {flag if f.default else '--no-' + flag[2:]}")
            continue
        choices = CHOICES.get(f.name)
        ap.add_argument(flag, type=f.type, default=None, metavar=f.type.__name__.upper(),
                        help=(f"one of {', '.join(choices)}; " if choices else "") + f"default {f.default!r}")


def add_runtime_flags(ap, run_id_help=None):
    ap.add_argument("--run-id", required=run_id_help is None,
                    help=run_id_help or "the run's id: launching an existing id resumes it")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved hyper-parameters and exit")
    devices.add_flags(ap)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (big models)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast on GPU, fp32 on CPU (bf16 there is faster on CPUs with AMX)")
    ap.add_argument("--no-cache", action="store_true", help="read datasets from MongoDB, not the local cache")
    ap.add_argument("--lease-seconds", type=float, default=60.0, help="how long a dead trainer blocks a relaunch (default %(default)s)")
    ap.add_argument("--db-retry-seconds", type=float, default=300.0,
                    help="how long to wait for a lost database before failing (default %(default)s)")


NEGATIVE = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf(inity)?|-nan", re.IGNORECASE)


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "-1e-3" for an option: join a negative number to the flag before it ("--lr=-1e-3")
    for i in range(len(argv) - 1, 0, -1):
        if NEGATIVE.fullmatch(argv[i]) and argv[i - 1].startswith("--") and "=" not in argv[i - 1]:
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    single = sub.add_parser("single", help="one run from flags (defaults as in TrainConfig)",
                            description="Train, continue or extend one run. Launching a stored run id continues "
                                        "it: flags left out take its stored values, and only a raised "
                                        "--train-steps may differ (it extends the run).")
    add_runtime_flags(single)
    add_config_flags(single)
    sw = sub.add_parser("sweep", help="one entry of a sweep file")
    add_runtime_flags(sw, "the run's id (default: <sweep file stem>-<index>, or <base>-<index>-step-<k> for a step "
                          "file <base>-step-<k>.json); launching an existing id resumes it")
    sw.add_argument("--sweep", required=True, help="JSON list of hyper-parameter dicts")
    sw.add_argument("--index", type=int, required=True, help="entry index (e.g. a job array's index)")
    sw.add_argument("--arch", choices=CHOICES["arch"], default=None,
                    help="the architecture of an entry that names none (default decoder; the reference's "
                         "sweeps were encdec, their encoder/decoder names its sizes)")
    args = ap.parse_args(argv)
    if args.mode == "sweep" and args.run_id is None:
        args.run_id = sweep.run_id(args.sweep, args.index)
    return args


def resolve_config(args, defaults=None):
    """The config the flags or the sweep entry give; keys they leave out take `defaults`, then TrainConfig's."""
    if args.mode == "sweep":
        return sweep.load(args.sweep, args.index, {**(defaults or {}), **({"arch": args.arch} if args.arch else {})})
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:
        return TrainConfig.from_dict({**(defaults or {}), **given})
    except (ValueError, ConfigError) as e:
        raise ConfigError(str(e)) from None


def settle_stored(store, args, cfg):
    """A relaunch of a stored run takes the run's hyper-parameters for what its flags leave out, so
    `train.py single --run-id ID` alone continues it as it trained. A run stored before a key existed
    trained with that key's old value: its stored config gains the missing keys with those values
    (hparams.ADDED, TrainConfig.from_stored)."""
    doc = store.get_run(args.run_id)
    if doc is None:
        return cfg
    try:
        stored = TrainConfig.from_stored(doc["config"])
    except (ValueError, TypeError) as e:
        raise StoreError(f"run {args.run_id!r} has a stored config this version cannot read ({e}); use a new "
                         f"--run-id") from None
    if args.arch and args.arch != stored.arch:
        raise ConfigError(f"run {args.run_id!r} is a {stored.arch} run: it cannot continue as --arch {args.arch}; "
                          f"use a new --run-id")
    missing = [k for k in ADDED if k not in doc["config"]]
    if missing:
        unset = {f"config.{k}": {"$exists": False} for k in missing}
        store.call(lambda db: db.runs.update_one({"_id": args.run_id, **unset},
                                                 {"$set": {f"config.{k}": ADDED[k] for k in missing}}))
    return resolve_config(args, stored.to_dict())


def stopped(e, run_id, world):
    """Report a run stopped by a signal (runguard.Interrupted): one line, and torchrun's error file."""
    launcher = f"torchrun --nproc-per-node {world}" if world > 1 else "python"
    line = e.line(f"{launcher} train.py single --run-id {run_id}")
    errors.tell_launcher(line)
    print0(line)
    if e.step is not None and world > 1:
        dist.barrier()  # the ranks agreed on the stop: none exits (and has torchrun stop the rest) before rank 0 is done
    return INTERRUPTED


def stop_starting(run_id, world, guard):
    """A signal before the first step (from Signals' thread, whatever the main thread waits for): say so,
    record the run (runguard.RunGuard.abandon: a run this launch created is dropped) and exit 130 now."""
    launcher = f"torchrun --nproc-per-node {world}" if world > 1 else "python"
    line = Interrupted().line(f"{launcher} train.py single --run-id {run_id}")
    errors.tell_launcher(line)
    print0(line)
    if guard is not None:
        guard.abandon()
    os._exit(INTERRUPTED)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        check_name(args.run_id)
        device = devices.from_flags(args)
    except (errors.Error, ValueError) as e:
        sys.exit(errors.exit_message(e))
    if args.dry_run:
        print(json.dumps({"run_id": args.run_id, **cfg.to_dict()}, indent=2))
        return

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    # SIGINT and SIGTERM: stop at once while starting, then at the next step boundary (runguard.Signals)
    Signals.install(lambda: stop_starting(args.run_id, world, None))
    args.cpu_group = None
    try:
        if world > 1:
            args.cpu_group = devices.init_process_group(device, args.dist_timeout_minutes, cpu_group=True)  # for any_rank
        code = run(cfg, args, rank, world, device)
    except Interrupted as e:  # a second signal outside the training
        code = stopped(e, args.run_id, world)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)


def run(cfg, args, rank, world, device):
    try:
        store = connect(retry_s=args.db_retry_seconds)
    except StoreError as e:
        print0(errors.exit_message(e), file=sys.stderr)
        return 1
    guard = RunGuard(store, args.run_id, args.lease_seconds, rank)
    Signals.starting = lambda: stop_starting(args.run_id, world, guard)
    err, init, start_id = None, None, None
    if rank == 0:
        try:
            cfg = settle_stored(store, args, cfg)
            init, start_id = check_inputs(store, cfg, args.run_id)  # before the run is created: bad input changes nothing
            guard.claim(cfg.to_dict(), world)
            testhook.pause("claimed")  # tests: the start checkpoint picked, the other ranks not yet started
        except errors.REPORTED as e:  # a database error too: one line, as every command gives it
            err = errors.exit_message(e)
    err, stored, start_id = broadcast_obj((err, cfg.to_dict(), start_id))
    if err:
        errors.tell_launcher(err)  # every rank's error file names it, whichever torchrun reports
        print0(err, file=sys.stderr)
        return 1
    cfg = TrainConfig.from_dict(stored)  # every rank trains with rank 0's config
    args.owner = guard.owner  # rank 0's writes are fenced by its lease
    try:
        with guard:
            training = Training(cfg, args.run_id, args, store, rank, world, device).setup(init, start_id)
            training.loop(guard)
            guard.finished()
    except Interrupted as e:
        return stopped(e, args.run_id, world)
    except errors.REPORTED as e:
        print0(errors.exit_message(e), file=sys.stderr)
        return 1
    print0(f"finished {args.run_id} at step {training.step}; its checkpoint is in the database (export it with "
           f"`python admin.py export-checkpoint --run-id {args.run_id} --export-dir DIR`). Next: evaluate it with "
           f"`python eval.py --run-id {args.run_id}`, plot its loss with "
           f"`python report.py loss --run-id {args.run_id} --out {args.run_id}-loss.png`")
    return 0


if __name__ == "__main__":
    main()
