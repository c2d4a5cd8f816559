"""Training end to end: single runs, exact resume, DDP equivalence, refusals."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import batches
import dataset
from checkpoint_store import load_checkpoint, save_checkpoint
from conftest import FAST, ROOT, adam_steps, assert_same_weights, losses, make_toy_dataset, run_cli, weights
from hparams import TrainConfig

def test_single_run_logs_checkpoints_and_lists(store):
    make_toy_dataset(store.db)
    r = run_cli("train.py", "single", "--run-id", "one", *FAST, "--train-steps", "20")
    assert "step 20/20" in r.stdout and "test loss" in r.stdout
    run = store.get_run("one")
    assert run["status"] == "finished" and run["step"] == 20
    assert run["config"] == TrainConfig.from_dict(run["config"]).to_dict()  # stored exactly as to_dict()
    steps = [(s, n) for s, n, *_ in losses(store, "one")]
    assert steps == [("test", 20), ("train", 5), ("train", 10), ("train", 15), ("train", 20)]
    first, last = losses(store, "one")[1][2], losses(store, "one")[-1][2]
    assert last < first  # it learns
    ck = load_checkpoint(store, "one")
    assert ck["step"] == 20 and set(ck) >= {"model", "optimizer", "scheduler", "data", "rng"}
    out = run_cli("admin.py", "list-all").stdout
    assert "one" in out and "finished" in out and "20/20" in out


def test_kill_and_resume_equals_uninterrupted(store, pauses):
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", "40", "--seed", "3"]
    run_cli("train.py", "single", "--run-id", "straight", *args)
    # second run: killed where its test hook holds it, right after the step-35 log (checkpoint at 30)
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "killed", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, env={**os.environ, **pauses.env("step-35")})
    pauses.wait("step-35", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store.get_run("killed")["checkpoint"]["step"] == 30
    assert ("train", 35) in [(s, n) for s, n, *_ in losses(store, "killed")]  # written after the checkpoint
    store.runs.update_one({"_id": "killed"}, {"$set": {"lease.expires": 0}})  # as if its lease had run out
    r = run_cli("train.py", "single", "--run-id", "killed", *args)
    assert "resuming killed from step 30" in r.stdout
    assert_same_weights(weights(store, "straight"), weights(store, "killed"))
    assert losses(store, "straight") == losses(store, "killed")  # replaced, not duplicated


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_two_process_ddp_equals_one_process_on_same_global_batch(store, norm):
    make_toy_dataset(store.db)
    common = [*FAST, "--train-steps", "10", "--seed", "1", "--loss-norm", norm]
    run_cli("train.py", "single", "--run-id", "w1", *common, "--batch-size", "8")
    run_cli("train.py", "single", "--run-id", "w2", *common, "--batch-size", "4", nproc=2)
    assert store.get_run("w2")["world_size"] == 2
    assert_same_weights(weights(store, "w1"), weights(store, "w2"), exact=False)
    for (s1, n1, l1, a1), (s2, n2, l2, a2) in zip(losses(store, "w1"), losses(store, "w2")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-4 and abs(a1 - a2) < 1e-6


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_grad_accumulation_equals_bigger_batch(store, norm):
    make_toy_dataset(store.db)
    common = [*FAST, "--train-steps", "10", "--seed", "2", "--loss-norm", norm]
    run_cli("train.py", "single", "--run-id", "big", *common, "--batch-size", "8")
    run_cli("train.py", "single", "--run-id", "acc", *common, "--batch-size", "2", "--grad-accum", "4")
    assert_same_weights(weights(store, "big"), weights(store, "acc"), exact=False)
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(store, "big"), losses(store, "acc")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-5


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_token_budget_accumulation_equals_two_processes(store, norm):
    """The token budget is per micro-step and process: budget B over 2 accumulation steps in one process
    trains as 2 processes with budget B each (both cut every global batch into 2 shares)."""
    make_toy_dataset(store.db)
    common = [*FAST, "--train-steps", "10", "--seed", "3", "--loss-norm", norm, "--batch-size", "1", "--batch-tokens", "80"]
    run_cli("train.py", "single", "--run-id", "accum", *common, "--grad-accum", "2")
    run_cli("train.py", "single", "--run-id", "ranks", *common, nproc=2)
    assert_same_weights(weights(store, "accum"), weights(store, "ranks"), exact=False)
    for (s1, n1, l1, _), (s2, n2, l2, _) in zip(losses(store, "accum"), losses(store, "ranks")):
        assert (s1, n1) == (s2, n2) and abs(l1 - l2) < 1e-5


def test_the_two_loss_normalisations_train_differently(store):
    """So the equivalence tests above compare two distinct trainings, not one under two names."""
    make_toy_dataset(store.db)
    common = [*FAST, "--train-steps", "5", "--seed", "1", "--batch-size", "8"]
    run_cli("train.py", "single", "--run-id", "seq", *common)
    run_cli("train.py", "single", "--run-id", "tok", *common, "--loss-norm", "token")
    a, b = weights(store, "seq"), weights(store, "tok")
    assert any(not torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_relaunch_with_other_hyper_parameters_is_refused(store):
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "cfg", *FAST, "--train-steps", "5")
    r = run_cli("train.py", "single", "--run-id", "cfg", *FAST, "--train-steps", "5", "--lr", "5e-4", check=False)
    assert r.returncode != 0 and "lr" in r.stderr and "other hyper-parameters" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_live_run_id_is_refused_until_its_lease_expires(store):
    make_toy_dataset(store.db)
    import socket
    store.start_run("busy", TrainConfig(train_name="toy.copy", model_size="tiny", train_steps=5).to_dict(), "other:1:x", 600.0,
                 1, socket.gethostname())
    args = ["train.py", "single", "--run-id", "busy", "--train-name", "toy.copy", "--model-size", "tiny", "--train-steps", "5"]
    r = run_cli(*args, check=False)
    assert r.returncode != 0 and "being trained by other:1:x" in r.stderr
    import time
    store.runs.update_one({"_id": "busy"}, {"$set": {"lease.expires": time.time() - 1}})  # its holder died long ago
    run_cli(*args)
    assert store.get_run("busy")["status"] == "finished"


def test_a_launch_failing_before_step_1_leaves_no_run(store):
    """--num-train-sequences 4 with a batch of 8 used to leave a `failed` run at step 0 that refused the
    corrected launch (its hyper-parameters differ)."""
    make_toy_dataset(store.db)
    r = run_cli("train.py", "single", "--run-id", "bad", *FAST, "--train-steps", "5", "--num-train-sequences", "4",
                check=False)
    assert r.returncode == 1 and "too few sequences" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert store.get_run("bad") is None
    r = run_cli("train.py", "single", "--run-id", "bad", *FAST, "--train-steps", "5", "--num-train-sequences", "16")
    assert store.get_run("bad")["status"] == "finished"
    assert "finished bad at step 5" in r.stdout and "eval.py --run-id bad" in r.stdout and "report.py loss" in r.stdout


def test_start_checkpoint_continues_weights_and_optimizer_with_step_reset(store):
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "base", *FAST, "--train-steps", "10")
    base = load_checkpoint(store, "base")
    # the reference: weights and AdamW moments continue, the step counter and LR schedule restart,
    # the hyper-parameters are the new run's
    r = run_cli("train.py", "single", "--run-id", "tuned", *FAST, "--train-steps", "5", "--start-checkpoint", "base",
                "--lr", "5e-4", "--weight-decay", "0.02")
    assert "initialised from base (latest checkpoint, step 10): weights and optimizer state" in r.stdout
    assert store.get_run("tuned")["step"] == 5 and store.get_run("tuned")["config"]["start_optimizer"] is True
    tuned = load_checkpoint(store, "tuned")
    assert adam_steps(base) == {10.0} and adam_steps(tuned) == {15.0}  # moments carried on
    assert tuned["scheduler"]["last_epoch"] == 5
    groups = tuned["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [5e-4, 5e-4] and [g["weight_decay"] for g in groups] == [0.02, 0.02]
    assert groups[0]["lr"] == pytest.approx(TrainConfig(lr=5e-4, warmup_steps=5, train_steps=5).lr_at(5))
    # weights only: fresh AdamW moments
    r = run_cli("train.py", "single", "--run-id", "fresh", *FAST, "--train-steps", "5", "--start-checkpoint", "base",
                "--no-start-optimizer")
    assert "initialised from base (latest checkpoint, step 10): weights only" in r.stdout
    assert adam_steps(load_checkpoint(store, "fresh")) == {5.0}
    r = run_cli("train.py", "single", "--run-id", "orphan", *FAST, "--train-steps", "5", "--start-checkpoint", "nope",
                check=False)
    assert r.returncode != 0 and "nope" in r.stderr
    r = run_cli("train.py", "single", "--run-id", "misfit", *FAST, "--train-steps", "5", "--start-checkpoint", "base",
                "--model-size", "xs", check=False)
    assert r.returncode != 0 and "has another model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_every_rank_starts_from_the_start_checkpoint_rank_0_picked(store, pauses):
    """The start run saves a newer checkpoint after rank 0 read its start checkpoint and before rank 1
    did: both ranks still start from one checkpoint (the newer one, rank 0 picking again once the one
    it read is gone), and the run trains as one started from that checkpoint undisturbed."""
    make_toy_dataset(store.db)
    base = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "base", *FAST, "--train-steps", "20"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ, **pauses.env("step-10")})
    pauses.wait("step-10", base)  # its step-10 checkpoint saved
    ddp = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py", "single", *FAST,
           "--train-steps", "5", "--log-interval", "1", "--batch-size", "4", "--start-checkpoint", "base"]
    tuned = subprocess.Popen([sys.executable, *ddp, "--run-id", "tuned"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, **pauses.env("claimed")})
    pauses.wait("claimed", tuned)  # rank 0 has read base's step-10 checkpoint; rank 1 has read nothing yet
    pauses.release("step-10")
    assert base.wait(300) == 0 and store.get_run("base")["checkpoint"]["step"] == 20
    pauses.release("claimed")
    out, err = tuned.communicate(timeout=300)
    assert tuned.returncode == 0, err[-3000:]
    assert "initialised from base (latest checkpoint, step 20)" in out
    run_cli(*ddp, "--run-id", "undisturbed")
    assert losses(store, "tuned") == losses(store, "undisturbed")  # rank 1 trained as rank 0: the same AdamW state
    assert adam_steps(load_checkpoint(store, "tuned")) == {25.0}


def test_start_checkpoint_from_a_run_with_decay_on_matrices_only(store):
    """Both decay choices keep one optimizer layout: a run can start from the other's AdamW state."""
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "mat", *FAST, "--train-steps", "5", "--decay-params", "matrices")
    assert [g["weight_decay"] for g in load_checkpoint(store, "mat")["optimizer"]["param_groups"]] == [0.01, 0.0]
    run_cli("train.py", "single", "--run-id", "all", *FAST, "--train-steps", "5", "--start-checkpoint", "mat")
    ck = load_checkpoint(store, "all")
    assert [g["weight_decay"] for g in ck["optimizer"]["param_groups"]] == [0.01, 0.01] and adam_steps(ck) == {10.0}


