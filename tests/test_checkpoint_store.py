"""Checkpoint files: a save killed mid-write leaves the previous checkpoint loadable; a load never
takes a live trainer's upload."""
import os
import subprocess
import sys
import textwrap
import time

import torch

from checkpoint_store import load_checkpoint, put_checkpoint, save_checkpoint
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


def test_a_load_never_pulls_a_live_trainers_upload_from_under_it(store, pauses):
    """A loader that takes a trainer's upload for abandoned (the trainer was paused past its lease)
    clears the run's pointer to it before it deletes a chunk: the trainer, held until the loader has
    done both halves of that, finds its upload gone, writes it again, and the run's checkpoint stays
    whole. Before, the trainer could point the run at the chunks the loader was deleting."""
    store.runs.insert_one({"_id": "ck", "config": {}, "status": "running", "lease": None})
    save_checkpoint(store, "ck", 1, {"w": torch.ones(10), "step": 1})
    trainer = textwrap.dedent("""
        import torch, checkpoint_store
        from store import connect
        store = connect()
        assert store.acquire_lease("ck", "trainer", 600)
        w = torch.arange(16_000_000, dtype=torch.float32)  # past pymongo's first batch of chunks (48 MB)
        checkpoint_store.save_checkpoint(store, "ck", 2, {"w": w, "step": 2}, owner="trainer")
    """)
    loader = "import checkpoint_store, store; print(checkpoint_store.load_checkpoint(store.connect(), 'ck')['step'])"
    run = lambda script, *points: subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,  # noqa: E731
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                   env={**os.environ, **pauses.env(*points)})
    t = run(trainer, "checkpoint-2")
    pauses.wait("checkpoint-2", t)  # the upload written, not closed
    print("chunks at pause", store.db["checkpoints.chunks"].count_documents({}), store.get_run("ck"))
    store.runs.update_one({"_id": "ck"}, {"$set": {"lease.expires": 0}})  # the trainer paused past its lease
    r = run(loader, "stale-upload")
    pauses.wait("stale-upload", r)  # the loader has claimed the upload for removal, and waits
    pauses.release("checkpoint-2")
    t_out, t_err = t.communicate(timeout=300)
    print("after trainer", store.db["checkpoints.chunks"].count_documents({}), store.get_run("ck"), t_err)
    pauses.release("stale-upload")
    r_out, r_err = r.communicate(timeout=300)
    print("after loader", r_out, r_err)
    assert t.returncode == 0, t_err
    assert r.returncode == 0 and r_out.split() in (["1"], ["2"]), r_err
    ck = load_checkpoint(store, "ck")
    assert ck["step"] == 2 and torch.equal(ck["w"], torch.arange(16_000_000, dtype=torch.float32))
    assert store.get_run("ck")["pending_checkpoint"] is None
    assert store.db["checkpoints.files"].count_documents({}) == 1


def test_a_loader_whose_clock_runs_ahead_leaves_a_live_upload_alone(store, monkeypatch):
    """Leases are written and read on the database server's clock: a host whose clock is an hour
    ahead does not take a live trainer's upload for abandoned."""
    store.runs.insert_one({"_id": "ck", "config": {}, "status": "running", "lease": None})
    save_checkpoint(store, "ck", 1, {"step": 1})
    assert store.acquire_lease("ck", "trainer", 60)
    stream = store.fs.open_upload_stream("ck/2", metadata={"run_id": "ck", "step": 2}, chunk_size_bytes=4)
    stream.write(b"x" * 64)  # an upload in flight
    stream._flush()
    store.runs.update_one({"_id": "ck"}, {"$set": {"pending_checkpoint": stream._id}})
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    assert load_checkpoint(store, "ck")["step"] == 1
    assert store.get_run("ck")["pending_checkpoint"] == stream._id
    assert store.db["checkpoints.chunks"].count_documents({"files_id": stream._id}) == 16


def test_a_killed_import_of_a_new_run_leaks_no_chunks(store, pauses):
    """An import's upload is recorded as the new run's pending checkpoint before its first chunk:
    killed mid-write, the run is listed as `importing`, and drop-run, or the same import run again,
    removes its chunks."""
    script = ("import torch, checkpoint_store, store\n"
              "checkpoint_store.put_checkpoint(store.connect(), 'new', {}, {'w': torch.zeros(16_000_000)}, 5)\n")

    def killed_import():
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **pauses.env("import-upload")})
        pauses.wait("import-upload", proc)
        proc.kill()
        proc.wait()
        for p in pauses.folder.glob("import-upload.*"):
            p.unlink()
        assert store.db["checkpoints.chunks"].count_documents({}) > 0  # past pymongo's first batch of chunks
        assert store.get_run("new")["status"] == "importing"

    killed_import()
    store.drop_run("new")
    assert store.db["checkpoints.chunks"].count_documents({}) == 0 and store.get_run("new") is None
    killed_import()
    put_checkpoint(store, "new", {}, {"w": torch.ones(3), "step": 5}, 5)  # run again: no --replace needed
    assert store.get_run("new")["status"] == "imported" and load_checkpoint(store, "new")["step"] == 5
    [f] = store.db["checkpoints.files"].find()
    assert store.db["checkpoints.chunks"].count_documents({"files_id": {"$ne": f["_id"]}}) == 0
