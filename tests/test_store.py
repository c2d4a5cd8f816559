"""Store guarantees: atomic checkpoints, log replacement, leases; batching invariants."""
import subprocess
import sys
import textwrap

import numpy as np
import torch

import batches
from checkpoint_store import load_checkpoint, save_checkpoint
from conftest import ROOT


def test_checkpoint_killed_mid_write_leaves_previous_loadable(store, env):
    store.runs.insert_one({"_id": "ck", "config": {}, "status": "running"})
    save_checkpoint(store, "ck", 1, {"w": torch.ones(10), "step": 1})
    # a process that dies hard (no cleanup) half-way through writing the next checkpoint
    script = textwrap.dedent("""
        import os, torch, checkpoint_store
        from store import connect
        store = connect()
        written = [0]
        def dying_write(self, data):
            self.stream.write(bytes(data))
            written[0] += len(data)
            if written[0] > 40_000_000:  # well into the big tensor (pymongo sends chunks in 32 MB batches)
                os._exit(9)
            return len(data)
        checkpoint_store._Writer.write = dying_write
        checkpoint_store.save_checkpoint(store, "ck", 2, {"w": torch.randn(16_000_000), "step": 2})
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    assert store.get_run("ck")["pending_checkpoint"] is not None
    assert store.db["checkpoints.chunks"].count_documents({}) > 1  # partial chunks were written
    ck = load_checkpoint(store, "ck")
    assert ck["step"] == 1 and torch.equal(ck["w"], torch.ones(10))
    # loading cleaned up the partial write; the next save replaces the old one
    assert store.get_run("ck")["pending_checkpoint"] is None
    save_checkpoint(store, "ck", 3, {"w": torch.zeros(3), "step": 3})
    assert load_checkpoint(store, "ck")["step"] == 3
    assert store.db["checkpoints.files"].count_documents({}) == 1


def test_log_rewrite_replaces_and_truncate_drops_later_steps(store):
    for step in (10, 20, 30):
        store.log("r", step, "train", {"loss": float(step)})
    store.log("r", 20, "train", {"loss": -1.0})
    store.truncate_logs("r", 20)
    assert [(x["step"], x["loss"]) for x in store.get_logs("r")] == [(10, 10.0), (20, -1.0)]


def test_lease_is_exclusive_until_it_expires(store):
    store.runs.insert_one({"_id": "l", "config": {}, "lease": None})
    assert store.acquire_lease("l", "a", 600)
    assert not store.acquire_lease("l", "b", 600)
    assert store.acquire_lease("l", "a", 600)  # the holder renews
    import time
    store.runs.update_one({"_id": "l"}, {"$set": {"lease.expires": time.time() - 1}})  # "a" died 10 minutes ago
    assert store.acquire_lease("l", "b", 600)
    assert not store.acquire_lease("l", "a", 600)


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