def test_defaults_and_sweep_files_train_as_the_reference():
    import sweep
    cfg = TrainConfig()
    assert (cfg.loss_norm, cfg.decay_params, cfg.grad_clip, cfg.start_optimizer) == ("sequence", "all", 0.0, True)
    for k in (1, 2, 3):
        for i in range(3):
            c = sweep.load(str(ROOT / f"config/sweep/sokoban-7722-m-trace-plan-100k-step-{k}.json"), i)
            assert c.start_checkpoint and c.start_optimizer and c.loss_norm == "sequence" and c.grad_clip == 0
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("loss_norm", "decay_params", "start_optimizer")}
    legacy = TrainConfig.from_stored(old)  # stored before the keys existed: the old behaviour
    assert (legacy.loss_norm, legacy.decay_params, legacy.start_optimizer) == ("token", "matrices", False)
    assert TrainConfig.from_stored(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_stored({**old, "loss_normalisation": "token"})


def test_a_run_stored_before_the_new_defaults_resumes_as_it_trained(store):
    """A run made by the previous version (no loss_norm / decay_params / start_optimizer in its config,
    grad_clip 1 by default, a 5-entry log accumulator), killed and relaunched with the command that made
    it, resumes with token-mean loss, decay on matrices and clipping: it ends as an uninterrupted run
    with those settings."""
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", "20", "--seed", "3"]
    old_flags = ["--loss-norm", "token", "--decay-params", "matrices", "--grad-clip", "1"]
    run_cli("train.py", "single", "--run-id", "straight", *args, *old_flags)
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "old", *args, *old_flags,
                             "--lease-seconds", "1"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 15/"):  # the step-10 checkpoint is written
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    # make it what the previous version stored
    new_keys = {"config.loss_norm": "", "config.decay_params": "", "config.start_optimizer": ""}
    store.runs.update_one({"_id": "old"}, {"$unset": new_keys})
    ck = load_checkpoint(store, "old")
    ck["log_acc"] = ck.pop("log_sums")[:5]  # the key's old name, and its size before the exact-sequence counts
    ck["config"] = {k: v for k, v in ck["config"].items() if k not in ("loss_norm", "decay_params", "start_optimizer")}
    save_checkpoint(store, "old", ck["step"], ck)
    import time
    time.sleep(1.1)  # let the dead trainer's lease expire
    r = run_cli("train.py", "single", "--run-id", "old", *args)  # the old command: no new flags
    assert "resuming old from step 10" in r.stdout
    cfg = store.get_run("old")["config"]
    assert (cfg["loss_norm"], cfg["decay_params"], cfg["grad_clip"], cfg["start_optimizer"]) == ("token", "matrices", 1.0, False)
    assert_same_weights(weights(store, "straight"), weights(store, "old"))
    assert losses(store, "straight") == losses(store, "old")
    r = run_cli("train.py", "single", "--run-id", "old", *args, "--loss-norm", "sequence", check=False)
    assert r.returncode != 0 and "loss_norm: 'token' -> 'sequence'" in r.stderr


def test_logs_hold_exact_sequence_fractions(store):
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "ex", *FAST, "--train-steps", "5")
    for rec in store.get_logs("ex"):
        assert rec["sequences"] > 0 and 0 <= rec["response_exact"] <= rec["plan_exact"] <= 1
        assert rec["response_exact"] <= rec["trace_exact"] <= 1
    run_cli("train.py", "single", "--run-id", "ex-plan", *FAST, "--train-steps", "5", "--plan-only")
    assert all("trace_exact" not in rec and "plan_exact" in rec for rec in store.get_logs("ex-plan"))


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


