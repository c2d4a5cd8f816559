"""Checkpoint files: a save killed mid-write leaves the previous checkpoint loadable."""
import subprocess
import sys
import textwrap

import torch

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
