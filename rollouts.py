"""Rollouts of a model on a dataset's tasks: each continues `<bos> prompt <sep>` (and an optional
prefix of the stored trace) through the sampling engine (decode.py), or for an encoder-decoder the
response `<bos>` (and the prefix) given the prompt `<bos> prompt <eos>`; and the greedy rollout metrics
a trainer logs at its evaluations (train.py --eval-tasks) on its validation tasks; a run's model
loaded from its checkpoint (load_model: eval.py samples it), and a run's stored or fresh response
to one task (task_response: report.py task draws it).

Validation tasks: the last eval_tasks tasks of the run's test split. A trainer selects its best
checkpoint on them (--patience), so results are reported only on the tasks before them, and before
the wall layout they start in (reportable_tasks): no reported task shares a layout with them."""
import argparse
import json
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import decode
import tasks
from checkpoint import model_from_config
from checkpoint_store import load_checkpoint
from dataset import BOS, DTYPE, EOS, SEP, get_dataset, load_split
from encdec import EncoderDecoder
from errors import ConfigError, StoreError
from metrics import SUM_FIELDS, Checker, score, summarize

# rollout limits of the reference: (task, plan_only) -> tokens
MAX_TOKENS = {("maze", False): 10000, ("maze", True): 10000, ("sokoban", False): 11000, ("sokoban", True): 2000}
LIMIT_FACTOR = 2  # the default limit: this many times the longest stored response, and its <eos>


def reference_limit(task, plan_only):
    """The reference's rollout limit for a task kind (10,000 tokens for one it did not have)."""
    return MAX_TOKENS.get((task, plan_only), 10000)


def limit_for(flag, task, plan_only, split):
    """eval.py's --max-tokens: 0 gives response_limit over the whole split sampled (not only the tasks
    asked for, so that the limit, which keys stored responses, holds for any --num-tasks), `reference`
    the reference's limit, a number itself."""
    if flag == "reference":
        return reference_limit(task, plan_only)
    return flag or response_limit(task, plan_only, split)


def max_tokens_flag(text):
    """--max-tokens: a number, or `reference` for the reference's limit (limit_for reads it)."""
    if text != "reference" and not re.fullmatch(r"-?\d+", text):
        raise argparse.ArgumentTypeError(f"expected a number or 'reference', got {text!r}")
    return text if text == "reference" else int(text)


def progress_line(progress, limit):
    """An on_collect callback (decode.generate) that updates a dataset.Progress of the responses at
    every collection, also while the last rows run long and none finishes: tokens/s, then, once no
    row waits, the rows still running and the furthest one's tokens instead of an estimate."""
    t0 = time.monotonic()

    def show(tally):
        note = f"{tally.tokens / max(time.monotonic() - t0, 1e-9):,.0f} tokens/s"
        if tally.waiting:  # rows still wait to start: the response rate says when they will be done
            progress.update(tally.finished, note=note)
        else:
            progress.update(tally.finished, note=f"{note}; the last {tally.running} running, the longest at "
                            f"{tally.longest:,} of {limit:,} tokens", eta=False)
    return show


def response_limit(task, plan_only, split, rows=None):
    """The default token limit of a rollout: LIMIT_FACTOR times the longest stored response (plan for
    plan-only, trace and plan otherwise) among the split's rows (default all), plus its <eos>, never
    above the reference's limit. A row that never writes <eos> stops there instead of running to the
    reference's limit (10x10 maze plans are under 300 tokens, the limit is 10,000), and a runaway row
    costs the square of its length: each token attends over all the ones before it."""
    lens = split.lens["plan"] + (0 if plan_only else split.lens["trace"])
    longest = int((lens if rows is None else lens[rows]).max(initial=0))
    return min(reference_limit(task, plan_only), LIMIT_FACTOR * longest + 1)


@dataclass
class Opts:
    """Sampling parameters: with the dataset and split, they key the stored responses."""
    temperature: float
    max_tokens: int  # generated tokens (after any prefix)
    seed: int = 0
    prefix_len: int = 0  # rollouts start after this many tokens of the stored trace


