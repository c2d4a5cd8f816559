"""Faults: killed and relaunched trainers, a database that goes away, concurrent launches, load,
interrupted exports. Whatever happens, a run ends as if it had never been interrupted."""
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect

import admin
import errors
import server
from checkpoint_store import load_checkpoint, save_checkpoint
from conftest import ROOT, call, make_checkpoint, make_toy_dataset, run_cli, snapshot, start_server
from model import ModelConfig, Transformer
from store import connect, embedded_uri

FAST = ["--train-name", "toy.copy", "--model-size", "tiny", "--warmup-steps", "5", "--lr", "1e-3",
        "--num-test-sequences", "16"]


def launch(run_id, *args, nproc=0, env=None):
    """A trainer (under torchrun when nproc > 0) in a process group of its own; a thread collects its
    stdout and stderr into proc.lines (so a trainer paused at a hook never blocks on a full pipe)."""
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["train.py", "single", "--run-id", run_id, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    proc.lines = []

    def read():
        for line in proc.stdout:
            proc.lines.append(line)
    proc.reader = threading.Thread(target=read, daemon=True)
    proc.reader.start()
    return proc


def output(proc, timeout=300):
    """All a launch printed, once it has exited."""
    proc.wait(timeout)
    proc.reader.join(timeout)
    return "".join(proc.lines)


def processes():
    """{pid: parent pid} of every live (not zombie) process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(stat.parent.name)] = int(fields[1])
    return out


def descendants(pid):
    procs, found, todo = processes(), [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in procs.items() if parent == p]
        found += kids
        todo += kids
    return found


def freeze(proc):
    """SIGSTOP a launch and everything it started (torchrun's workers run in sessions of their own)."""
    for pid in [*descendants(proc.pid)[::-1], proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)


def kill_launch(proc):
    """SIGKILL a launch's process group, as a scheduler would, and check that its workers die with it."""
    family = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    proc.reader.join(30)
    deadline = time.monotonic() + 30
    while set(family) & set(processes()):
        assert time.monotonic() < deadline, "workers of a killed launch are still alive"
        time.sleep(0.05)


def wait_lease_expiry(store, run_id):
    lease = store.get_run(run_id)["lease"]
    if lease:
        time.sleep(max(0.0, lease["expires"] - time.time()) + 0.05)


def record(rec):
    """A log record without what legitimately differs between runs (wall-clock time and speed)."""
    return {k: v for k, v in rec.items() if k not in ("time", "tokens_per_s")}


def assert_same_run(store, a, b, steps, log_interval, eval_interval):
    wa, wb = load_checkpoint(store, a), load_checkpoint(store, b)
    assert wa["step"] == wb["step"] == steps
    for part in ("model", "optimizer"):
        fa, fb = flatten(wa[part]), flatten(wb[part])
        assert fa.keys() == fb.keys()
        for k in fa:
            assert torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k], (part, k)
    la, lb = [record(r) for r in store.get_logs(a)], [record(r) for r in store.get_logs(b)]
    for r in lb:
        r["run_id"] = a
    assert la == lb
    keys = [(r["split"], r["step"]) for r in lb]
    every = lambda n: sorted({*range(n, steps + 1, n), steps})
    assert keys == [("test", s) for s in every(eval_interval)] + [("train", s) for s in every(log_interval)]
    assert store.get_run(b)["status"] == "finished" and store.get_run(b)["step"] == steps


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, (list, tuple)):
        return flatten(dict(enumerate(obj)), prefix)
    return {prefix: obj}


def expire_lease(store, run_id):
    """What waiting out the dead trainer's lease would do, without the wait."""
    store.runs.update_one({"_id": run_id, "lease": {"$ne": None}}, {"$set": {"lease.expires": 0}})


