"""The fast paths give what the simple ones give: vectorised data handling, logits at loss positions
only, padded lengths rounded up, the prefetching thread, bf16 autocast, activation checkpointing,
the DDP settings, torch.compile."""
import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import batches
import dataset
from batches import Batcher, Prefetcher
from conftest import make_toy_dataset, run_cli
from hparams import TrainConfig
from loss import STATS, loss_denominator, loss_terms, summarize
from model import ModelConfig, Transformer


def random_split(n=60, seed=0):
    rng = np.random.default_rng(seed)
    lens = {"prompt": rng.integers(1, 12, n), "trace": rng.integers(0, 30, n), "plan": rng.integers(1, 8, n)}
    flat = {p: rng.integers(4, 40, int(v.sum())).astype(dataset.DTYPE) for p, v in lens.items()}
    return dataset.Split(np.arange(n) * 3, lens, flat, {"score": rng.random(n)})


def slow_sequence(split, r, plan_only):
    parts = [split.get(r, p) for p in dataset.PARTS]
    return [dataset.BOS, *parts[0], dataset.SEP, *([] if plan_only else parts[1]), *parts[2], dataset.EOS]


def slow_collate(seqs, rows):
    """One row at a time, as the first version of the trainer did."""
    T = int(seqs.lengths[rows].max()) - 1
    x, y, plan = np.zeros((len(rows), T), np.int64), np.full((len(rows), T), -1, np.int64), np.zeros((len(rows), T), bool)
    for i, r in enumerate(rows):
        seq = seqs.tokens(r).astype(np.int64)
        n, p = len(seq) - 1, seqs.prompt_len[r]
        x[i, :n] = seq[:-1]
        y[i, p - 1:n] = seq[p:]
        plan[i, p - 1 + seqs.trace_len[r]:n] = True
    return x, y, plan


def tiny_model(vocab=40, dtype=torch.float64):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_head=2, d_ff=64, n_layer=2)).to(dtype)


def test_gather_equals_slicing():
    rng = np.random.default_rng(1)
    flat = rng.integers(0, 1000, 5000).astype(dataset.DTYPE)
    starts, lens = rng.integers(0, 4900, 300), rng.integers(0, 100, 300)
    want = np.concatenate([flat[s:s + n] for s, n in zip(starts, lens)])
    assert np.array_equal(dataset.gather(flat, starts, lens), want)
    assert np.array_equal(dataset.gather(flat, [10, 15, 15, 0, 30, 2], [5, 0, 7, 3, 0, 2]),
                          np.concatenate([flat[10:22], flat[0:3], flat[2:4]]))  # runs, empty segments
    assert len(dataset.gather(flat, [], [])) == 0


def test_select_and_build_equal_a_loop_over_sequences():
    split = random_split()
    rows = np.array([5, 2, 2, 40, 0, 59])
    sub = split.select(rows)
    for i, r in enumerate(rows):
        for p in dataset.PARTS:
            assert np.array_equal(sub.get(i, p), split.get(r, p))
    assert np.array_equal(sub.ids, split.ids[rows]) and np.array_equal(sub.extra["score"], split.extra["score"][rows])
    for plan_only in (False, True):
        seqs = batches.Sequences.build(split, rows, plan_only)
        for i, r in enumerate(rows):
            want = slow_sequence(split, r, plan_only)
            assert seqs.tokens(i).tolist() == want and seqs.lengths[i] == len(want)
            assert seqs.prompt_len[i] == split.lens["prompt"][r] + 2
            assert seqs.trace_len[i] == (0 if plan_only else split.lens["trace"][r])


@pytest.mark.parametrize("plan_only", [False, True])
def test_collate_equals_row_by_row_and_rounding_only_pads(plan_only):
    seqs = batches.Sequences.build(random_split(), np.arange(60), plan_only)
    rng = np.random.default_rng(2)
    for _ in range(20):
        rows = rng.choice(60, rng.integers(1, 9), replace=False)
        got, want = seqs.collate(rows), slow_collate(seqs, rows)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        x, y, plan = seqs.collate(rows, multiple=16)
        T = want[0].shape[1]
        assert x.shape[1] % 16 == 0 and x.shape[1] - T < 16
        assert np.array_equal(x[:, :T], want[0]) and (x[:, T:] == dataset.PAD).all()
        assert np.array_equal(y[:, :T], want[1]) and (y[:, T:] == -1).all() and not plan[:, T:].any()


def test_logits_at_kept_positions_equal_the_full_logits():
    model = tiny_model()
    x = torch.randint(0, 40, (3, 17))
    keep = torch.tensor([0, 5, 16, 17, 40, 50])
    torch.testing.assert_close(model(x, keep=keep), model(x).flatten(0, 1)[keep], rtol=1e-12, atol=1e-12)


def full_logits_stats(model, x, y, plan):
    """The loss as first written: logits everywhere, ignore_index for the rest."""
    logits = model(x).float()
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
    valid, plan = y.flatten() >= 0, plan.flatten()
    correct = (logits.argmax(-1).flatten() == y.flatten()) & valid
    return ce.sum(), torch.stack([ce[valid & ~plan].sum(), (valid & ~plan).sum(), ce[plan].sum(), plan.sum(),
                                  correct.sum()]).double()


