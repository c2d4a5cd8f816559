"""Batching invariants: seeded epochs that cover every sequence and balance ranks, token budgets,
micro-batches that are never empty."""
import numpy as np
import pytest

import batches
from batches import Batcher
from hparams import TrainConfig


def test_epoch_batches_are_seeded_cover_the_epoch_and_balance_ranks():
    lengths = np.random.default_rng(0).integers(10, 500, 1000)
    a = batches.epoch_batches(lengths, seed=1, epoch=0, rows=4, world=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, batches.epoch_batches(lengths, 1, 0, 4, 2)))
    b = batches.epoch_batches(lengths, seed=1, epoch=1, rows=4, world=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))
    seen = np.concatenate(a)
    assert len(seen) == len(set(seen.tolist())) == 1000  # every sequence once
    for batch in a:
        shares = [batches.rank_share(batch, r, 2) for r in range(2)]
        padded = [len(s) * lengths[s].max() for s in shares]
        assert len(shares[0]) == len(shares[1]) == 4
        assert max(padded) <= 1.2 * min(padded) + 50  # balanced: neither rank waits long on the other
    # length-sorted windows waste far less than random batches
    waste = lambda bs: sum(len(x) * lengths[x].max() - lengths[x].sum() for x in bs) / lengths.sum()
    rand = np.array_split(np.random.default_rng(0).permutation(1000), 125)
    assert waste(a) < 0.1 < waste(rand)


def test_token_budget_batches_fit_the_budget_per_rank():
    lengths = np.random.default_rng(1).integers(10, 500, 999)
    epoch = batches.epoch_batches(lengths, seed=0, epoch=0, rows=1, world=3, token_budget=2000)
    for batch in epoch:
        assert len(batch) >= 3
        for r in range(3):
            share = batches.rank_share(batch, r, 3)
            assert len(share) * lengths[share].max() <= max(2000, lengths[share].max())
    assert sum(len(b) for b in epoch) >= 999 - 2


@pytest.mark.parametrize("n,world,accum,rows,budget", [
    (203, 1, 4, 2, 0), (203, 2, 4, 2, 0), (205, 2, 3, 1, 0), (17, 3, 2, 1, 0),  # uneven sizes, partial last batches
    (203, 1, 4, 2, 20), (203, 2, 2, 2, 20), (64, 2, 3, 1, 5)])  # token budgets below the longest sequence
def test_every_micro_batch_of_every_rank_is_non_empty(n, world, accum, rows, budget):
    lengths = np.random.default_rng(n).integers(8, 42, n)
    seqs = type("Seqs", (), {"lengths": lengths, "bucket_lengths": lengths})()
    cfg = TrainConfig(batch_size=rows, grad_accum=accum, batch_tokens=budget, seed=1)
    b = Batcher(seqs, cfg, world)
    seen = []
    for _ in range(3 * n):  # several epochs
        batch = b.next()
        shares = [m for r in range(world) for m in b.micro_batches(batch, r)]
        assert all(len(m) > 0 for m in shares)
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())  # each row once
        if budget:
            assert all(len(m) == 1 or len(m) * lengths[m].max() <= budget for m in shares)
        seen += batch.tolist() if b.epoch == 0 else []
    assert len(seen) >= n - world * accum * max(rows, 1) * 2  # only an epoch's last few are skipped
