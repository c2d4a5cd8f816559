"""Rollouts of a model on a dataset's tasks: each continues `<bos> prompt <sep>` (and an optional
prefix of the stored trace) through the sampling engine (decode.py); and the greedy rollout metrics
a trainer logs at its evaluations (train.py --eval-tasks) on its validation tasks.

Validation tasks: the last eval_tasks tasks of the run's test split. A trainer selects its best
checkpoint on them (--patience), so results are reported only on the tasks before them, and before
the wall layout they start in (reportable_tasks): no reported task shares a layout with them."""
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

import decode
import tasks
from dataset import BOS, DTYPE, SEP, get_dataset, load_split
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


def prompt_ids(split, row, prefix_len=0):
    """`<bos> prompt <sep>`, then the first prefix_len tokens of the sequence's stored (A*) trace: a
    rollout continues from there (the whole trace when it is shorter)."""
    prefix = split.get(row, "trace")[:prefix_len]
    return np.concatenate([[BOS], split.get(row, "prompt"), [SEP], prefix]).astype(np.int64)


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
    for i, ids, eos in decode.generate(model, [prompt_ids(split, r, opts.prefix_len) for r in rows],
                                       [where[r] for r, _ in pairs], opts.max_tokens, opts.temperature, opts.seed,
                                       keys, batch_size, autocast=autocast,
                                       cache_dtype=torch.bfloat16 if cuda else None,
                                       compile=cuda if compile is None else compile, on_collect=on_collect):
        if opts.prefix_len:  # the response as scored and stored: the given prefix, then what was generated
            ids = np.concatenate([split.get(pairs[i][0], "trace")[:opts.prefix_len], ids]).astype(DTYPE)
        yield pairs[i], ids, eos


def batch_size_for(model, split, device, prefix_len=0):
    """Rows decoding at once, from the memory available (decode.auto_batch_size)."""
    return decode.auto_batch_size(model.cfg, int(split.lens["prompt"].max(initial=0)) + 2 + prefix_len, device)


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
    """For the trainer: greedy rollouts on the validation tasks (the last cfg.eval_tasks test tasks),
    each rank a share, metrics over all of them. Rollouts stop at twice the longest reference response
    of these tasks (response_limit): an untrained model would otherwise run to the full limit. The dataset is read through the store's retries, from the local cache when use_cache."""
    name = cfg.test_name or cfg.train_name
    doc = store.call(get_dataset, name)
    checker = Checker(doc)
    split = store.call(load_split, name, "test", use_cache)
    rows = np.arange(max(0, len(split.ids) - cfg.eval_tasks), len(split.ids))
    opts = Opts(0.0, response_limit(doc["task"], cfg.plan_only, split, rows))
    mine = [(int(r), 0) for r in rows[rank::world]]
    size = batch_size_for(model, split, device)
    training = model.training
    model.eval()
    answers = [(r, [(ids, eos)]) for (r, _), ids, eos in rollouts(model, split, mine, opts, size, device)]
    model.train(training)
    sums = score(checker, split, answers)
    total = torch.tensor([sums[k] for k in SUM_FIELDS], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return summarize(dict(zip(SUM_FIELDS, total.tolist())), cfg.plan_only)