def slow_sequence_terms(model, x, y, plan):
    """The reference's loss and exact-match counts, one sequence at a time from the full logits: each
    sequence's mean token loss, summed; sequences whose trace / plan / whole response is all argmax-right."""
    logits = model(x).float()
    loss, counts = 0.0, np.zeros(5)
    for b in range(len(x)):
        valid = y[b] >= 0
        ce = F.cross_entropy(logits[b][valid], y[b][valid], reduction="none")
        loss = loss + ce.mean()
        right = logits[b][valid].argmax(-1) == y[b][valid]
        in_plan = plan[b][valid]
        has_trace = bool((~in_plan).any())
        counts += [1, has_trace, has_trace and bool(right[~in_plan].all()), bool(right[in_plan].all()),
                   bool(right.all())]
    return loss, counts


@pytest.mark.parametrize("plan_only", [False, True])
def test_sequence_loss_and_exact_counts_equal_a_loop_over_sequences(plan_only):
    split = random_split()
    seqs = batches.Sequences.build(split, np.arange(60), plan_only)
    x, y, plan = (torch.from_numpy(a) for a in seqs.collate(np.arange(12)))
    model = tiny_model()
    # a model that gets some sequences exactly right: a few rows' targets set to its own argmax
    with torch.no_grad():
        guess = model(x).argmax(-1)
    y = y.clone()
    for b, part in ((0, None), (1, "trace"), (2, "plan"), (5, None)):
        where = (y[b] >= 0) & (True if part is None else (plan[b] if part == "plan" else ~plan[b]))
        y[b][where] = guess[b][where]
    want_loss, want_counts = slow_sequence_terms(model, x, y, plan)
    want_loss.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got_loss, stats = loss_terms(model, x, y, plan, contextlib.nullcontext(), loss_norm="sequence")
    torch.testing.assert_close(got_loss, want_loss)
    assert stats[5:].tolist() == want_counts.tolist()
    assert want_counts[4] >= 2 and want_counts[3] >= 3 and (plan_only or want_counts[2] >= 3)  # exact rows occur
    got_loss.backward()
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g)
    m = summarize(stats.double())
    assert m["sequences"] == 12 and m["response_exact"] == want_counts[4] / 12
    assert ("trace_exact" in m) == (not plan_only)


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_any_split_of_a_global_batch_gives_its_loss(norm):
    """Over ranks and micro-steps, the scaled losses (x world / denominator, then DDP's mean over ranks)
    add up to the global batch's loss: the mean of per-sequence means, or of all loss tokens."""
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    batch = np.arange(3, 19)
    model = tiny_model()
    x, y, plan = (torch.from_numpy(a) for a in seqs.collate(batch))
    want = slow_sequence_terms(model, x, y, plan)[0] / len(batch) if norm == "sequence" else \
        full_logits_stats(model, x, y, plan)[0] / (y >= 0).sum()
    cfg = TrainConfig(loss_norm=norm)
    for world, accum in ((1, 1), (2, 1), (1, 4), (2, 2), (4, 2)):
        total = loss_denominator(cfg, seqs, batch)
        got = 0.0
        for rank in range(world):
            for i in range(accum):
                rows = batches.rank_share(batch[i::accum], rank, world)
                if len(rows):
                    loss = loss_terms(model, *(torch.from_numpy(a) for a in seqs.collate(rows)), contextlib.nullcontext(),
                                      loss_norm=norm)[0]
                    got = got + loss * (world / total) / world
        torch.testing.assert_close(got, want)


def test_loss_at_kept_positions_equals_the_full_loss_with_gradients():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    x, y, plan = (torch.from_numpy(a) for a in seqs.collate(np.arange(8)))
    model = tiny_model()
    loss, stats = full_logits_stats(model, x, y, plan)
    loss.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    keep = torch.from_numpy(np.flatnonzero(y.numpy().ravel() >= 0))
    for k in (keep, None):  # given by the prefetcher, or found by loss_terms
        got, got_stats = loss_terms(model, x, y, plan, contextlib.nullcontext(), k)
        torch.testing.assert_close(got, loss)
        torch.testing.assert_close(got_stats[:5].double(), stats, rtol=1e-6, atol=0)  # fp32 sums in another order
    got.backward()
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g)


def test_rounded_length_and_token_budget_give_the_padded_loss():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    model = tiny_model()
    def total(batches, multiple):
        s = torch.zeros(STATS, dtype=torch.float64)
        for b in batches:
            s += loss_terms(model, *(torch.from_numpy(a) for a in seqs.collate(b, multiple)), contextlib.nullcontext())[1]
        return summarize(s)
    padded = total(np.array_split(np.random.default_rng(0).permutation(60), 6), 1)
    bucketed = total(batches.epoch_batches(seqs.lengths, 0, 0, rows=4, world=1, token_budget=100, window=4), 64)
    for k in ("loss", "trace_loss", "plan_loss", "accuracy", "tokens", "sequences", "trace_exact", "plan_exact",
              "response_exact"):
        assert bucketed[k] == pytest.approx(padded[k], rel=1e-6)