def frozen_mid_write(store, run_id):
    """True when the run has a checkpoint upload started and not yet closed."""
    pending = store.get_run(run_id).get("pending_checkpoint")
    return pending is not None and store.db["checkpoints.files"].find_one({"_id": pending}) is None


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_run_killed_over_and_over_equals_uninterrupted(store, pauses):
    """torchrun, 2 processes on gloo, SIGKILLed at seeded random steps (and inside checkpoint
    writes) and relaunched until done: same weights, optimizer state and logs as a straight run.
    Each kill lands exactly where planned: the trainer waits at a test hook until it comes."""
    make_toy_dataset(store.db)
    steps, ck = 60, 10
    args = [*FAST, "--batch-size", "4", "--train-steps", steps, "--log-interval", 1, "--eval-interval", 20,
            "--checkpoint-interval", ck, "--seed", 5, "--lease-seconds", 1.5]
    run_cli("train.py", "single", "--run-id", "straight", *args, nproc=2)

    rng = random.Random(6)
    kills, mid_write, expect_resume = 0, 0, None
    for attempt in range(12):
        ckpt = store.get_run("killed") and store.get_run("killed").get("checkpoint")
        start = ckpt["step"] if ckpt else 0
        # every other launch is killed inside its first checkpoint write, the others at a random step
        in_write = kills % 2 == 1 and mid_write < 2 and start + ck < steps
        point = f"checkpoint-{start + ck}" if in_write else f"step-{rng.randint(start + 1, min(steps - 1, start + 2 * ck))}"
        finish = kills >= 6 and mid_write > 0
        proc = launch("killed", *args, nproc=2, env=None if finish else pauses.env(point))
        if finish:
            out = output(proc, 300)
            assert proc.returncode == 0, out[-3000:]
        else:
            pauses.wait(point, proc)
            if in_write:
                assert frozen_mid_write(store, "killed")  # the upload written, not closed
                mid_write += 1
            kill_launch(proc)
            kills += 1
            out = "".join(proc.lines)
        resumed = [int(l.split()[-1]) for l in out.splitlines() if l.startswith("resuming")]
        if expect_resume is not None:  # the launch after a kill inside a checkpoint write
            assert resumed == [expect_resume], out[:2000]
        if finish:
            break
        expect_resume = start if in_write else None  # the checkpoint before the one being written
        for f in pauses.folder.iterdir():
            f.unlink()
        wait_lease_expiry(store, "killed")
    print(f"{kills} kills, {mid_write} inside a checkpoint write")
    assert kills >= 6 and mid_write == 2
    assert_same_run(store, "straight", "killed", steps, 1, 20)
    assert not store.get_run("killed").get("pending_checkpoint")
    # the partial uploads were cleaned away: only the final checkpoint's file and chunks remain
    files = list(store.db["checkpoints.files"].find({"metadata.run_id": "killed"}))
    assert len(files) == 1 and store.db["checkpoints.chunks"].count_documents(
        {"files_id": {"$nin": [f["_id"] for f in store.db["checkpoints.files"].find()]}}) == 0


@pytest.mark.slow
def test_workers_die_with_a_launcher_killed_during_start_up(env, pauses):
    """torchrun SIGKILLed while its workers are still starting (before they can ask the kernel to
    kill them with it): the workers notice that their launcher is gone and exit."""
    proc = launch("early", *FAST, nproc=2, env=pauses.env("start"))
    workers = pauses.wait("start", proc, count=2)  # both workers are at the top of train.py
    try:
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as a scheduler killing it would
        proc.wait(30)
        pauses.release("start")
        deadline = time.monotonic() + 120  # only turns a surviving worker into a failure
        while set(workers) & set(processes()):
            assert time.monotonic() < deadline, "workers outlived their launcher"
            time.sleep(0.05)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Server:
    """A persistent SecantusDB (--sync-on-commit) that can crash and come back on the same port."""

    def __init__(self, folder):
        self.folder, self.port, self.proc, self.starts = folder, 0, None, 0

    def start(self):
        self.starts += 1
        self.proc, self.port = start_server(self.folder / f"server{self.starts}.log", self.folder / "data", self.port,
                                            "--sync-on-commit")

    def crash(self):
        self.proc.kill()
        self.proc.wait(10)

    @property
    def uri(self):
        return f"mongodb://127.0.0.1:{self.port}/faults"


@pytest.fixture
def crashable(env, monkeypatch):
    srv = Server(env["tmp"])
    srv.start()
    monkeypatch.setenv("MONGODB_URI", srv.uri)
    yield srv
    srv.crash()


