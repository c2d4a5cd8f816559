"""The training benchmark's variants: the reference's way (fp32, a fixed number of rows padded to the
longest, logits at every position) and this trainer's features one by one, each stepping its own
model and optimizer on the same sequences and keeping its own timings."""
import contextlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import batches
import hparams
import loss
from benchmarks.measure import compiled_graphs, sync
from model import ModelConfig, Transformer

SDPA = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


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
    cfg = model.cfg
    lens = seqs.lengths[batch].astype(np.float64) - 1  # inputs per sequence
    loss_tokens = (seqs.lengths[batch] - seqs.prompt_len[batch]).sum()
    return (6 * model.num_params(embeddings=False) * lens.sum() + 6 * cfg.n_layer * cfg.d_model * (lens ** 2).sum()
            + 6 * cfg.d_model * cfg.vocab_size * loss_tokens)


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
        tensors = [*self.model.parameters(), *(t for state in self.opt.state.values() for t in state.values()
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
