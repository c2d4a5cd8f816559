"""A training run's hyper-parameters: TrainConfig (stored with the run exactly as to_dict()), checked
on every way in (flags, sweep files, stored configs), and the LR schedule they define."""
import dataclasses
import math
from dataclasses import dataclass, fields

import store
from errors import shown
from model import SIZES


@dataclass
class TrainConfig:
    train_name: str = "maze.10-by-10-deterministic.simple"
    test_name: str = ""  # empty: same as train_name
    arch: str = "decoder"  # the card's decoder-only Transformer, or "encdec": the reference's encoder-decoder
    model_size: str = "s"  # encdec: s, m, l, xl are the reference's enc-s/dec-s, enc-m-s/dec-m-s, enc-l/dec-l, enc-xl-2/dec-xl-2
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
    start_from: str = "latest"  # with start_checkpoint: that run's latest checkpoint, or its best (--patience)
    seed: int = 0
    eval_samples: int = 0  # with eval_tasks: 0 greedy rollouts; K > 0: K samples a task at temperature 1, a task
    # solved when any is (as eval.py reports), the same random streams at every evaluation
    eval_tasks: int = 0  # > 0: rollouts on the last this many test tasks (the validation tasks) at each
    # eval (rollout_* in the test log)
    patience: int = 0  # > 0: stop after this many evals in a row without a better selection metric on the
    # validation tasks (needs eval_tasks; 0: never)

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
                    "max_reasoning_len", "seed", "weight_decay", "grad_clip", "eval_tasks", "eval_samples", "patience"]:
            if getattr(self, key) < 0:
                raise ValueError(f"hyper-parameter {key!r} must not be negative, got {getattr(self, key)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1 and betas in [0, 1)")
        if self.patience and not self.eval_tasks:
            raise ValueError("--patience selects on validation tasks: give --eval-tasks N too (the last N test "
                             "tasks; results are then never reported on them or their wall layouts)")
        if self.model_size not in SIZES:
            raise ValueError(f"hyper-parameter 'model_size' must be one of {', '.join(SIZES)}, got {self.model_size!r}")
        for key, allowed in CHOICES.items():
            if key != "model_size" and getattr(self, key) not in allowed:
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
        return cls.from_dict({**ADDED, **d})

    def lr_at(self, step, extension=None):
        """Linear warm-up, then cosine decay to min_lr_ratio x lr at train_steps (or constant). A run
        extended at step s0 with the LR at ratio r0 of lr there (extension = [s0, r0], see extension_at)
        goes on from r0 at s0 along a cosine to min_lr_ratio at the new train_steps: no jump."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        start, top = self.warmup_steps, 1.0
        if extension is not None and step >= extension[0]:
            start, top = extension
        t = min(1.0, (step - start) / max(1, self.train_steps - start))
        return self.lr * (self.min_lr_ratio + (top - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def extension_at(self, step, old_steps, extension=None):
        """The schedule's extension when the run, trained to `step` with old_steps as train_steps (and
        `extension`, that one's), goes on to this config's train_steps: [step, the LR ratio there], or
        None where the new schedule is continuous already (constant, or still in warm-up)."""
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return extension
        old = dataclasses.replace(self, train_steps=old_steps)
        return [step, old.lr_at(step, extension) / self.lr]


# the values a string hyper-parameter may take
CHOICES = {"arch": ("decoder", "encdec"), "model_size": tuple(SIZES), "lr_schedule": ("cosine", "constant"), "loss_norm": ("sequence", "token"),
           "decay_params": ("all", "matrices"), "start_from": store.CHECKPOINTS}

# the keys added after runs were stored, each with the value a stored config without it trained with
ADDED = {"eval_samples": 0, "loss_norm": "token", "decay_params": "matrices", "start_optimizer": False, "patience": 0,
         "start_from": "latest", "arch": "decoder"}