def test_bucketed_batches_give_the_padded_loss(store):
    """Per-token loss over the data is the same whether batches are length-sorted or padded at random."""
    from model import ModelConfig, Transformer
    import loss
    from loss import loss_terms, summarize
    make_toy_dataset(store.db, n_train=64)
    split = dataset.load_split(store.db, "toy.copy", "train")
    seqs = batches.Sequences.build(split, np.arange(64), plan_only=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=24, d_model=32, n_head=2, d_ff=64, n_layer=2)).double()
    import contextlib
    def total(batches):
        s = torch.zeros(loss.STATS, dtype=torch.float64)
        for b in batches:
            s += loss_terms(model, *(torch.from_numpy(a) for a in seqs.collate(b)), contextlib.nullcontext())[1]
        return summarize(s)
    bucketed = batches.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=0, window=8)
    padded = np.array_split(np.random.default_rng(0).permutation(64), 8)
    budget = batches.epoch_batches(seqs.lengths, 0, 0, rows=8, world=1, token_budget=120)
    a, b, c = total(bucketed), total(padded), total(budget)
    for k in ("loss", "trace_loss", "plan_loss", "accuracy", "tokens", "sequences", "trace_exact", "plan_exact",
              "response_exact"):
        assert a[k] == pytest.approx(b[k], rel=1e-6) and c[k] == pytest.approx(b[k], rel=1e-6)
    pad = lambda bs: sum(len(x) * seqs.lengths[x].max() for x in bs)
    assert pad(bucketed) < pad(padded)
    assert sum(len(x) for x in budget) == 64 and all(len(x) * seqs.lengths[x].max() <= 120 for x in budget)


