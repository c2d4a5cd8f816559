"""Training end to end: single runs, exact resume, DDP equivalence, refusals."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from conftest import ROOT, make_toy_dataset, run_cli
from train import TrainConfig

FAST = ["--train-name", "toy.copy", "--model-size", "tiny", "--warmup-steps", "5", "--lr", "1e-3", "--log-interval", "5",
        "--eval-interval", "20", "--checkpoint-interval", "10", "--num-test-sequences", "16"]


def weights(st, run_id):
    return st.load_checkpoint(run_id)["model"]


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def losses(st, run_id):
    return [(r["split"], r["step"], r["loss"], r["accuracy"]) for r in st.get_logs(run_id)]


def test_single_run_logs_checkpoints_and_lists(st):
    make_toy_dataset(st.db)
    r = run_cli("train.py", "single", "--run-id", "one", *FAST, "--train-steps", "20")
    assert "step 20/20" in r.stdout and "test loss" in r.stdout
    run = st.get_run("one")
    assert run["status"] == "finished" and run["step"] == 20
    assert run["config"] == TrainConfig.from_dict(run["config"]).to_dict()  # stored exactly as to_dict()
    steps = [(s, n) for s, n, *_ in losses(st, "one")]
    assert steps == [("test", 20), ("train", 5), ("train", 10), ("train", 15), ("train", 20)]
    first, last = losses(st, "one")[1][2], losses(st, "one")[-1][2]
    assert last < first  # it learns
    ck = st.load_checkpoint("one")
    assert ck["step"] == 20 and set(ck) >= {"model", "optimizer", "scheduler", "data", "rng"}
    out = run_cli("admin.py", "list-all").stdout
    assert "one" in out and "finished" in out and "20/20" in out


def test_kill_and_resume_equals_uninterrupted(st):
    make_toy_dataset(st.db)
    args = [*FAST, "--train-steps", "40", "--seed", "3"]
    run_cli("train.py", "single", "--run-id", "straight", *args)
    # second run: killed right after the step-35 log line (checkpoint at 30), then relaunched
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "killed", *args, "--lease-seconds", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 35/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert st.get_run("killed")["checkpoint"]["step"] == 30
    assert ("train", 35) in [(s, n) for s, n, *_ in losses(st, "killed")]  # written after the checkpoint
    import time
    time.sleep(1.1)  # let the dead trainer's lease expire
    r = run_cli("train.py", "single", "--run-id", "killed", *args)
    assert "resuming killed from step 30" in r.stdout
    assert_same_weights(weights(st, "straight"), weights(st, "killed"))
    assert losses(st, "straight") == losses(st, "killed")  # replaced, not duplicated


def test_two_process_ddp_equals_one_process_on_same_global_batch(st):
    make_toy_dataset(st.db)
    common = [*FAST, "--train-steps", "10", "--seed", "1"]
    run_cli("train.py", "single", "--run-id", "w1", *common, "--batch-size", "8")
    run_cli("train.py", "single", "--run-id", "w2", *common, "--batch-size", "4", nproc=2)
    assert st.get_run("w2")["world_size"] == 2
    assert_same_weights(weights(st, "w1"), weights(st, "w2"), exact=False)
    for (s1, n1, l1, a1), (s2, n2, l2, a2) in zip(losses(st, "w1"), losses(st, "w2")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-4 and abs(a1 - a2) < 1e-6


def test_grad_accumulation_equals_bigger_batch(st):
    make_toy_dataset(st.db)
    common = [*FAST, "--train-steps", "10", "--seed", "2"]
    run_cli("train.py", "single", "--run-id", "big", *common, "--batch-size", "8")
    run_cli("train.py", "single", "--run-id", "acc", *common, "--batch-size", "2", "--grad-accum", "4")
    assert_same_weights(weights(st, "big"), weights(st, "acc"), exact=False)
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(st, "big"), losses(st, "acc")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-5


def test_relaunch_with_other_hyper_parameters_is_refused(st):
    make_toy_dataset(st.db)
    run_cli("train.py", "single", "--run-id", "cfg", *FAST, "--train-steps", "5")
    r = run_cli("train.py", "single", "--run-id", "cfg", *FAST, "--train-steps", "5", "--lr", "5e-4", check=False)
    assert r.returncode != 0 and "lr" in r.stderr and "other hyper-parameters" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_live_run_id_is_refused_until_its_lease_expires(st):
    make_toy_dataset(st.db)
    import socket
    st.start_run("busy", TrainConfig(train_name="toy.copy", model_size="tiny", train_steps=5).to_dict(), "other:1:x", 600.0,
                 1, socket.gethostname())
    args = ["train.py", "single", "--run-id", "busy", "--train-name", "toy.copy", "--model-size", "tiny", "--train-steps", "5"]
    r = run_cli(*args, check=False)
    assert r.returncode != 0 and "being trained by other:1:x" in r.stderr
    import time
    st.runs.update_one({"_id": "busy"}, {"$set": {"lease.expires": time.time() - 1}})  # its holder died long ago
    run_cli(*args)
    assert st.get_run("busy")["status"] == "finished"


def test_failing_run_records_failed_status(st):
    make_toy_dataset(st.db)
    r = run_cli("train.py", "single", "--run-id", "bad", *FAST, "--train-steps", "5", "--min-reasoning-len", "999",
                check=False)
    assert r.returncode != 0 and "too few sequences" in r.stderr
    run = st.get_run("bad")
    assert run["status"] == "failed" and "too few sequences" in run["error"]


def test_start_checkpoint_initialises_weights_with_step_reset(st):
    make_toy_dataset(st.db)
    run_cli("train.py", "single", "--run-id", "base", *FAST, "--train-steps", "10")
    r = run_cli("train.py", "single", "--run-id", "tuned", *FAST, "--train-steps", "5", "--start-checkpoint", "base")
    assert "initialised from base (step 10)" in r.stdout
    assert st.get_run("tuned")["step"] == 5
    r = run_cli("train.py", "single", "--run-id", "orphan", *FAST, "--train-steps", "5", "--start-checkpoint", "nope",
                check=False)
    assert r.returncode != 0 and "nope" in r.stderr


def test_dry_run_prints_config_without_touching_the_database(monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/none")
    r = run_cli("train.py", "single", "--run-id", "dry", "--lr", "3e-4", "--plan-only", "--dry-run")
    cfg = json.loads(r.stdout)
    assert cfg["lr"] == 3e-4 and cfg["plan_only"] is True and cfg["run_id"] == "dry"


@pytest.mark.parametrize("flags,msg", [
    (["--batch-size", "0"], "batch_size"), (["--model-size", "huge"], "model_size"),
    (["--lr-schedule", "linear"], "lr_schedule"), (["--train-name", "a/b"], "invalid dataset name"),
])
def test_bad_flags_give_one_line_errors(flags, msg):
    r = run_cli("train.py", "single", "--run-id", "x", *flags, "--dry-run", check=False)
    assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bucketed_batches_give_the_padded_loss(st):
    """Per-token loss over the data is the same whether batches are length-sorted or padded at random."""
    from model import ModelConfig, Transformer
    from train import loss_terms, summarize
    make_toy_dataset(st.db, n_train=64)
    split = data.load_split(st.db, "toy.copy", "train")
    seqs = data.Sequences.build(split, np.arange(64), plan_only=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=24, d_model=32, n_head=2, d_ff=64, n_layer=2)).double()
    import contextlib
    def total(batches):
        s = torch.zeros(5, dtype=torch.float64)
        for b in batches:
            s += loss_terms(model, *(torch.from_numpy(a) for a in seqs.collate(b)), contextlib.nullcontext())[1]
        return summarize(s)
    bucketed = data.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=0, window=8)
    padded = np.array_split(np.random.default_rng(0).permutation(64), 8)
    budget = data.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=120)
    a, b, c = total(bucketed), total(padded), total(budget)
    for k in ("loss", "trace_loss", "plan_loss", "accuracy", "tokens"):
        assert a[k] == pytest.approx(b[k], rel=1e-6) and c[k] == pytest.approx(b[k], rel=1e-6)
    pad = lambda bs: sum(len(x) * seqs.lengths[x].max() for x in bs)
    assert pad(bucketed) < pad(padded)
    assert sum(len(x) for x in budget) == 64 and all(len(x) * seqs.lengths[x].max() <= 120 for x in budget)
