"""The training objective: summed token losses of a micro-batch with the statistics logged beside
them, what a global batch's sum is divided by, and the autocast the forward passes run under."""
import contextlib

import torch
import torch.nn.functional as F


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
    with autocast:  # x: the tokens, or an encoder-decoder's (response tokens, prompt, prompt mask)
        logits = model(*x, keep=keep) if isinstance(x, tuple) else model(x, keep=keep)  # (N, V)
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
    (trace_loss, trace_tokens, plan_loss, plan_tokens, correct, seqs, trace_seqs, trace_exact, plan_exact,
     response_exact) = stats.tolist()
    tokens = max(trace_tokens + plan_tokens, 1)
    metrics = {"loss": (trace_loss + plan_loss) / tokens, "trace_loss": trace_loss / max(trace_tokens, 1),
               "plan_loss": plan_loss / max(plan_tokens, 1), "accuracy": correct / tokens,
               "tokens": int(trace_tokens + plan_tokens), "sequences": int(seqs),
               "plan_exact": plan_exact / max(seqs, 1), "response_exact": response_exact / max(seqs, 1)}
    if trace_seqs:
        metrics["trace_exact"] = trace_exact / trace_seqs
    return metrics


def loss_denominator(cfg, seqs, batch):
    """What the summed loss_terms losses of a global batch are divided by: its sequences (each counted
    with its own token mean) or its loss tokens. It depends on the whole global batch only, so every
    rank and micro-step scales alike and any split gives the same gradient."""
    if cfg.loss_norm == "sequence":
        return len(batch)
    return int((seqs.lengths[batch] - seqs.prompt_len[batch]).sum())


def autocast_for(device, precision):
    """bf16 autocast on GPU (tensor cores, flash attention), on CPU when asked (faster on AMX CPUs)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