@pytest.mark.slow
def test_database_crash_mid_training_is_waited_out_or_fails_cleanly(crashable, pauses):
    server = crashable
    store = connect()
    make_toy_dataset(store.db)
    args = [*FAST, "--batch-size", "8", "--train-steps", 50, "--log-interval", 1, "--eval-interval", 20,
            "--checkpoint-interval", 10, "--seed", 2, "--lease-seconds", 2]
    run_cli("train.py", "single", "--run-id", "straight", *args)

    # 1. down for longer than the lease, inside a checkpoint write; the trainer waits and carries on
    proc = launch("waits", *args, "--db-retry-seconds", 60, env=pauses.env("checkpoint-20"))
    pauses.wait("checkpoint-20", proc)  # the step-20 checkpoint is written, not yet closed
    assert frozen_mid_write(store, "waits")
    server.crash()
    pauses.release("checkpoint-20")
    time.sleep(8)  # the outage lasts past the lease and past pymongo's own server selection timeout (5 s)
    server.start()
    out = output(proc, 300)
    assert proc.returncode == 0, out[-3000:]
    assert "database unreachable" in out and "Traceback" not in out
    assert_same_run(store, "straight", "waits", 50, 1, 20)

    # 2. down for longer than --db-retry-seconds: a one-line error within that bound, then a relaunch finishes
    proc = launch("gives-up", *args, "--db-retry-seconds", 3, env=pauses.env("step-25"))
    pauses.wait("step-25", proc)
    server.crash()
    pauses.release("step-25")
    out = output(proc, 300)  # bounded: the retry window, one attempt, two last writes of 3 s each
    assert proc.returncode == 1, out[-3000:]
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"lost the database at mongodb://127.0.0.1:{server.port}" in errors[0], out[-3000:]
    assert "Traceback" not in out
    server.start()
    assert store.get_run("gives-up")["status"] in ("running", "failed")  # "failed" only if the database was back in time
    expire_lease(store, "gives-up")
    r = run_cli("train.py", "single", "--run-id", "gives-up", *args)
    assert "resuming gives-up from step 20" in r.stdout
    assert_same_run(store, "straight", "gives-up", 50, 1, 20)


def test_connection_lost_inside_a_checkpoint_write_is_retried(store, capsys):
    """torch.save wraps a failing write in a RuntimeError; the store still sees the lost connection and retries."""
    store.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    store.retry_s = 10
    upload, writes = store.fs.open_upload_stream, [0]

    class Flaky:  # an upload stream that finds the connection gone half-way through the first attempt
        def __init__(self, stream):
            self.stream = stream

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def write(self, data):
            writes[0] += 1
            if writes[0] == 4:
                raise AutoReconnect("connection reset by peer")
            return self.stream.write(data)

    store.fs.open_upload_stream = lambda *a, **k: Flaky(upload(*a, **k))
    save_checkpoint(store, "r", 1, {"w": torch.arange(10)})
    assert "database unreachable (AutoReconnect), retrying" in capsys.readouterr().err
    assert torch.equal(load_checkpoint(store, "r")["w"], torch.arange(10))
    assert store.db["checkpoints.files"].count_documents({}) == 1


def blip_every_call_site(monkeypatch):
    """From now on, the first database call from each call site of the project's code (the chain of
    its lines on the stack) finds the connection lost (AutoReconnect), as in a short outage; calls
    made again afterwards go through. Returns the call sites that met one."""
    met = set()

    def site():
        chain, f = [], sys._getframe(2)
        while f:
            name = f.f_code.co_filename
            if name.startswith(str(ROOT)) and "/.venv/" not in name and "/tests/" not in name:
                chain.append((Path(name).name, f.f_lineno))
            f = f.f_back
        return tuple(chain)

    for name in ("find", "find_one", "insert_one", "insert_many", "update_one", "replace_one", "delete_one",
                 "delete_many", "find_one_and_update", "count_documents"):
        def flaky(self, *args, _real=getattr(Collection, name), **kwargs):
            where = site()
            if where and where not in met:
                met.add(where)
                raise AutoReconnect("connection reset by peer")
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(Collection, name, flaky)
    return met