# --- empty micro-batches, world size, bad input, timing ----------------------------------------


@pytest.mark.parametrize("nproc", [0, 2])
def test_uneven_data_with_accumulation_and_a_small_token_budget_trains(store, nproc):
    make_toy_dataset(store.db, n_train=203)  # sequences of 11 to 41 tokens
    per = 1 if nproc else 2
    common = [*FAST, "--train-steps", "30", "--log-interval", "10", "--eval-interval", "30", "--checkpoint-interval", "30"]
    run_cli("train.py", "single", "--run-id", "uneven", *common, "--batch-size", per, "--grad-accum", "4",
            nproc=nproc)  # 203 sequences in global batches of 8 x world: a partial batch each epoch
    run_cli("train.py", "single", "--run-id", "budget", *common, "--batch-tokens", "20", "--grad-accum", "2",
            nproc=nproc)  # most sequences are longer than the budget
    for run_id in ("uneven", "budget"):
        assert store.get_run(run_id)["status"] == "finished" and store.get_run(run_id)["step"] == 30


def test_resume_with_another_world_size_is_refused_and_torchrun_names_why(store):
    """Two gloo processes refused: rank 0 prints the one line, and torchrun's closing summary names it
    (each worker's error file) instead of "To enable traceback see ..."."""
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "w1", *FAST, "--train-steps", "10", "--batch-size", "4")
    before = store.get_run("w1")
    r = run_cli("train.py", "single", "--run-id", "w1", nproc=2, check=False)  # the run id alone, as to continue it
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-2000:]
    assert "world size 1" in errors[0] and "--nproc-per-node 1" in errors[0] and "not 2" in errors[0]
    assert f"traceback : {errors[0]}" in r.stderr and "To enable traceback" not in r.stderr, r.stderr[-2000:]
    assert store.get_run("w1") == before  # nothing written


