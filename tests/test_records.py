"""Run records (records.py, admin.py export-record / import-record): a run dropped and restored from
its record reports exactly as before and cannot be relaunched; bad records and missing or changed
datasets are refused writing nothing; a killed import leaves no half run."""
import datetime
import json
import subprocess
import sys

import pytest

import admin
from dataset import drop_dataset
from conftest import ROOT, call, make_checkpoint, make_toy_dataset, run_cli, snapshot

MAZE = "maze.5-by-5-deterministic.simple"
TRAIN = ["--train-name", MAZE, "--model-size", "tiny", "--warmup-steps", "2", "--lr", "1e-3", "--log-interval", "2",
         "--eval-interval", "4", "--checkpoint-interval", "4", "--num-test-sequences", "8", "--batch-size", "4",
         "--train-steps", "8", "--patience", "1", "--eval-tasks", "2"]


def reports(tmp_path, tag):
    """What the reports say of runs r1 and r2: compare's and efficiency's JSON, admin.py show of each and
    list-all, the loss and metrics plots."""
    out = {}
    run_cli("report.py", "compare", "--run-id", "r1", "--run-id", "r2", "--json", tmp_path / f"c{tag}.json")
    run_cli("report.py", "efficiency", "--run-id", "r1", "--run-id", "r2", "--out", tmp_path / f"e{tag}.png",
            "--json", tmp_path / f"e{tag}.json")
    out["compare"] = (tmp_path / f"c{tag}.json").read_text()
    out["efficiency"] = (tmp_path / f"e{tag}.json").read_text()
    for run in ("r1", "r2"):
        out[run] = run_cli("admin.py", "show", run).stdout
    out["list-all"] = run_cli("admin.py", "list-all").stdout
    for plot in ("loss", "metrics"):  # the same figures, to the byte
        run_cli("report.py", plot, "--run-id", "r1", "--run-id", "r2", "--out", tmp_path / f"{plot}{tag}.png")
        out[plot] = (tmp_path / f"{plot}{tag}.png").read_bytes()
    return out