def test_training_and_evaluation_ride_out_a_lost_connection_at_every_database_call(store, env, monkeypatch):
    """Every database call of a training run (rollout evaluations and its best checkpoint included) and
    of an evaluation (of that best checkpoint) is inside the store's retries: each call site meets a
    lost connection once, and both finish. A training run with --no-cache writes no dataset cache,
    rollouts included."""
    # the validation tasks are the last 2 test tasks: the first wall layout's ~17 are left to report on
    run_cli("data.py", "maze", "--size", "10", "--num-train", "16", "--num-test", "24", "--chunk", "2", "--workers", "1")
    train, evaluate = __import__("train"), __import__("eval")
    store.retry_s = 30  # this test's own reads meet the blips too
    met = blip_every_call_site(monkeypatch)
    code, out, err = call(train.main, "single", "--run-id", "blips", "--train-name", "maze.10-by-10-deterministic.simple",
                          "--model-size", "tiny", "--batch-size", 4, "--train-steps", 4, "--log-interval", 2,
                          "--eval-interval", 2, "--checkpoint-interval", 2, "--num-test-sequences", 4, "--eval-tasks", 2,
                          "--patience", 2, "--no-cache", "--db-retry-seconds", 60)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert {"train.py", "rollouts.py", "runguard.py", "checkpoint_store.py"} <= {f for chain in met for f, _ in chain}
    assert "rollout_optimal_pct" in store.get_logs("blips", "test")[0]
    assert not (env["tmp"] / "cache").exists() and store.get_run("blips")["best"]["step"] in (2, 4)
    code, out, err = call(evaluate.main, "--run-id", "blips", "--checkpoint", "best", "--num-tasks", 4, "--samples", 2,
                          "--max-tokens", 24)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "eval.py" in {chain[0][0] for chain in met}  # its own reads and writes
    assert store.call(lambda db: db.results.count_documents({"run_id": "blips"})) == 1
    assert store.get_run("blips")["status"] == "finished"


def test_reading_a_run_never_disturbs_its_trainer(store):
    """A load while the trainer's upload is in flight leaves it alone; once the lease is free a load
    removes a dead trainer's partial upload; a checkpoint replaced during a read is read again."""
    store.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    save_checkpoint(store, "r", 1, {"step": 1})
    stream = store.fs.open_upload_stream("r/2", metadata={"run_id": "r", "step": 2}, chunk_size_bytes=4)
    stream.write(b"x" * 64)  # some chunks written, not closed: an upload in flight
    stream._flush()
    store.runs.update_one({"_id": "r"}, {"$set": {"pending_checkpoint": stream._id,
                                              "lease": {"owner": "trainer", "expires": time.time() + 60}}})
    chunks = store.db["checkpoints.chunks"].count_documents({"files_id": stream._id})
    assert chunks > 0 and load_checkpoint(store, "r")["step"] == 1
    assert store.get_run("r")["pending_checkpoint"] == stream._id
    assert store.db["checkpoints.chunks"].count_documents({"files_id": stream._id}) == chunks
    store.runs.update_one({"_id": "r"}, {"$set": {"lease.expires": time.time() - 1}})  # the trainer died
    assert load_checkpoint(store, "r")["step"] == 1
    assert store.get_run("r")["pending_checkpoint"] is None
    assert store.db["checkpoints.chunks"].count_documents({"files_id": stream._id}) == 0
    # the trainer saves step 3 (and deletes step 1) while a reader is between the pointer and the file
    download = store.fs.open_download_stream

    def racing(file_id):
        store.fs.open_download_stream = download
        save_checkpoint(store, "r", 3, {"step": 3})
        return download(file_id)

    store.fs.open_download_stream = racing
    assert load_checkpoint(store, "r")["step"] == 3


@pytest.mark.slow
def test_two_launches_of_one_run_id_one_trains_until_killed(store, pauses):
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", 150, "--log-interval", 5, "--eval-interval", 75, "--checkpoint-interval", 10,
            "--lease-seconds", 600]
    a, b = (launch("dup", *args, env=pauses.env("step-5")) for _ in range(2))
    deadline = time.monotonic() + 600
    while not pauses.reached("step-5") or a.poll() is None and b.poll() is None:  # one trains, one is refused
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [pid] = pauses.reached("step-5")
    trainer, refused = (a, b) if pid == a.pid else (b, a)
    out = output(refused)
    assert refused.returncode == 1 and trainer.poll() is None
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"being trained by {socket.gethostname()}:{trainer.pid}:" in errors[0], out
    kill_launch(trainer)  # paused after its step-5 log: its lease is live, and it holds the run
    r = run_cli("train.py", "single", "--run-id", "dup", *args, check=False)  # the dead trainer's lease holds
    assert r.returncode == 1 and "being trained by" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    expire_lease(store, "dup")
    run_cli("train.py", "single", "--run-id", "dup", *args)
    assert store.get_run("dup")["status"] == "finished"
    assert [(x["split"], x["step"]) for x in store.get_logs("dup")] == \
        [("test", 75), ("test", 150)] + [("train", s) for s in range(5, 151, 5)]


