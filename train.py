"""Train one run: `train.py single --run-id ID [flags]` or `train.py sweep --index N --sweep F [--run-id ID]`.

Runs as a plain process or under torchrun (DDP; gloo on CPU, NCCL on GPU). Hyper-parameters, logs
and checkpoints live in MongoDB under the run id; launching an existing id resumes it exactly.
"""
import os
import signal
import sys

import lifecycle
import testhook

if __name__ == "__main__":
    launcher = os.getppid()  # first of all: whatever happens to the launcher later changes it
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped while starting: quietly (main() installs the real handlers)
        signal.signal(sig, lambda *_: sys.exit(130))
    testhook.pause("start")
    lifecycle.die_with_parent(launcher)

import contextlib
import json
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import devices
import errors
import tasks
from batches import Batcher, Prefetcher, Sequences, tensors, to_device
from checkpoint import build, check_vocabulary, model_config, restore, start_from
from checkpoint_store import load_checkpoint, point_best, read_checkpoint_file, save_checkpoint
from dataset import filter_split, get_dataset, load_split
from devices import all_sum, any_rank, broadcast_obj, print0
from errors import CheckpointError, DataError, StoreError
from hparams import TrainConfig
from lifecycle import Interrupted
from loss import STATS, autocast_for, loss_denominator, loss_terms, summarize
from rollouts import rollout_metrics
from runguard import RunGuard
from store import check_name, connect, world_size_refusal
from train_args import parse_args, resolve_config, settle_stored


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
    # greedy or sampled rollouts need a task whose plans can be checked (a synthetic dataset: the validation
    # loss alone)
    checkable = tasks.of(test_doc["task"], test_doc.get("params", {})) is not None
    return train_doc["vocabulary"], seqs["train"], seqs["test"], seqs["val"], checkable


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

    def suspend(self):
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
        self.vocab, self.train_seqs, self.test_seqs, self.val_seqs, self.checkable = \
            load_data_once(self.store, cfg, not self.flags.no_cache, self.world)
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
            if ckpt["config"].get("patience", 0) != cfg.patience:  # store.start_run allows raising it
                print0(f"patience raised from {ckpt['config'].get('patience', 0)} to {cfg.patience} evaluations; "
                       f"{self.selection['stale']} so far without improvement")
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
        clock.suspend()
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
        t1 = clock.suspend()
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
        t1 = clock.suspend()
        all_sum(self.sums)  # fold every rank's pending log sums into rank 0's, which the checkpoint keeps
        if self.rank != 0:
            self.sums.zero_()
        if self.rank == 0:
            best = self.selection["best"] if which == "best" else None
            save_checkpoint(self.store, self.run_id, self.step, owner=self.flags.owner, which=which, metrics=best, state={
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "run_id": self.run_id, "step": self.step,
                "data": self.prefetch.state_dict(), "rng": {"cpu": torch.get_rng_state()},
                "log_sums": self.sums.cpu(), "config": self.cfg.to_dict(), "model_config": self.model.cfg.to_dict(),
                "vocabulary": self.vocab, "world_size": self.world, "selection": self.selection})
        if which == "latest":
            self.saved = self.step
        clock.t0 = time.perf_counter()
        clock.checkpoint_s = clock.t0 - t1


# ---------------------------------------------------------------------------------------------
# the process


def main(argv=None):
    args = parse_args(argv, __doc__)
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
    # SIGINT and SIGTERM: stop at once while starting, then at the next step boundary (lifecycle.Signals)
    lifecycle.on_signal_while_starting(args.run_id, world)
    args.cpu_group = None
    try:
        if world > 1:
            args.cpu_group = devices.init_process_group(device, args.dist_timeout_minutes, cpu_group=True)  # for any_rank
        code = run(cfg, args, rank, world, device)
    except Interrupted as e:  # a second signal outside the training
        code = lifecycle.interrupted(e, args.run_id, world, dist.barrier if world > 1 else None)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    sys.exit(code)


def run(cfg, args, rank, world, device):
    """This rank's part of the launch: rank 0 claims the run, every rank sets it up and trains it; the
    exit status."""
    try:
        store = connect(retry_s=args.db_retry_seconds)
    except StoreError as e:
        return lifecycle.failed(e)
    guard = RunGuard(store, args.run_id, args.lease_seconds, rank)
    lifecycle.on_signal_while_starting(args.run_id, world, guard)
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
        lifecycle.tell(err, sys.stderr)  # every rank's error file names it, whichever torchrun reports
        return 1
    cfg = TrainConfig.from_dict(stored)  # every rank trains with rank 0's config
    args.owner = guard.owner  # rank 0's writes are fenced by its lease
    try:
        with guard:
            training = Training(cfg, args.run_id, args, store, rank, world, device).setup(init, start_id)
            training.loop(guard)
            guard.finished()
    except Interrupted as e:
        return lifecycle.interrupted(e, args.run_id, world, dist.barrier if world > 1 else None)
    except errors.REPORTED as e:
        return lifecycle.failed(e)
    print0(f"finished {args.run_id} at step {training.step}; its checkpoint is in the database (export it with "
           f"`python admin.py export-checkpoint --run-id {args.run_id} --export-dir DIR`). Next: evaluate it with "
           f"`python eval.py --run-id {args.run_id}`, plot its loss with "
           f"`python report.py loss --run-id {args.run_id} --out {args.run_id}-loss.png`")
    return 0


if __name__ == "__main__":
    main()