def test_start_checkpoint_with_another_vocabulary_is_refused(store):
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "base", *FAST, "--train-steps", "5")
    make_toy_dataset(store.db, name="toy.reordered")
    vocab = dataset.get_dataset(store.db, "toy.copy")["vocabulary"]
    swapped = vocab[:4] + vocab[4:][::-1]  # same size, another order
    store.db.datasets.update_one({"_id": "toy.reordered"}, {"$set": {"vocabulary": swapped}})
    r = run_cli("train.py", "single", "--run-id", "tuned", *FAST, "--train-name", "toy.reordered", "--train-steps", "5",
                "--start-checkpoint", "base", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "another vocabulary than dataset 'toy.reordered'" in r.stderr and "first difference at id 4" in r.stderr
    assert store.get_run("tuned") is None


def test_bad_training_input_leaves_no_run_behind(store):
    make_toy_dataset(store.db)
    for flags, words in ((["--train-name", "toy.missing"], "dataset 'toy.missing' does not exist"),
                         (["--test-name", "toy.missing"], "dataset 'toy.missing' does not exist"),
                         (["--start-checkpoint", "nope"], "no run with id 'nope'")):
        r = run_cli("train.py", "single", "--run-id", "fixme", *FAST, "--train-steps", "5", *flags, check=False)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
        assert store.get_run("fixme") is None
    run_cli("train.py", "single", "--run-id", "fixme", *FAST, "--train-steps", "5")  # the corrected launch, no drop-run
    assert store.get_run("fixme")["status"] == "finished"


def test_eta_counts_the_evaluations_and_checkpoints_still_due():
    from train import eta_seconds
    cfg = TrainConfig(train_steps=100, eval_interval=30, checkpoint_interval=25)
    # at step 50: 50 steps, evaluations at 60, 90 and the final 100, checkpoints at 50 (after this log), 75, 100
    assert eta_seconds(cfg, 50, step_s=1.0, eval_s=10.0, checkpoint_s=100.0) == 50 + 3 * 10 + 3 * 100
    assert eta_seconds(cfg, 100, 1.0, 10.0, 100.0) == 10 + 100  # the final evaluation and checkpoint
    assert eta_seconds(cfg, 99, 1.0, 0.0, 0.0) == 1


def test_step_timing_waits_for_the_device(monkeypatch):
    """On a GPU the host enqueues work and runs ahead: a step is timed only after the device has done it."""
    import train
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    train.device_sync(torch.device("cuda", 0))
    train.device_sync(torch.device("cpu"))
    assert calls == [torch.device("cuda", 0)]


@pytest.mark.parametrize("flags,msg", [(["--lr", "-1e-3"], "lr > 0"), (["--lr", "-.5"], "lr > 0"),
                                       (["--seed", "-3"], "'seed' must not be negative"),
                                       (["--patience", "-1"], "'patience' must not be negative"),
                                       (["--min-lr-ratio", "-1E-2"], "min_lr_ratio")])
def test_negative_numbers_reach_the_value_check(flags, msg):
    r = run_cli("train.py", "single", "--run-id", "x", *flags, "--dry-run", check=False)
    assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "expected one argument" not in r.stderr


# --- stopping, continuing and extending --------------------------------------------------------


def test_sigint_stops_at_a_step_boundary_and_the_run_id_alone_continues_it(store, pauses):
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", "10", "--checkpoint-interval", "5", "--seed", "4"]
    run_cli("train.py", "single", "--run-id", "straight", *args)
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "stopped", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **pauses.env("step-3")})
    pauses.wait("step-3", proc)
    proc.send_signal(signal.SIGINT)  # handled at the next step boundary, once released
    pauses.release("step-3")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and err == "", err
    assert out.splitlines()[-1] == "interrupted at step 3; continue with: python train.py single --run-id stopped"
    run = store.get_run("stopped")
    assert run["status"] == "interrupted" and run["checkpoint"]["step"] == 3 and run["lease"] is None
    r = run_cli("train.py", "single", "--run-id", "stopped")  # its stored hyper-parameters, no flags
    assert "resuming stopped from step 3" in r.stdout and "finished stopped at step 10" in r.stdout
    assert store.get_run("stopped")["config"] == store.get_run("straight")["config"]
    assert_same_weights(weights(store, "straight"), weights(store, "stopped"))
    assert losses(store, "straight") == losses(store, "stopped")