def load_model(store, run_id, device, which="latest"):
    """(model in eval mode, checkpoint dict without the optimizer state) of the run's latest or best
    checkpoint (eval.py samples it, report.py task draws its greedy response)."""
    ck = load_checkpoint(store, run_id, which=which)
    if ck is None and which == "best":
        raise StoreError(f"run {run_id!r} has no best checkpoint: only runs trained with --patience keep one "
                         f"(and only after their first evaluation); use --checkpoint latest")
    if ck is None:
        raise StoreError(f"run {run_id!r} has no checkpoint yet")
    model = model_from_config(ck["model_config"])
    model.load_state_dict(ck.pop("model"))
    ck.pop("optimizer", None)
    return model.to(device).eval(), ck


def task_response(store, run_id, which, doc, split_name, split, row, sample=0, max_tokens=0):
    """(label, ids, eos) of a run's response to the task at row of its split (report.py task): the
    sample-th of the responses stored for it at the run's checkpoint's step (eval.py's keys; of the
    setting with the lowest temperature, greedy first, then the most samples; none after a trace
    prefix), else a fresh greedy one sampled on the CPU up to max_tokens (else eval.py's limit)."""
    run = store.require_run(run_id)
    cfg = run["config"]
    name = (cfg.get("test_name") or cfg.get("train_name")) if split_name == "test" else cfg.get("train_name")
    if name != doc["_id"]:
        raise ConfigError(f"run {run_id!r} samples its {split_name} tasks from dataset {name!r}, not "
                          f"{doc['_id']!r}: draw one of those")
    pointer = run.get("best" if which == "best" else "checkpoint")
    if pointer is None:
        raise StoreError(f"run {run_id!r} has no {which} checkpoint")
    task_id, groups = int(split.ids[row]), {}
    for d in store.responses.find({"run_id": run_id, "step": pointer["step"], "task": task_id}):
        p = json.loads(d["pkey"])
        if (p["dataset"], p["uid"], p["split"], p.get("prefix_len", 0), p.get("checkpoint", "latest")) == \
                (doc["_id"], doc["uid"], split_name, 0, which):
            groups.setdefault(d["pkey"], []).append(d)
    where = f"run {run_id} at step {pointer['step']}" + (" (best)" if which == "best" else "")
    if groups:
        pick = min(groups.values(), key=lambda g: (json.loads(g[0]["pkey"])["temperature"], -len(g)))
        docs = sorted(pick, key=lambda d: d["sample"])
        if sample >= len(docs):
            raise ConfigError(f"{where} has {len(docs)} stored responses to task {task_id}: --sample must be below that")
        p, d = json.loads(docs[0]["pkey"]), docs[sample]
        return (f"{where}: sample {sample} of {len(docs)} stored (temperature {p['temperature']:g})",
                np.frombuffer(d["tokens"], DTYPE), d["eos"])
    device = torch.device("cpu")
    model, ck = load_model(store, run_id, device, which)
    limit = max_tokens or MAX_TOKENS.get((doc["task"], bool(ck["config"]["plan_only"])), 10000)
    (_, ids, eos), = rollouts(model, split, [(row, 0)], Opts(0.0, limit), 1, device)
    return f"{where}: greedy (none stored), up to {limit} tokens", ids, eos


def prompt_ids(split, row, prefix_len=0):
    """`<bos> prompt <sep>`, then the first prefix_len tokens of the sequence's stored (A*) trace: a
    rollout continues from there (the whole trace when it is shorter)."""
    prefix = split.get(row, "trace")[:prefix_len]
    return np.concatenate([[BOS], split.get(row, "prompt"), [SEP], prefix]).astype(np.int64)


def encdec_ids(split, row, prefix_len=0):
    """An encoder-decoder's (prompt `<bos> prompt <eos>`, response start `<bos>` and the trace prefix)."""
    prefix = split.get(row, "trace")[:prefix_len]
    return (np.concatenate([[BOS], split.get(row, "prompt"), [EOS]]).astype(np.int64),
            np.concatenate([[BOS], prefix]).astype(np.int64))


