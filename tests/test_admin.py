"""admin.py: every command's happy path and its bad inputs, checkpoint export/import round trips,
and the embedded database server's status, stop and first start."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import admin
import checkpoint_store
import server
from checkpoint_store import load_checkpoint
from conftest import ROOT, call, make_checkpoint, make_toy_dataset, run_cli, snapshot
from store import connect


def ok(*argv):
    code, out, err = call(admin.main, *argv)
    assert code == 0 and not err, (argv, err)
    return out


def refused(store, *argv, words=()):
    """The command fails with one line on stderr, and the store is as it was."""
    before = snapshot(store.db)
    code, out, err = call(admin.main, *argv)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert all(w in lines[0] for w in words), (words, err)
    assert snapshot(store.db) == before
    return lines[0]


def same_tensors(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.fixture
def runs(store):
    make_checkpoint(store, "alpha", step=10)
    make_checkpoint(store, "beta", step=20, seed=1)
    store.runs.insert_one({"_id": "gamma", "config": {"train_name": "toy.copy", "train_steps": 5}, "status": "failed",
                        "error": "ValueError: loss is nan\nmore", "step": 0, "lease": None})
    return store


def test_list_all(store):
    assert "(no runs)" in ok("list-all")
    make_checkpoint(store, "alpha")
    store.runs.insert_one({"_id": "gamma", "config": {}, "status": "failed", "error": "ValueError: loss is nan\nmore"})
    out = ok("list-all").splitlines()
    assert out[1].startswith("alpha") and "finished" in out[1] and "10/10" in out[1] and "toy.copy" in out[1]
    assert out[2].startswith("gamma") and "failed" in out[2] and "error: ValueError: loss is nan" in out[3]


def test_show(runs):
    out = ok("show", "--run-id", "alpha")
    assert ok("show", "alpha") == out  # the run id as data.py show takes a name
    assert out.startswith("run alpha: finished at step 10") and "checkpoint: step 10" in out
    assert "train_name             toy.copy" in out
    assert [l.split()[:2] for l in out.splitlines() if l.strip().startswith(("5 ", "10 "))] == [["5", "train"], ["10", "train"]]
    assert "checkpoint: none" in ok("show", "--run-id", "gamma")
    refused(runs, "show", "--run-id", "nope", words=["no run with id 'nope'", "list-all"])
    refused(runs, "show", "nope", words=["no run with id 'nope'"])


def test_list_all_optimal_is_the_latest_test_evaluation(runs):
    """A later bootstrap stores a train-split result: list-all's opt % stays the test split's."""
    import datetime
    t = datetime.datetime.now(datetime.timezone.utc)
    for split, pct, age in (("test", 31.5, 60), ("train", 88.0, 0)):
        runs.results.insert_one({"run_id": "alpha", "step": 10, "params": {"split": split},
                                 "metrics": {"optimal_pct": pct}, "time": t - datetime.timedelta(seconds=age)})
    line = next(l for l in ok("list-all").splitlines() if l.startswith("alpha"))
    assert "31.5" in line and "88.0" not in line


def test_drop_run(runs):
    ok("drop-run", "--run-id", "alpha")
    assert runs.get_run("alpha") is None and not runs.get_logs("alpha")
    assert runs.db["checkpoints.files"].count_documents({"metadata.run_id": "alpha"}) == 0
    assert load_checkpoint(runs, "beta")["step"] == 20 and runs.get_logs("beta")  # the others are untouched
    refused(runs, "drop-run", "--run-id", "alpha", words=["no run with id 'alpha'"])


def test_drop_of_a_live_run_needs_force(runs, tmp_path):
    runs.start_run("live", {"train_name": "toy.copy"}, owner="host:1", lease_s=600, world_size=1, host="host")
    refused(runs, "drop-run", "--run-id", "live", words=["'live' is being trained by host:1", "--force"])
    refused(runs, "bulk-drop-run", "--pattern", ".*", words=["live", "--force"])  # nothing dropped
    torch.save(load_checkpoint(runs, "alpha"), tmp_path / "alpha.pt")
    refused(runs, "import-checkpoint", "--filename", tmp_path / "alpha.pt", "--run-id", "live", "--replace",
            words=["'live' is being trained", "drop-run --run-id live --force"])  # --replace does not drop a live run
    runs.runs.update_one({"_id": "live"}, {"$set": {"lease.expires": 0}})  # an expired lease is no holder
    assert runs.live_holder("live") is None
    runs.acquire_lease("live", "host:2", 600)
    ok("drop-run", "--run-id", "live", "--force")
    assert runs.get_run("live") is None and runs.get_run("alpha") is not None


def test_bulk_drop_run(runs):
    refused(runs, "bulk-drop-run", "--run-id", "alpha", "--run-id", "nope", words=["'nope'"])  # all or nothing
    refused(runs, "bulk-drop-run", words=["give --run-id"])
    refused(runs, "bulk-drop-run", "--pattern", "zeta.*", words=["no run matched"])
    refused(runs, "bulk-drop-run", "--pattern", "(alpha", words=["invalid --pattern"])
    out = ok("bulk-drop-run", "--run-id", "gamma", "--pattern", "al.*a")
    assert out.splitlines() == ["dropped run gamma", "dropped run alpha"]
    assert [r["_id"] for r in runs.list_runs()] == ["beta"]
    assert runs.db["checkpoints.files"].count_documents({}) == 1 and {r["run_id"] for r in runs.logs.find()} == {"beta"}


def test_list_all_checkpoints(runs):
    out = ok("list-all-checkpoints").splitlines()
    assert [l.split()[:2] for l in out[1:]] == [["alpha", "10"], ["beta", "20"]]


def test_best_checkpoints_are_listed_shown_exported_and_dropped(runs, tmp_path):
    """A run trained with --patience keeps its best checkpoint beside its latest: list-all-checkpoints
    and show say which step each holds, export-checkpoint --checkpoint best writes the best, and
    drop-run deletes both."""
    state = load_checkpoint(runs, "alpha")
    metrics = {"step": 5, "optimal_pct": 40.0, "correct_pct": 50.0, "plan_loss": 0.5}
    checkpoint_store.save_checkpoint(runs, "alpha", 5, {**state, "step": 5}, which="best", metrics=metrics)
    runs.runs.update_one({"_id": "alpha"}, {"$set": {"stopped_early": {"step": 10, "best_step": 5},
                                                     "config.patience": 2}})
    out = ok("list-all-checkpoints").splitlines()
    assert [l.split()[:3] for l in out[1:]] == [["alpha", "10", "latest"], ["alpha", "5", "best"],
                                                ["beta", "20", "latest"]]
    out = ok("show", "--run-id", "alpha")
    assert "checkpoint: step 10," in out and "best checkpoint: step 5 (validation: optimal 40.0%, correct 50.0%, plan loss 0.5000)" in out
    assert "stopped early at step 10: 2 evaluations in a row without improvement (--patience 2); best step 5" in out
    assert "best checkpoint" not in ok("show", "--run-id", "beta")
    assert "exported alpha step 5 (best)" in ok("export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path,
                                                "--checkpoint", "best")
    assert "exported alpha step 10 to" in ok("export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path)
    for name, field in (("alpha.best.pt", "best"), ("alpha.pt", "checkpoint")):
        assert (tmp_path / name).read_bytes() == runs.fs.open_download_stream(runs.get_run("alpha")[field]["id"]).read()
    assert torch.load(tmp_path / "alpha.best.pt", weights_only=True)["step"] == 5
    refused(runs, "export-checkpoint", "--run-id", "beta", "--export-dir", tmp_path / "none", "--checkpoint", "best",
            words=["no best checkpoint", "--patience"])
    refused(runs, "export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path / "none", "--checkpoint", "newest",
            words=["unknown checkpoint 'newest'", "--checkpoint best"])
    # a latest save keeps the best; a drop deletes both
    checkpoint_store.save_checkpoint(runs, "alpha", 15, {**state, "step": 15})
    assert runs.db["checkpoints.files"].count_documents({"metadata.run_id": "alpha"}) == 2
    assert load_checkpoint(runs, "alpha", which="best")["step"] == 5
    ok("drop-run", "--run-id", "alpha")
    assert runs.db["checkpoints.files"].count_documents({"metadata.run_id": "alpha"}) == 0


def test_export_and_bulk_export(runs, tmp_path):
    assert "exported alpha step 10" in ok("export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path / "one")
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["alpha.pt"]
    refused(runs, "export-checkpoint", "--run-id", "gamma", "--export-dir", tmp_path / "none", words=["no checkpoint"])
    refused(runs, "export-checkpoint", "--run-id", "nope", "--export-dir", tmp_path / "none", words=["'nope'"])
    refused(runs, "bulk-export-checkpoint", "--export-dir", tmp_path / "none", "--run-id", "alpha", "--run-id", "nope")
    assert not (tmp_path / "none").exists()  # nothing written for a refused command
    (tmp_path / "file").write_text("")
    refused(runs, "export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path / "file", words=["cannot write"])
    ok("bulk-export-checkpoint", "--export-dir", tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["alpha.pt", "beta.pt"]
    ok("bulk-export-checkpoint", "--export-dir", tmp_path / "some", "--run-id", "beta")
    assert [p.name for p in (tmp_path / "some").iterdir()] == ["beta.pt"]
    for name in ("alpha", "beta"):
        assert (tmp_path / "all" / f"{name}.pt").read_bytes() == \
            runs.fs.open_download_stream(runs.get_run(name)["checkpoint"]["id"]).read()  # byte for byte


def test_trained_checkpoint_export_import_round_trip(store, tmp_path):
    make_toy_dataset(store.db)
    flags = ["--train-name", "toy.copy", "--model-size", "tiny", "--log-interval", "3", "--checkpoint-interval", "3",
             "--num-test-sequences", "8"]
    run_cli("train.py", "single", "--run-id", "trained", *flags, "--train-steps", "6")
    r = run_cli("admin.py", "export-checkpoint", "--run-id", "trained", "--export-dir", tmp_path)
    assert f"exported trained step 6 to {tmp_path / 'trained.pt'}" in r.stdout
    out = ok("import-checkpoint", "--filename", tmp_path / "trained.pt", "--run-id", "copy")
    assert out.strip() == f"imported {tmp_path / 'trained.pt'} as run copy (step 6)"
    a, b = load_checkpoint(store, "trained"), load_checkpoint(store, "copy")
    assert b["run_id"] == "copy" and same_tensors({**a, "run_id": None}, {**b, "run_id": None})
    run = store.get_run("copy")
    assert run["status"] == "imported" and run["step"] == 6 and run["config"] == store.get_run("trained")["config"]
    # importing over an existing run needs --replace
    refused(store, "import-checkpoint", "--filename", tmp_path / "trained.pt", "--run-id", "copy", words=["--replace"])
    store.log("copy", 3, "train", {"loss": 9.0})
    ok("import-checkpoint", "--filename", tmp_path / "trained.pt", "--run-id", "copy", "--replace")
    assert not store.get_logs("copy") and store.db["checkpoints.files"].count_documents({"metadata.run_id": "copy"}) == 1
    # an imported run resumes like the original
    r = run_cli("train.py", "single", "--run-id", "copy", *flags, "--train-steps", "6")
    assert "resuming copy from step 6" in r.stdout and store.get_run("copy")["status"] == "finished"
    # without --run-id, the id recorded in the file
    store.drop_run("trained")
    ok("import-checkpoint", "--filename", tmp_path / "trained.pt")
    assert same_tensors(load_checkpoint(store, "trained")["model"], a["model"])
    refused(store, "import-checkpoint", "--filename", tmp_path / "missing.pt", words=["no such file"])


def test_database_commands_with_the_embedded_server(embedded):
    assert "embedded server not running" in ok("db", "status") and str(embedded) in ok("db", "status")
    assert "embedded server was not running" in ok("db", "stop")
    assert "(no runs)" in ok("list-all")  # first use starts it
    info = json.loads((embedded / "server.json").read_text())
    assert f"embedded server up: pid {info['pid']}, mongodb://127.0.0.1:{info['port']}" in ok("db", "status")
    store = connect()
    make_checkpoint(store, "kept")
    assert ok("db", "stop").strip() == "embedded server stopped"  # even with this process still connected
    assert not server.pid_alive(info["pid"]) and not (embedded / "server.json").exists()
    assert "embedded server not running" in ok("db", "status")
    assert load_checkpoint(connect(), "kept")["step"] == 10  # restarted on use, the data still there


def test_database_commands_with_mongodb_uri(store, env):
    assert f"MONGODB_URI is set: using {env['uri']}" in ok("db", "status")
    refused(store, "db", "stop", words=["MONGODB_URI is set"])


def test_stale_server_record_is_not_trusted(embedded):
    """A server.json whose pid is now some other process: status says not running, stop signals nothing."""
    embedded.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (embedded / "server.json").write_text(json.dumps({"pid": sleeper.pid, "host": "127.0.0.1", "port": 1, "started": 0}))
        assert "embedded server not running" in ok("db", "status")
        assert "embedded server was not running" in ok("db", "stop")
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_concurrent_first_uses_start_exactly_one_server(embedded):
    procs = [subprocess.Popen([sys.executable, "admin.py", "list-all"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and "(no runs)" in out, err
    servers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"secantusd" in a for a in args) and str(embedded / "data").encode() in args:
            servers.append(int(cmdline.parent.name))
    assert servers == [json.loads((embedded / "server.json").read_text())["pid"]]


def test_bad_command_lines_are_refused(store):
    for argv in (["show"], ["drop-run"], ["export-checkpoint", "--run-id", "x"], ["db", "restart"], ["frobnicate"], []):
        code, out, err = call(admin.main, *argv)
        assert code == 2 and "usage:" in err and "Traceback" not in err


def test_import_replace_is_all_or_nothing(runs, tmp_path, pauses):
    """An import --replace killed after writing the new checkpoint and before switching leaves the old
    run whole; one that completes leaves only the new one."""
    ok("export-checkpoint", "--run-id", "alpha", "--export-dir", tmp_path)
    doc, logs = runs.get_run("beta"), runs.get_logs("beta")
    without_pending = lambda d: {k: v for k, v in d.items() if k != "pending_checkpoint"}

    def fails(self, data):  # the connection lost half-way through the new file
        raise OSError("connection reset")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_store._Writer, "write", fails)
        with pytest.raises((OSError, RuntimeError)):  # the error, or torch.save's wrapping of it
            call(admin.main, "import-checkpoint", "--filename", tmp_path / "alpha.pt", "--run-id", "beta", "--replace")
    assert without_pending(runs.get_run("beta")) == without_pending(doc) and runs.get_logs("beta") == logs
    proc = subprocess.Popen([sys.executable, "admin.py", "import-checkpoint", "--filename", tmp_path / "alpha.pt",
                             "--run-id", "beta", "--replace"], cwd=ROOT, env={**os.environ, **pauses.env("import-upload")})
    pauses.wait("import-upload", proc)
    proc.kill()
    proc.wait()
    assert without_pending(runs.get_run("beta")) == without_pending(doc)
    assert runs.get_logs("beta") == logs and load_checkpoint(runs, "beta")["step"] == 20
    # that load removed the killed import's upload, as it removes a killed save's
    assert runs.get_run("beta")["pending_checkpoint"] is None
    files = [f["_id"] for f in runs.db["checkpoints.files"].find()]
    assert runs.db["checkpoints.chunks"].count_documents({"files_id": {"$nin": files}}) == 0
    ok("import-checkpoint", "--filename", tmp_path / "alpha.pt", "--run-id", "beta", "--replace")
    assert same_tensors(load_checkpoint(runs, "beta")["model"], load_checkpoint(runs, "alpha")["model"])
    assert runs.get_run("beta")["step"] == 10 and not runs.get_logs("beta")
    assert runs.db["checkpoints.files"].count_documents({"metadata.run_id": "beta"}) == 1


def test_a_run_whose_trainer_died_shows_as_interrupted(runs):
    t = time.time()
    cfg = {"train_name": "toy.copy", "train_steps": 50}
    runs.runs.insert_many([
        {"_id": "dead", "config": cfg, "status": "running", "step": 20, "lease": {"owner": "h:1:a", "expires": t - 240,
                                                                                 "seen": t - 300}},
        {"_id": "gave-up", "config": cfg, "status": "running", "step": 20, "lease": None},  # released, never marked
        {"_id": "live", "config": cfg, "status": "running", "step": 20, "lease": {"owner": "h:2:b", "expires": t + 600,
                                                                                 "seen": t}}])
    before, docs = snapshot(runs.db), list(runs.runs.find())
    out = ok("list-all").splitlines() + [""]
    line = {l.split()[0]: (l, out[i + 1]) for i, l in enumerate(out[:-1]) if l and not l.startswith(" ")}
    assert line["dead"][0].split()[1] == "interrupted" and "trainer last seen 5m ago" in line["dead"][1]
    assert line["gave-up"][0].split()[1] == "interrupted" and "train.py single --run-id gave-up" in line["gave-up"][1]
    assert line["live"][0].split()[1] == "running"
    shown = ok("show", "--run-id", "dead").splitlines()[0]
    assert shown.startswith("run dead: interrupted (trainer last seen 5m ago; continue with "
                            "`python train.py single --run-id dead`)")
    assert ok("show", "--run-id", "live").startswith("run live: running at step 20")
    assert snapshot(runs.db) == before and list(runs.runs.find()) == docs  # reading only


def test_copy_run_refusals_and_a_killed_copy(runs, pauses):
    """copy-run refuses an existing target, a run being trained and an unknown one, changing nothing; a
    copy killed before its switch leaves a target marked `importing`, which the same copy replaces."""
    refused(runs, "copy-run", "--run-id", "alpha", "--to", "beta", words=["'beta' exists", "drop-run --run-id beta"])
    refused(runs, "copy-run", "--run-id", "nope", "--to", "new", words=["no run with id 'nope'"])
    refused(runs, "copy-run", "--run-id", "alpha", "--to", "bad id", words=["run id"])
    runs.start_run("live", {"train_name": "toy.copy"}, owner="host:1", lease_s=600, world_size=1, host="host")
    refused(runs, "copy-run", "--run-id", "live", "--to", "new", words=["'live' is being trained by host:1"])
    proc = subprocess.Popen([sys.executable, "admin.py", "copy-run", "--run-id", "alpha", "--to", "new"], cwd=ROOT,
                            env={**os.environ, **pauses.env("copy-run")})
    pauses.wait("copy-run", proc)
    proc.kill()
    proc.wait()
    assert runs.get_run("new")["status"] == "importing" and runs.db["checkpoints.files"].count_documents(
        {"metadata.run_id": "new"}) == 1
    out = ok("copy-run", "--run-id", "alpha", "--to", "new")
    assert "copied run alpha to new" in out
    new, alpha = runs.get_run("new"), runs.get_run("alpha")
    assert new["status"] == alpha["status"] and new["step"] == alpha["step"] == 10
    assert runs.db["checkpoints.files"].count_documents({"metadata.run_id": "new"}) == 1  # the leftover's file gone
    assert same_tensors(load_checkpoint(runs, "new")["model"], load_checkpoint(runs, "alpha")["model"])
    assert load_checkpoint(runs, "alpha")["run_id"] != "new"