@pytest.mark.slow
def test_a_trainer_that_lost_its_lease_stops_without_writing(store, pauses):
    """Frozen past its lease (a long GC pause, a stopped VM, a database outage) while a relaunch took
    over, the old trainer wakes up to find the run gone: it stops and leaves the new trainer's run alone."""
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", 400, "--log-interval", 1, "--eval-interval", 200, "--checkpoint-interval", 10,
            "--lease-seconds", 1.5]
    old = launch("taken", *args, env=pauses.env("step-15"))
    pauses.wait("step-15", old)
    freeze(old)  # its lease thread stops renewing too
    wait_lease_expiry(store, "taken")
    new = launch("taken", *args, env=pauses.env("step-11"))
    pauses.wait("step-11", new)  # the new trainer holds the run and has trained a step
    pauses.release("step-15")
    os.kill(old.pid, signal.SIGCONT)
    out = output(old, 120)
    assert old.returncode == 1
    assert re.search(r"^error: run 'taken' is no longer held by this process|^error: lost the lease", out, re.M), out
    run = store.get_run("taken")
    assert run["status"] == "running" and run["lease"]["owner"].split(":")[1] == str(new.pid)  # not "failed"
    pauses.release("step-11")
    out = output(new, 300)
    assert new.returncode == 0 and "resuming taken from step 10" in out, out[-3000:]
    assert store.get_run("taken")["status"] == "finished"
    assert [x["step"] for x in store.get_logs("taken", "train")] == list(range(1, 401))