def test_sigterm_in_a_ddp_run_stops_every_rank_at_one_step(store, pauses):
    """A signal reaching one worker stops both at the same step boundary (no DDP hang); one rank prints,
    and torchrun's summary names the reason."""
    make_toy_dataset(store.db)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "train.py", "single",
           "--run-id", "ddp-stop", *FAST, "--train-steps", "10", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **pauses.env("step-2")})
    workers = pauses.wait("step-2", proc, count=2)
    os.kill(workers[1], signal.SIGTERM)
    pauses.release("step-2")
    out, err = proc.communicate(timeout=300)
    line = "interrupted at step 2; continue with: torchrun --nproc-per-node 2 train.py single --run-id ddp-stop"
    assert proc.returncode != 0 and out.count("interrupted at") == 1 and line in out, out + err
    assert 'train.py", line' not in err and f"traceback : {line}" in err, err  # torchrun's own traceback aside
    run = store.get_run("ddp-stop")
    assert run["status"] == "interrupted" and run["checkpoint"]["step"] == 2


def test_raising_train_steps_extends_a_finished_run_and_nothing_else_changes(store, pauses):
    """The extension's LR goes on from where the run's schedule is (no jump), along a cosine to its
    minimum at the new train_steps; an interrupted extension resumes on that same schedule."""
    make_toy_dataset(store.db)
    args = [*FAST, "--log-interval", "1", "--lr-schedule", "cosine"]
    run_cli("train.py", "single", "--run-id", "ext", *args, "--train-steps", "10")
    for flags, words in ((["--train-steps", "20", "--lr", "5e-4"], "lr: 0.001 -> 0.0005"),
                         (["--train-steps", "8"], "train_steps: 10 -> 8")):
        r = run_cli("train.py", "single", "--run-id", "ext", *flags, check=False)
        assert r.returncode == 1 and words in r.stderr, r.stderr
        assert "only --train-steps and --patience may change" in r.stderr, r.stderr
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "ext", "--train-steps", "20"], cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, env={**os.environ, **pauses.env("step-13")})
    pauses.wait("step-13", proc)
    proc.send_signal(signal.SIGINT)  # the extension, interrupted and continued by the run id alone
    pauses.release("step-13")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130 and store.get_run("ext")["checkpoint"]["step"] == 13
    run_cli("train.py", "single", "--run-id", "ext")
    cfg = TrainConfig.from_dict(store.get_run("ext")["config"])
    old = TrainConfig.from_dict({**cfg.to_dict(), "train_steps": 10})
    assert cfg.train_steps == 20 and store.get_run("ext")["status"] == "finished"
    ext = load_checkpoint(store, "ext")["scheduler"]["extension"]
    assert ext == [10, pytest.approx(old.lr_at(10) / cfg.lr)]  # the old schedule's next LR (its minimum)
    assert (f"extending ext from 10 to 20 steps; the LR goes on from {old.lr_at(10):.2e} at step 10, without a jump, "
            f"along a cosine to {cfg.lr * cfg.min_lr_ratio:.2e} at step 20") in out
    lrs = {rec["step"]: rec["lr"] for rec in store.get_logs("ext", "train")}
    assert lrs[10] == pytest.approx(old.lr_at(9)) and lrs[11] == pytest.approx(old.lr_at(10))  # no jump
    assert all(lrs[s + 1] == pytest.approx(cfg.lr_at(s, ext)) for s in range(10, 20))  # resumed on the same schedule
    assert cfg.lr_at(19, ext) == pytest.approx(cfg.lr * cfg.min_lr_ratio)


