"""Shared fixtures: one in-memory SecantusDB server per test session, a fresh database per test."""
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def start_server(log_path, storage=":memory:", port=0):
    """Start a SecantusDB process; returns (process, port) once it listens."""
    exe = Path(sys.executable).parent / "secantusd-py"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(exe if exe.exists() else "secantusd-py"), "--standalone", "--host", "127.0.0.1",
                             "--port", str(port), "--storage-path", str(storage)],
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
    proc, port = start_server(tmp_path_factory.mktemp("db") / "server.log")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """A fresh database and dataset cache for this test, through the environment (subprocesses too)."""
    uri = f"mongodb://127.0.0.1:{server}/t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MONGODB_URI", uri)
    monkeypatch.setenv("SEARCHFORMER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return {"uri": uri, "port": server, "tmp": tmp_path}


@pytest.fixture
def st(env):
    import store
    return store.connect()


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
    import data
    rng = np.random.default_rng(seed)
    w = data.DatasetWriter(db, name, "toy", {"seed": seed}, [f"t{i}" for i in range(vocab_size)], overwrite=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            p = rng.integers(len(data.SPECIALS), len(data.SPECIALS) + vocab_size, rng.integers(3, 14))
            w.add(split, p, p[::-1], np.sort(p), data.digest(f"{split}{i}".encode()))
    w.commit()
    return name