def test_a_run_restored_from_its_record_reports_as_before_and_is_not_relaunched(store, tmp_path):
    run_cli("data.py", "maze", "--size", "5", "--num-train", "24", "--num-test", "40", "--chunk", "2", "--workers", "1")
    for seed, run in enumerate(("r1", "r2")):
        run_cli("train.py", "single", "--run-id", run, "--seed", seed, *TRAIN)
        run_cli("eval.py", "--run-id", run, "--checkpoint", "best", "--num-tasks", "4", "--samples", "2",
                "--max-tokens", "60")
    assert store.get_run("r1")["best"] and store.results.count_documents({"run_id": "r1"}) == 1
    before = reports(tmp_path, "before")
    assert json.loads(before["efficiency"])["runs"][0]["steps_trained"] >= 4
    record = tmp_path / "records" / "r1.json"
    run_cli("admin.py", "export-record", "--run-id", "r1", "--out", record)
    run_cli("admin.py", "drop-run", "--run-id", "r1")
    out = run_cli("admin.py", "import-record", record).stdout
    assert "imported run r1" in out and "no checkpoints" in out
    assert reports(tmp_path, "after") == before
    assert "r1" not in run_cli("admin.py", "list-all-checkpoints").stdout  # metadata only: no file to export

    # exported again, the same record but the marker and the (gone) checkpoint files' ids
    again = tmp_path / "again.json"
    run_cli("admin.py", "export-record", "--run-id", "r1", "--out", again)
    first, second = json.loads(record.read_text()), json.loads(again.read_text())
    for rec in (first, second):
        rec["run"].pop("record", None)
        for field in ("checkpoint", "best"):
            rec["run"][field].pop("id")
    assert first == second

    # nothing can train, sample or start from it: one line each, the run unchanged
    doc = store.get_run("r1")
    for argv in (["train.py", "single", "--run-id", "r1"],
                 ["eval.py", "--run-id", "r1", "--checkpoint", "best", "--num-tasks", "2"],
                 ["train.py", "single", "--run-id", "r3", "--start-checkpoint", "r1", "--start-from", "best", *TRAIN],
                 ["admin.py", "export-checkpoint", "--run-id", "r1", "--export-dir", tmp_path / "ck"]):
        r = run_cli(*argv, check=False)
        assert r.returncode == 1 and "restored from a record" in r.stderr, (argv, r.stderr[-800:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert store.get_run("r1") == doc and store.get_run("r3") is None

    # an existing run needs --replace; with it, the run is the record's again
    r = run_cli("admin.py", "import-record", record, check=False)
    assert r.returncode == 1 and "exists; pass --replace" in r.stderr
    run_cli("admin.py", "import-record", record, "--replace")
    assert reports(tmp_path, "replaced") == before


@pytest.fixture
def toy_record(store, tmp_path):
    """The record of a run of the toy dataset with logs, an evaluation and a checkpoint (not trained)."""
    make_toy_dataset(store.db)
    make_checkpoint(store, "toy")
    params = {"dataset": "toy.copy", "split": "test", "num_tasks": 4, "samples": 2, "temperature": 1.0,
              "max_tokens": 60, "seed": 0}
    store.results.insert_one({"run_id": "toy", "step": 10, "pkey": json.dumps(params), "params": params,
                              "metrics": {"optimal_pct": 12.5}, "time": datetime.datetime(2026, 1, 2, 3, 4, 5, 678000)})
    path = tmp_path / "toy.json"
    assert call(admin.main, "export-record", "--run-id", "toy", "--out", path)[0] == 0
    return path


def refused(store, *argv):
    """Run admin.py; its exit code and one-line error, having checked that nothing was written."""
    was = snapshot(store.db)
    code, _, err = call(admin.main, *argv)
    assert snapshot(store.db) == was
    assert len(err.strip().splitlines()) == 1, err
    return code, err


def test_bad_records_are_refused_writing_nothing(store, toy_record, tmp_path):
    text = toy_record.read_text()
    cases = {"truncated": (text[:len(text) // 2], "not a whole run record"),
             "other": (json.dumps({"hello": 1}), "not a run record"),
             "version": (text.replace('"version":1', '"version":7'), "of version 7"),
             "damaged": (text.replace('"run_id":"toy"', '"run_id":"other"'), "damaged run record")}
    for name, (content, msg) in cases.items():
        (tmp_path / f"{name}.json").write_text(content)
        code, err = refused(store, "import-record", tmp_path / f"{name}.json")
        assert code == 1 and msg in err, (name, err)
    code, err = refused(store, "import-record", toy_record)  # the run is still there
    assert code == 1 and "exists; pass --replace" in err


def test_a_record_whose_dataset_is_missing_or_changed_is_refused(store, toy_record):
    call(admin.main, "drop-run", "--run-id", "toy")
    drop_dataset(store.db, "toy.copy")
    code, err = refused(store, "import-record", toy_record)
    assert code == 1 and "not in the database: generate it first" in err and '"seed": 0' in err
    make_toy_dataset(store.db, seed=1)  # the same name, other data
    code, err = refused(store, "import-record", toy_record)
    assert code == 1 and "holds other data" in err
    make_toy_dataset(store.db, seed=0)  # made again as it was: accepted
    assert call(admin.main, "import-record", toy_record)[0] == 0


def test_a_killed_import_leaves_no_half_run_and_is_completed_by_the_same_import(store, toy_record, pauses):
    shown = call(admin.main, "show", "toy")[1]
    call(admin.main, "drop-run", "--run-id", "toy")
    proc = subprocess.Popen([sys.executable, "admin.py", "import-record", str(toy_record)], cwd=ROOT,
                            env={**__import__("os").environ, **pauses.env("record-import")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pauses.wait("record-import", proc)
    proc.kill()
    proc.wait()
    doc = store.get_run("toy")
    assert doc["status"] == "importing" and doc["record"]  # visibly not whole, and nothing trains from it
    r = run_cli("eval.py", "--run-id", "toy", check=False)
    assert r.returncode == 1 and "restored from a record" in r.stderr
    assert call(admin.main, "import-record", toy_record)[0] == 0  # completes it, no --replace needed
    assert call(admin.main, "show", "toy")[1] == shown


def test_bulk_import_names_a_bad_record_and_imports_the_others(store, toy_record, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "toy.json").write_text(toy_record.read_text())
    (folder / "bad.json").write_text(toy_record.read_text()[:100])
    call(admin.main, "drop-run", "--run-id", "toy")
    code, out, err = call(admin.main, "bulk-import-record", "--dir", folder)
    assert code == 1 and "1 of 2 records not imported" in err
    assert f"{folder / 'bad.json'}: not imported: " in out and f"{folder / 'toy.json'}: imported run toy" in out
    assert store.get_run("toy")["record"]
    code, out, _ = call(admin.main, "bulk-import-record", "--dir", folder, "--skip-existing")
    assert "toy.json: run toy exists, skipped" in out