@pytest.mark.slow
def test_eight_runs_at_once_on_one_embedded_server(embedded, pauses):
    store = connect()
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", 30, "--log-interval", 5, "--eval-interval", 15, "--checkpoint-interval", 10]
    procs = [launch(f"load-{i}", *args, "--seed", i, env=pauses.env("step-10")) for i in range(8)]
    commands = (["list-all"], ["show", "--run-id", "load-0"], ["list-all-checkpoints"])
    for p in procs:
        pauses.wait("step-10", p)  # all eight are connected and half-way through
    answers = [run_cli("admin.py", *cmd, timeout=300, check=False) for cmd in commands]  # admin answers meanwhile
    assert all(r.returncode == 0 for r in answers) and "load-7" in answers[0].stdout, [r.stderr for r in answers]
    pauses.release("step-10")
    while any(p.poll() is None for p in procs):  # and while they finish
        for cmd in commands:
            r = run_cli("admin.py", *cmd, timeout=300, check=False)
            assert r.returncode == 0, r.stderr
    outs = [output(p, 300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(o[-2000:] for o in outs)
    for i in range(8):
        run = store.get_run(f"load-{i}")
        assert run["status"] == "finished" and run["checkpoint"]["step"] == 30
        assert [(x["split"], x["step"]) for x in store.get_logs(f"load-{i}")] == \
            [("test", 15), ("test", 30)] + [("train", s) for s in range(5, 31, 5)]
        ck = load_checkpoint(store, f"load-{i}")
        Transformer(ModelConfig(**ck["model_config"])).load_state_dict(ck["model"])
    servers = [p for p in processes() if str(embedded) in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    assert len(servers) == 1


@pytest.mark.slow
def test_a_restarted_embedded_server_is_found_by_a_running_trainer(embedded, pauses):
    """The default setup: the embedded server is killed under a running trainer and restarted by the
    next command that needs it; it comes back at its address, and the trainer carries on."""
    store = connect()
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", 30, "--log-interval", 5, "--eval-interval", 15, "--checkpoint-interval", 10,
            "--db-retry-seconds", 120]
    proc = launch("survives", *args, env=pauses.env("step-12"))
    pauses.wait("step-12", proc)
    old = json.loads((embedded / "server.json").read_text())
    os.kill(old["pid"], signal.SIGKILL)
    while server.pid_alive(old["pid"]):
        time.sleep(0.05)
    assert "(no runs)" not in run_cli("admin.py", "list-all").stdout  # restarts it
    new = json.loads((embedded / "server.json").read_text())
    assert new["pid"] != old["pid"] and new["port"] == old["port"]
    pauses.release("step-12")
    out = output(proc, 300)
    assert proc.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert store.get_run("survives")["status"] == "finished"
    assert [(x["split"], x["step"]) for x in store.get_logs("survives")] == \
        [("test", 15), ("test", 30)] + [("train", s) for s in range(5, 31, 5)]


def test_a_client_follows_the_embedded_server_to_a_new_address(embedded):
    """When its old port was taken meanwhile the server restarts elsewhere; a client that lost it
    re-reads the data folder's record and follows."""
    store = connect(retry_s=120)
    store.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    old = json.loads((embedded / "server.json").read_text())
    os.kill(old["pid"], signal.SIGKILL)
    while server.pid_alive(old["pid"]):
        time.sleep(0.05)
    with socket.socket() as squatter:  # another program took the port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # the killed server's connections can hold its port until the client drops them: wait for it
        # to come free (bounded, so a port that never frees fails the test rather than hangs it)
        deadline = time.monotonic() + 180
        while True:
            try:
                squatter.bind(("127.0.0.1", old["port"]))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        squatter.listen()
        embedded_uri()  # the next command restarts the server
        new = json.loads((embedded / "server.json").read_text())
        assert new["port"] != old["port"]
        store.log("r", 1, "train", {"loss": 1.0})  # retried, then rebound to the new address
    assert store.address == f"mongodb://127.0.0.1:{new['port']}/searchformer" and store.get_run("r")["step"] == 1


def test_interrupted_export_leaves_nothing_that_import_accepts(store, tmp_path):
    make_checkpoint(store, "exp")
    out = tmp_path / "out"
    assert call(admin.main, "export-checkpoint", "--run-id", "exp", "--export-dir", out)[0] == 0
    whole = (out / "exp.pt").read_bytes()
    dies_half_way = ("import os, shutil, signal, sys, admin\n"
                     "def half(src, dst, n):\n"
                     "    dst.write(src.read(src.length // 2)); dst.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
                     "shutil.copyfileobj = half\n"
                     "admin.main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", dies_half_way, "export-checkpoint", "--run-id", "exp", "--export-dir", out],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    partial = list(out.glob(".exp.pt.partial-*"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(whole)
    assert (out / "exp.pt").read_bytes() == whole  # the earlier export is untouched
    before = snapshot(store.db)
    code, _, err = call(admin.main, "import-checkpoint", "--filename", partial[0], "--run-id", "half")
    assert code == 1 and "not a valid checkpoint file" in err and len(err.strip().splitlines()) == 1
    assert snapshot(store.db) == before
    assert call(admin.main, "export-checkpoint", "--run-id", "exp", "--export-dir", out)[0] == 0
    assert [f.name for f in out.iterdir()] == ["exp.pt"]  # the killed export's leftover is cleared


@pytest.mark.slow
def test_a_hung_database_is_given_up_on_in_bounded_time(crashable):
    """A server that stops answering without closing its connections (SIGSTOP): no wait forever
    (pymongo's monitor times the server out after the connect timeout and interrupts the operation)."""
    store = connect(crashable.uri, retry_s=2)
    store.runs.insert_one({"_id": "r", "config": {}})
    os.kill(crashable.proc.pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(errors.StoreError, match="lost the database"):
            store.log("r", 1, "train", {"loss": 1.0})
        assert time.monotonic() - t < 300  # only catches waiting forever: a heartbeat, its timeout, the 2 s window
    finally:
        os.kill(crashable.proc.pid, signal.SIGCONT)
    store.with_retry(30).log("r", 1, "train", {"loss": 1.0})  # and on again once it answers
    assert store.get_run("r")["step"] == 1


@pytest.mark.parametrize("collection", ["runs", "logs"])  # while claiming the run; in training
def test_a_database_error_in_training_is_one_line_and_reaches_torchrun(store, env, monkeypatch, collection):
    """A database error that no retry covers (here a refused write) ends training with the one line every
    command gives for one (errors.REPORTED), also in torchrun's error file, not a pymongo traceback."""
    from pymongo.errors import OperationFailure
    make_toy_dataset(store.db)
    train = __import__("train")
    real_insert, real_replace = Collection.insert_one, Collection.replace_one

    def refused(real):
        def write(self, *args, **kwargs):
            if self.name == collection:
                raise OperationFailure("write refused by the server")
            return real(self, *args, **kwargs)
        return write
    monkeypatch.setattr(Collection, "insert_one", refused(real_insert))  # the run's creation
    monkeypatch.setattr(Collection, "replace_one", refused(real_replace))  # a log record
    error_file = env["tmp"] / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    code, out, err = call(train.main, "single", "--run-id", "dberr", *FAST, "--train-steps", 5, "--log-interval", 1)
    line = "error: database error: OperationFailure: write refused by the server"
    assert code == 1 and err.strip() == line, err[-3000:]
    assert json.loads(error_file.read_text())["message"]["message"] == line


def test_a_bootstrap_write_retried_after_its_commit_landed_finds_its_own_dataset(store, monkeypatch):
    """eval.py bootstrap writes through Store.call, which repeats a call whose answer was lost: when the
    lost answer is the commit's, the retry recognises its own dataset (as start_run its own run) instead
    of refusing it as one that exists."""
    from bootstrap import write_bootstrap
    from dataset import get_dataset, load_split
    make_toy_dataset(store.db)
    src, train = get_dataset(store.db, "toy.copy"), load_split(store.db, "toy.copy", "train")
    rows, chosen = range(len(train.ids)), {0: (np.arange(4, 10, dtype=np.uint16), 3)}
    real = Collection.update_one
    lost = []

    def commit_answer_lost(self, query, update, *args, **kwargs):
        result = real(self, query, update, *args, **kwargs)
        if self.name == "datasets" and "uid" in update.get("$set", {}) and not lost:
            lost.append(query)
            raise AutoReconnect("connection reset by peer")  # the commit landed, its answer did not
        return result
    monkeypatch.setattr(Collection, "update_one", commit_answer_lost)
    store.retry_s = 30
    replaced, before, after = store.call(write_bootstrap, "boot", src, "toy.copy", train, rows, chosen, {}, False, "tok")
    assert lost and replaced == 1 and after == pytest.approx(before + (3 - train.lens["trace"][0]) / len(rows))
    boot = load_split(store.db, "boot", "train")
    assert len(boot.ids) == len(train.ids) and boot.lens["trace"][0] == 3
    with pytest.raises(errors.DataError, match="exists"):  # another command's write is still refused
        store.call(write_bootstrap, "boot", src, "toy.copy", train, rows, chosen, {}, False, "another")


def pid_namespace_works():
    import shutil
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not pid_namespace_works(), reason="needs unshare into a PID namespace (root or user namespaces)")
def test_torchrun_as_pid_1_trains(store):
    """torchrun as a container's entrypoint is PID 1: its workers' parent is PID 1 from the start, which
    is no lost launcher (only a parent that changed is)."""
    make_toy_dataset(store.db)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "torch.distributed.run",
                        "--standalone", "--nproc-per-node=1", "train.py", "single", "--run-id", "pid1", *FAST,
                        "--train-steps", "3", "--log-interval", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "finished pid1 at step 3" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert store.get_run("pid1")["status"] == "finished"


def test_a_signal_while_ranks_wait_for_each_other_in_setup_stops_at_once(store, pauses):
    """Rank 1 held in its setup while rank 0 waits for it in a collective (as under NCCL when rank 1
    failed): torchrun's SIGTERM stops rank 0 at once, from a thread of its own, and the run this launch
    created is dropped as a failed launch's is, not left `running` for torchrun's SIGKILL."""
    make_toy_dataset(store.db)
    proc = launch("held", *FAST, "--train-steps", 5, "--batch-size", 4, nproc=2, env=pauses.env("claimed", "setup-1"))
    pauses.wait("claimed", proc)
    assert store.get_run("held")["status"] == "running"
    pauses.release("claimed")
    pauses.wait("setup-1", proc)  # rank 0 goes on into its setup, to wait for rank 1 there
    os.kill(proc.pid, signal.SIGTERM)  # torchrun passes it to both workers
    out = output(proc)
    assert proc.returncode != 0 and "interrupted; continue with: torchrun --nproc-per-node 2" in out, out[-3000:]
    assert store.get_run("held") is None
