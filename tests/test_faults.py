"""Faults: killed and relaunched trainers, a database that goes away, concurrent launches, load,
interrupted exports. Whatever happens, a run ends as if it had never been interrupted."""
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pymongo.errors import AutoReconnect

import admin
import store
from conftest import ROOT, call, make_checkpoint, make_toy_dataset, run_cli, snapshot, start_server
from model import ModelConfig, Transformer

FAST = ["--train-name", "toy.copy", "--model-size", "tiny", "--warmup-steps", "5", "--lr", "1e-3",
        "--num-test-sequences", "16"]


def launch(run_id, *args, nproc=0):
    """A trainer (under torchrun when nproc > 0) in a process group of its own, stdout and stderr piped."""
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["train.py", "single", "--run-id", run_id, *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


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
    proc.stdout.close()
    deadline = time.monotonic() + 30
    while set(family) & set(processes()):
        assert time.monotonic() < deadline, "workers of a killed launch are still alive"
        time.sleep(0.05)


def wait_lease_expiry(st, run_id):
    lease = st.get_run(run_id)["lease"]
    if lease:
        time.sleep(max(0.0, lease["expires"] - time.time()) + 0.05)


def record(rec):
    """A log record without what legitimately differs between runs (wall-clock time and speed)."""
    return {k: v for k, v in rec.items() if k not in ("time", "tokens_per_s")}


def assert_same_run(st, a, b, steps, log_interval, eval_interval):
    wa, wb = st.load_checkpoint(a), st.load_checkpoint(b)
    assert wa["step"] == wb["step"] == steps
    for part in ("model", "optimizer"):
        fa, fb = flatten(wa[part]), flatten(wb[part])
        assert fa.keys() == fb.keys()
        for k in fa:
            assert torch.equal(fa[k], fb[k]) if torch.is_tensor(fa[k]) else fa[k] == fb[k], (part, k)
    la, lb = [record(r) for r in st.get_logs(a)], [record(r) for r in st.get_logs(b)]
    for r in lb:
        r["run_id"] = a
    assert la == lb
    keys = [(r["split"], r["step"]) for r in lb]
    every = lambda n: sorted({*range(n, steps + 1, n), steps})
    assert keys == [("test", s) for s in every(eval_interval)] + [("train", s) for s in every(log_interval)]
    assert st.get_run(b)["status"] == "finished" and st.get_run(b)["step"] == steps


def flatten(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, (list, tuple)):
        return flatten(dict(enumerate(obj)), prefix)
    return {prefix: obj}


def frozen_mid_write(st, run_id):
    """True when the run has a checkpoint upload started and not yet closed."""
    pending = st.get_run(run_id).get("pending_checkpoint")
    return pending is not None and st.db["checkpoints.files"].find_one({"_id": pending}) is None


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_run_killed_over_and_over_equals_uninterrupted(st):
    """torchrun, 2 processes on gloo, SIGKILLed at seeded random steps (and inside checkpoint
    writes) and relaunched until done: same weights, optimizer state and logs as a straight run."""
    make_toy_dataset(st.db)
    steps, ck = 60, 10
    args = [*FAST, "--batch-size", "4", "--train-steps", steps, "--log-interval", 1, "--eval-interval", 20,
            "--checkpoint-interval", ck, "--seed", 5, "--lease-seconds", 1.5]
    run_cli("train.py", "single", "--run-id", "straight", *args, nproc=2)

    rng = random.Random(6)
    kills, mid_write, expect_resume = 0, 0, None
    for attempt in range(12):
        ckpt = st.get_run("killed") and st.get_run("killed").get("checkpoint")
        start = ckpt["step"] if ckpt else 0
        # every other launch is killed inside its first checkpoint write, the others at a random step
        in_write = kills % 2 == 1 and mid_write < 2 and start + ck < steps
        target = start + ck if in_write else rng.randint(start + 1, min(steps - 1, start + 2 * ck))
        finish = kills >= 6 and mid_write > 0
        proc = launch("killed", *args, nproc=2)
        out, resumed = [], 0
        for line in proc.stdout:
            out.append(line)
            if line.startswith("resuming"):
                resumed = int(line.split()[-1])
            if line.startswith(f"step {target}/") and not finish:
                break
        else:
            assert proc.wait(120) == 0, "".join(out[-30:])
            proc.stdout.close()
        if expect_resume is not None:  # the launch after a kill inside a checkpoint write
            assert resumed == expect_resume, "".join(out[:5])
        if proc.poll() is not None:
            break
        expect_resume = None
        if in_write:
            deadline = time.monotonic() + 10
            while not st.get_run("killed").get("pending_checkpoint") and time.monotonic() < deadline:
                pass
            freeze(proc)  # stopped exactly where it is
            if frozen_mid_write(st, "killed"):
                mid_write += 1
                expect_resume = start  # the checkpoint before the one being written
        kill_launch(proc)
        kills += 1
        wait_lease_expiry(st, "killed")
    print(f"{kills} kills, {mid_write} inside a checkpoint write")
    assert kills >= 5 and mid_write >= 1
    assert_same_run(st, "straight", "killed", steps, 1, 20)
    assert not st.get_run("killed").get("pending_checkpoint")
    # the partial uploads were cleaned away: only the final checkpoint's file and chunks remain
    files = list(st.db["checkpoints.files"].find({"metadata.run_id": "killed"}))
    assert len(files) == 1 and st.db["checkpoints.chunks"].count_documents(
        {"files_id": {"$nin": [f["_id"] for f in st.db["checkpoints.files"].find()]}}) == 0


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
def test_database_crash_mid_training_is_waited_out_or_fails_cleanly(crashable):
    server = crashable
    st = store.connect()
    make_toy_dataset(st.db)
    args = [*FAST, "--batch-size", "8", "--train-steps", 50, "--log-interval", 1, "--eval-interval", 20,
            "--checkpoint-interval", 10, "--seed", 2, "--lease-seconds", 2]
    run_cli("train.py", "single", "--run-id", "straight", *args)

    # 1. down for longer than the lease, inside a checkpoint write; the trainer waits and carries on
    proc = launch("waits", *args, "--db-retry-seconds", 60)
    while proc.poll() is None:  # crash the server while the step-20 (or a later) checkpoint is being written
        doc = st.get_run("waits") or {}
        if doc.get("pending_checkpoint") and doc.get("checkpoint"):
            break
    assert proc.poll() is None
    server.crash()
    down = time.monotonic()
    time.sleep(8)  # past the lease and past pymongo's own server selection timeout (5 s)
    server.start()
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "database unreachable" in out and "Traceback" not in out
    assert_same_run(st, "straight", "waits", 50, 1, 20)

    # 2. down for longer than --db-retry-seconds: a one-line error within that bound, then a relaunch finishes
    proc = launch("gives-up", *args, "--db-retry-seconds", 3)
    for line in proc.stdout:
        if line.startswith("step 25/"):
            break
    server.crash()
    down = time.monotonic()
    out = proc.communicate(timeout=60)[0]
    gave_up = time.monotonic() - down
    print(f"gave up after {gave_up:.1f}s")
    assert proc.returncode == 1 and gave_up < 3 + 5 + 2 * 3 + 4, out[-3000:]  # retry window, one attempt, 2 last writes
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"lost the database at mongodb://127.0.0.1:{server.port}" in errors[0], out[-3000:]
    assert "Traceback" not in out
    server.start()
    assert st.get_run("gives-up")["status"] in ("running", "failed")  # "failed" only if the database was back in time
    wait_lease_expiry(st, "gives-up")
    r = run_cli("train.py", "single", "--run-id", "gives-up", *args)
    assert "resuming gives-up from step 20" in r.stdout
    assert_same_run(st, "straight", "gives-up", 50, 1, 20)


def test_connection_lost_inside_a_checkpoint_write_is_retried(st, capsys):
    """torch.save wraps a failing write in a RuntimeError; the store still sees the lost connection and retries."""
    st.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    st.retry_s = 10
    upload, writes = st.fs.open_upload_stream, [0]

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

    st.fs.open_upload_stream = lambda *a, **k: Flaky(upload(*a, **k))
    st.save_checkpoint("r", 1, {"w": torch.arange(10)})
    assert "database unreachable (AutoReconnect), retrying" in capsys.readouterr().err
    assert torch.equal(st.load_checkpoint("r")["w"], torch.arange(10))
    assert st.db["checkpoints.files"].count_documents({}) == 1


def test_reading_a_run_never_disturbs_its_trainer(st):
    """A load while the trainer's upload is in flight leaves it alone; once the lease is free a load
    removes a dead trainer's partial upload; a checkpoint replaced during a read is read again."""
    st.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    st.save_checkpoint("r", 1, {"step": 1})
    stream = st.fs.open_upload_stream("r/2", metadata={"run_id": "r", "step": 2}, chunk_size_bytes=4)
    stream.write(b"x" * 64)  # some chunks written, not closed: an upload in flight
    stream._flush()
    st.runs.update_one({"_id": "r"}, {"$set": {"pending_checkpoint": stream._id,
                                              "lease": {"owner": "trainer", "expires": time.time() + 60}}})
    chunks = st.db["checkpoints.chunks"].count_documents({"files_id": stream._id})
    assert chunks > 0 and st.load_checkpoint("r")["step"] == 1
    assert st.get_run("r")["pending_checkpoint"] == stream._id
    assert st.db["checkpoints.chunks"].count_documents({"files_id": stream._id}) == chunks
    st.runs.update_one({"_id": "r"}, {"$set": {"lease.expires": time.time() - 1}})  # the trainer died
    assert st.load_checkpoint("r")["step"] == 1
    assert st.get_run("r")["pending_checkpoint"] is None
    assert st.db["checkpoints.chunks"].count_documents({"files_id": stream._id}) == 0
    # the trainer saves step 3 (and deletes step 1) while a reader is between the pointer and the file
    download = st.fs.open_download_stream

    def racing(file_id):
        st.fs.open_download_stream = download
        st.save_checkpoint("r", 3, {"step": 3})
        return download(file_id)

    st.fs.open_download_stream = racing
    assert st.load_checkpoint("r")["step"] == 3


@pytest.mark.slow
def test_two_launches_of_one_run_id_one_trains_until_killed(st):
    make_toy_dataset(st.db)
    args = [*FAST, "--train-steps", 150, "--log-interval", 5, "--eval-interval", 75, "--checkpoint-interval", 10,
            "--lease-seconds", 3]
    a, b = launch("dup", *args), launch("dup", *args)
    first = {}
    for p in (a, b):
        for line in p.stdout:  # the refused one ends here; the trainer's first step stops the reading
            if line.startswith(("step ", "error:")):
                first[p] = line
                break
    trainer, refused = (a, b) if first[a].startswith("step") else (b, a)
    assert first[refused].startswith("error:") and first[trainer].startswith("step"), first
    refused.communicate(timeout=60)
    assert refused.returncode == 1
    assert f"being trained by {socket.gethostname()}:{trainer.pid}:" in first[refused]
    kill_launch(trainer)
    r = run_cli("train.py", "single", "--run-id", "dup", *args, check=False)  # the dead trainer's lease holds
    assert r.returncode == 1 and "being trained by" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    wait_lease_expiry(st, "dup")
    run_cli("train.py", "single", "--run-id", "dup", *args)
    assert st.get_run("dup")["status"] == "finished"
    assert [(x["split"], x["step"]) for x in st.get_logs("dup")] == \
        [("test", 75), ("test", 150)] + [("train", s) for s in range(5, 151, 5)]


@pytest.mark.slow
def test_a_trainer_that_lost_its_lease_stops_without_writing(st):
    """Frozen past its lease (a long GC pause, a stopped VM, a database outage) while a relaunch took
    over, the old trainer wakes up to find the run gone: it stops and leaves the new trainer's run alone."""
    make_toy_dataset(st.db)
    args = [*FAST, "--train-steps", 400, "--log-interval", 1, "--eval-interval", 200, "--checkpoint-interval", 10,
            "--lease-seconds", 1.5]
    old = launch("taken", *args)
    for line in old.stdout:
        if line.startswith("step 15/"):
            break
    freeze(old)
    wait_lease_expiry(st, "taken")
    new = launch("taken", *args)
    for line in new.stdout:
        if line.startswith("resuming"):
            break
    assert line.strip() == "resuming taken from step 10"
    os.kill(old.pid, signal.SIGCONT)
    out = old.communicate(timeout=60)[0]
    assert old.returncode == 1
    assert re.search(r"^error: run 'taken' is no longer held by this process|^error: lost the lease", out, re.M), out
    run = st.get_run("taken")
    assert run["status"] == "running" and run["lease"]["owner"].split(":")[1] == str(new.pid)  # not "failed"
    assert new.communicate(timeout=120)[0] and new.returncode == 0
    assert st.get_run("taken")["status"] == "finished"
    assert [x["step"] for x in st.get_logs("taken", "train")] == list(range(1, 401))


@pytest.mark.slow
def test_eight_runs_at_once_on_one_embedded_server(embedded):
    st = store.connect()
    make_toy_dataset(st.db)
    args = [*FAST, "--train-steps", 30, "--log-interval", 5, "--eval-interval", 15, "--checkpoint-interval", 10]
    procs = [launch(f"load-{i}", *args, "--seed", i) for i in range(8)]
    waits = []
    while any(p.poll() is None for p in procs):  # admin answers all along
        for cmd in (["list-all"], ["show", "--run-id", "load-0"], ["list-all-checkpoints"]):
            t = time.monotonic()
            r = run_cli("admin.py", *cmd, timeout=60, check=False)
            assert r.returncode == 0 or "no run with id 'load-0'" in r.stderr, r.stderr
            waits.append(time.monotonic() - t)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(o[-2000:] for o in outs)
    assert len(waits) >= 3 and max(waits) < 30, waits
    for i in range(8):
        run = st.get_run(f"load-{i}")
        assert run["status"] == "finished" and run["checkpoint"]["step"] == 30
        assert [(x["split"], x["step"]) for x in st.get_logs(f"load-{i}")] == \
            [("test", 15), ("test", 30)] + [("train", s) for s in range(5, 31, 5)]
        ck = st.load_checkpoint(f"load-{i}")
        Transformer(ModelConfig(**ck["model_config"])).load_state_dict(ck["model"])
    servers = [p for p in processes() if str(embedded) in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
    assert len(servers) == 1


def test_interrupted_export_leaves_nothing_that_import_accepts(st, tmp_path):
    make_checkpoint(st, "exp")
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
    before = snapshot(st.db)
    code, _, err = call(admin.main, "import-checkpoint", "--filename", partial[0], "--run-id", "half")
    assert code == 1 and "not a valid checkpoint file" in err and len(err.strip().splitlines()) == 1
    assert snapshot(st.db) == before
    assert call(admin.main, "export-checkpoint", "--run-id", "exp", "--export-dir", out)[0] == 0
    assert [f.name for f in out.iterdir()] == ["exp.pt"]  # the killed export's leftover is cleared


@pytest.mark.slow
def test_a_hung_database_is_given_up_on_in_bounded_time(crashable):
    """A server that stops answering without closing its connections (SIGSTOP): no wait forever
    (pymongo's monitor times the server out after the connect timeout and interrupts the operation)."""
    st = store.connect(crashable.uri, retry_s=2)
    st.runs.insert_one({"_id": "r", "config": {}})
    os.kill(crashable.proc.pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(store.StoreError, match="lost the database"):
            st.log("r", 1, "train", {"loss": 1.0})
        assert time.monotonic() - t < 40  # a heartbeat (10 s) and its timeout (5 s), then the 2 s retry window
    finally:
        os.kill(crashable.proc.pid, signal.SIGCONT)
    st.with_retry(30).log("r", 1, "train", {"loss": 1.0})  # and on again once it answers
    assert st.get_run("r")["step"] == 1