def rollouts(model, split, pairs, opts, batch_size, device, compile=None, on_collect=None):
    """Yield ((row, sample), ids, eos) for (row, sample) pairs of a split, as they finish; with
    opts.prefix_len, ids start with the given trace prefix. A response's random stream depends only
    on the seed, its task id and its sample index, so an interrupted evaluation resumes with the
    samples it would have drawn. on_collect: see decode.generate."""
    if not pairs:
        return
    rows = sorted({r for r, _ in pairs})
    where = {r: i for i, r in enumerate(rows)}
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else None
    keys = [(int(split.ids[r]) << 20) + s for r, s in pairs]
    sources = None
    if isinstance(model, EncoderDecoder):
        sources, starts = zip(*(encdec_ids(split, r, opts.prefix_len) for r in rows))
    else:
        starts = [prompt_ids(split, r, opts.prefix_len) for r in rows]
    for i, ids, eos in decode.generate(model, starts, [where[r] for r, _ in pairs], opts.max_tokens, opts.temperature,
                                       opts.seed, keys, batch_size, autocast=autocast,
                                       cache_dtype=torch.bfloat16 if cuda else None,
                                       compile=cuda if compile is None else compile, sources=sources,
                                       on_collect=on_collect):
        if opts.prefix_len:  # the response as scored and stored: the given prefix, then what was generated
            ids = np.concatenate([split.get(pairs[i][0], "trace")[:opts.prefix_len], ids]).astype(DTYPE)
        yield pairs[i], ids, eos


def batch_size_for(model, split, device, prefix_len=0):
    """Rows decoding at once, from the memory available (decode.auto_batch_size)."""
    prompt = int(split.lens["prompt"].max(initial=0)) + 2
    if isinstance(model, EncoderDecoder):  # the decoder starts at <bos>; each row may hold a prompt's cross keys
        return decode.auto_batch_size(model.cfg, 1 + prefix_len, device, source_len=prompt)
    return decode.auto_batch_size(model.cfg, prompt + prefix_len, device)


def reportable_tasks(doc, split, eval_tasks):
    """How many leading tasks of a test split results may be reported on when a run validates on its
    last eval_tasks: those before the validation tasks and before the wall layout the first of them
    is in (a layout's tasks are stored together)."""
    start = max(0, len(split.ids) - eval_tasks)
    task = tasks.of(doc["task"], doc.get("params", {}))
    layout = lambda r: (task.layout if task else lambda p: p)(split.get(r, "prompt")).tobytes()  # noqa: E731
    while 0 < start < len(split.ids) and layout(start - 1) == layout(start):
        start -= 1
    return start


def rollout_metrics(model, store, cfg, rank, world, device, use_cache):
    """For the trainer: rollouts on the validation tasks (the last cfg.eval_tasks test tasks), each rank a
    share, metrics over all of them: greedy, or cfg.eval_samples samples a task at temperature 1 (a task
    counts as solved when any sample solves it, as eval.py reports; the seed is fixed, so every evaluation
    draws with the same random streams and checkpoints differ by their weights alone). Rollouts stop at
    twice the longest reference response of these tasks (response_limit): an untrained model would
    otherwise run to the full limit. The dataset is read through the store's retries, from the local
    cache when use_cache."""
    name = cfg.test_name or cfg.train_name
    doc = store.call(get_dataset, name)
    checker = Checker(doc)
    split = store.call(load_split, name, "test", use_cache)
    rows = np.arange(max(0, len(split.ids) - cfg.eval_tasks), len(split.ids))
    opts = Opts(1.0 if cfg.eval_samples else 0.0, response_limit(doc["task"], cfg.plan_only, split, rows),
                seed=cfg.seed)
    mine = [(int(r), s) for r in rows[rank::world] for s in range(max(1, cfg.eval_samples))]
    size = batch_size_for(model, split, device)
    training = model.training
    model.eval()
    answers = {}
    for (r, _), ids, eos in rollouts(model, split, mine, opts, size, device):
        answers.setdefault(r, []).append((ids, eos))
    model.train(training)
    sums = score(checker, split, sorted(answers.items()))
    total = torch.tensor([sums[k] for k in SUM_FIELDS], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return summarize(dict(zip(SUM_FIELDS, total.tolist())), cfg.plan_only)