def test_an_extension_mid_decay_goes_on_from_the_lr_it_has():
    """Extended mid-cosine (an interrupted run), the LR continues from its value and decays to the
    minimum at the new end; a second extension again starts where the first one is."""
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, train_steps=200, min_lr_ratio=0.1)
    longer = TrainConfig(**{**cfg.to_dict(), "train_steps": 400})
    ext = longer.extension_at(100, 200)
    assert longer.lr_at(100, ext) == pytest.approx(cfg.lr_at(100))
    assert longer.lr_at(100, ext) > longer.lr_at(101, ext) > longer.lr_at(399, ext)
    assert longer.lr_at(400, ext) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    again = TrainConfig(**{**cfg.to_dict(), "train_steps": 800})
    ext2 = again.extension_at(300, 400, ext)
    assert again.lr_at(300, ext2) == pytest.approx(longer.lr_at(300, ext)) and ext2[0] == 300
    assert longer.extension_at(5, 200) is None  # in warm-up: the longer cosine starts from lr anyway
    constant = TrainConfig(**{**cfg.to_dict(), "lr_schedule": "constant"})
    assert constant.extension_at(100, 50) is None


def test_help_shows_every_hyper_parameter_default_and_choices(capsys):
    import train
    from dataclasses import fields
    from hparams import CHOICES
    with pytest.raises(SystemExit):
        train.parse_args(["single", "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    blocks = {}  # flag -> its help text
    for line in options.splitlines():
        if line.startswith("  --"):
            flag = line.split()[0].rstrip(",")
            blocks[flag] = line
        elif line.startswith("   ") and blocks:
            blocks[flag] += " " + line.strip()
    for f in fields(TrainConfig):
        text = " ".join(blocks["--" + f.name.replace("_", "-")].split())
        default = (f"--{f.name.replace('_', '-')}" if f.default else f"--no-{f.name.replace('_', '-')}") \
            if f.type is bool else repr(f.default)
        assert f"default {default}" in text, text
        assert f"one of {', '.join(CHOICES[f.name])}" in text if f.name in CHOICES else "one of" not in text, text
