"""Shared fixtures: one in-memory SecantusDB server per test session, a fresh database per test."""
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymongo
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_server(log_path, storage=":memory:", port=0, *extra):
    """Start a SecantusDB process (extra: more flags, e.g. --sync-on-commit); returns (process, port) once it listens."""
    exe = Path(sys.executable).parent / "secantusd-py"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(exe if exe.exists() else "secantusd-py"), "--standalone", "--host", "127.0.0.1",
                             "--port", str(port), "--storage-path", str(storage), *extra],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", Path(log_path).read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"secantusd-py did not start: {Path(log_path).read_text()[-500:]}")


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # in memory, the cache is the storage: room for the largest test's checkpoints (the reference's enc-s/dec-s)
    proc, port = start_server(tmp_path_factory.mktemp("db") / "server.log", ":memory:", 0, "--cache-size", "2G")
    yield port
    stop_server(proc)


def stop_server(proc):
    """SIGTERM, then SIGKILL: the server can sleep through a SIGTERM that lands on one of its other threads."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """A fresh database and dataset cache for this test, through the environment (subprocesses too)."""
    uri = f"mongodb://127.0.0.1:{server}/t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MONGODB_URI", uri)
    monkeypatch.setenv("SEARCHFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield {"uri": uri, "port": server, "tmp": tmp_path}
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:  # the in-memory server keeps it till dropped
        client.drop_database(uri.rsplit("/", 1)[1])


@pytest.fixture
def store(env):
    from store import connect
    return connect()


def run_cli(*args, env=None, check=True, timeout=300, nproc=0):
    """Run one of the project's scripts (under torchrun when nproc > 0); returns CompletedProcess."""
    cmd = [sys.executable]
    if nproc:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [str(a) for a in args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def make_toy_dataset(db, name="toy.copy", n_train=200, n_test=24, seed=0, vocab_size=20):
    """A small synthetic dataset in the native format: trace = reversed prompt, plan = sorted prompt."""
    import numpy as np
    import dataset
    rng = np.random.default_rng(seed)
    writer = dataset.DatasetWriter(db, name, "toy", {"seed": seed}, [f"t{i}" for i in range(vocab_size)], overwrite=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            p = rng.integers(len(dataset.SPECIALS), len(dataset.SPECIALS) + vocab_size, rng.integers(3, 14))
            writer.add(split, p, p[::-1], np.sort(p), dataset.digest(f"{split}{i}".encode()))
    writer.commit()
    return name


def checkpoint_state(run_id, step=10, seed=0):
    """A checkpoint dict as train.py writes it, of an untrained tiny model."""
    import torch
    from checkpoint import build
    from hparams import TrainConfig
    cfg = TrainConfig(train_name="toy.copy", model_size="tiny", train_steps=step, seed=seed)
    vocab = [f"t{i}" for i in range(24)]
    model, opt, sched = build(cfg, len(vocab), torch.device("cpu"))
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {**sched.state_dict(), "last_epoch": step},
            "run_id": run_id, "step": step, "data": {"epoch": 0, "index": step}, "rng": {"cpu": torch.get_rng_state()},
            "log_sums": torch.zeros(5, dtype=torch.float64), "config": cfg.to_dict(),
            "model_config": model.cfg.to_dict(), "vocabulary": vocab}


def make_checkpoint(store, run_id, step=10, seed=0, status="finished"):
    """A run with a real tiny-model checkpoint (without training) and a few logs."""
    from checkpoint_store import save_checkpoint
    state = checkpoint_state(run_id, step, seed)
    store.runs.insert_one({"_id": run_id, "config": state["config"], "status": status, "step": step, "lease": None,
                        "error": None})
    for s in range(5, step + 1, 5):
        store.log(run_id, s, "train", {"loss": 1.0 / s, "trace_loss": 1.0, "plan_loss": 1.0, "accuracy": 0.5})
    save_checkpoint(store, run_id, step, state)
    return state


@pytest.fixture
def embedded(env, monkeypatch):
    """MONGODB_URI unset: the embedded server of a fresh data folder (SEARCHFORMER_DB_DIR), stopped afterwards."""
    folder = env["tmp"] / "db"
    monkeypatch.delenv("MONGODB_URI")
    monkeypatch.setenv("SEARCHFORMER_DB_DIR", str(folder))
    yield folder
    import server
    server.stop_embedded(folder)


def snapshot(db):
    """Every collection's document ids (and count): compare two to show that nothing was written."""
    return {name: sorted(map(str, db[name].distinct("_id"))) for name in sorted(db.list_collection_names())}


def call(main, *argv):
    """A script's main(argv) run in this process (no interpreter start-up): (exit code, stdout, stderr)
    as the command line would give them."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    return code, out.getvalue(), err.getvalue()


class Pauses:
    """The trainer's test hook (testhook.py): a process started with env(points) stops at each of
    those points until release(point). Tests wait for these handshakes, never for output or time."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def env(self, *points):
        return {"SEARCHFORMER_PAUSE_AT": ",".join(points), "SEARCHFORMER_PAUSE_DIR": str(self.folder)}

    def reached(self, point):
        return sorted(int(p.name.rsplit(".", 1)[1]) for p in self.folder.glob(f"{point}.*")
                      if p.name.rsplit(".", 1)[1].isdigit())

    def wait(self, point, proc=None, count=1, timeout=600):
        """The pids stopped at point, once count of them are; fails if proc exits first. (The timeout
        only turns a hang into a failure.)"""
        deadline = time.monotonic() + timeout
        while len(self.reached(point)) < count:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before reaching {point}")
            assert time.monotonic() < deadline, f"nothing reached {point} in {timeout}s"
            time.sleep(0.02)
        return self.reached(point)

    def release(self, point):
        (self.folder / f"{point}.go").touch()


@pytest.fixture
def pauses(tmp_path):
    return Pauses(tmp_path / "pauses")


# the trainer tests' toy run (make_toy_dataset) and what they compare of runs
FAST = ["--train-name", "toy.copy", "--model-size", "tiny", "--warmup-steps", "5", "--lr", "1e-3", "--log-interval", "5",
        "--eval-interval", "20", "--checkpoint-interval", "10", "--num-test-sequences", "16"]


def weights(store, run_id):
    """A run's latest checkpoint's weights."""
    from checkpoint_store import load_checkpoint
    return load_checkpoint(store, run_id)["model"]


def assert_same_weights(a, b, exact=True):
    import torch
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def losses(store, run_id):
    return [(r["split"], r["step"], r["loss"], r["accuracy"]) for r in store.get_logs(run_id)]


def adam_steps(ck):
    """The AdamW step counts in a checkpoint's optimizer state."""
    return {float(v["step"]) for v in ck["optimizer"]["state"].values()}