def test_token_budget_windows_cover_the_epoch_within_budget():
    lengths = np.random.default_rng(3).integers(50, 3000, 5000)
    for world in (1, 3):
        epoch = batches.epoch_batches(lengths, 1, 0, rows=2, world=world, token_budget=8000)
        assert len(np.unique(np.concatenate(epoch))) == sum(len(b) for b in epoch) > 0.99 * len(lengths)
        for b in epoch:
            assert len(b) >= world and all(len(s) * lengths[s].max() <= 8000 or len(s) == 1
                                           for s in (batches.rank_share(b, r, world) for r in range(world)))
        waste = sum(len(b) * lengths[b].max() for b in epoch) / sum(lengths[b].sum() for b in epoch) - 1
        assert waste < 0.05  # sorted windows: little padding


def test_prefetcher_hands_out_the_batchers_batches_and_position():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    cfg = TrainConfig(batch_size=3, grad_accum=2, seed=4)
    plain, ahead = Batcher(seqs, cfg, world=2), Prefetcher(Batcher(seqs, cfg, world=2), 1, torch.device("cpu"))
    try:
        for _ in range(25):  # several epochs
            batch = plain.next()
            got, micro = ahead.next()
            assert np.array_equal(got, batch) and ahead.state_dict() == plain.state_dict()
            for rows, (x, y, plan, keep) in zip(plain.micro_batches(batch, 1), micro):
                for a, b in zip((x, y, plan), seqs.collate(rows)):
                    assert np.array_equal(a.numpy(), b)
                assert np.array_equal(keep.numpy(), np.flatnonzero(y.numpy().ravel() >= 0))
        resumed = Batcher(seqs, cfg, world=2)
        resumed.load_state_dict(ahead.state_dict())  # what a checkpoint holds: the next batch follows
        assert np.array_equal(resumed.next(), plain.next())
    finally:
        ahead.close()


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    x, y, plan = (torch.from_numpy(a) for a in seqs.collate(np.arange(8)))
    model = tiny_model(dtype=torch.float32)
    fp32 = loss_terms(model, x, y, plan, contextlib.nullcontext())[1]
    bf16 = loss_terms(model, x, y, plan, torch.autocast("cpu", dtype=torch.bfloat16))[1]
    assert torch.equal(fp32[[1, 3]], bf16[[1, 3]])  # same tokens
    torch.testing.assert_close(bf16[[0, 2]] / bf16[[1, 3]], fp32[[0, 2]] / fp32[[1, 3]], rtol=2e-2, atol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randint(0, 40, (2, 23))
    grads = []
    for ckpt in (False, True):
        model = tiny_model()
        model.activation_checkpointing = ckpt
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_ddp_with_accumulation_equals_one_process(store, norm):
    """Bucket views, static graph and no_sync over micro-steps: the same training as one process."""
    make_toy_dataset(store.db)
    from test_train import FAST, assert_same_weights, losses, weights
    common = [*FAST, "--train-steps", "10", "--seed", "5", "--loss-norm", norm]
    run_cli("train.py", "single", "--run-id", "one", *common, "--batch-size", "4", "--grad-accum", "2")
    run_cli("train.py", "single", "--run-id", "two", *common, "--batch-size", "2", "--grad-accum", "2", nproc=2)
    assert_same_weights(weights(store, "one"), weights(store, "two"), exact=False)
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(store, "one"), losses(store, "two")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-4


@pytest.mark.slow
def test_compiled_model_gives_the_eager_loss():
    seqs = batches.Sequences.build(random_split(), np.arange(60), False)
    model = tiny_model(dtype=torch.float32)
    compiled = torch.compile(model, dynamic=True)
    for rows in (np.arange(4), np.arange(10, 17), np.arange(30, 33)):  # varying shapes, one compilation
        x, y, plan = (torch.from_numpy(a) for a in seqs.collate(rows))
        eager = loss_terms(model, x, y, plan, contextlib.nullcontext())
        fast = loss_terms(compiled, x, y, plan, contextlib.nullcontext())
        torch.testing.assert_close(fast[0], eager[0], rtol=1e-4, atol=1e-4)
        assert torch.equal(fast[1][[1, 3]], eager[1][[1, 3]])


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_ddp_token_budget_accumulation_equals_one_process(store, norm):
    """Two processes with 2 micro-steps each and a token budget train as one process with 4 micro-steps
    and the same budget: 4 shares of every global batch either way."""
    make_toy_dataset(store.db)
    from test_train import FAST, assert_same_weights, losses, weights
    common = [*FAST, "--train-steps", "10", "--seed", "3", "--loss-norm", norm, "--batch-size", "1", "--batch-tokens", "80"]
    run_cli("train.py", "single", "--run-id", "one", *common, "--grad-accum", "4")
    run_cli("train.py", "single", "--run-id", "two", *common, "--grad-accum", "2", nproc=2)
    assert_same_weights(weights(store, "one"), weights(store, "two"), exact=False)
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(store, "one"), losses(store, "two")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-4
