"""Importing datasets in the reference's MongoDB layout (vocabulary + <name>.seq/meta.<split>)."""
import numpy as np
import pymongo
import pytest

import data
import dataset
import maze
import reference_import
from conftest import run_cli
from errors import ConfigError, DataError

SOURCE = "maze.10-by-10-deterministic.simple"


@pytest.fixture
def source(env):
    """A reference-layout dataset in another database of the test server: 40 train and 8 test maze tasks,
    some with bos/eos markers around a part, and one sequence per split with a token outside the vocabulary."""
    uri = f"mongodb://127.0.0.1:{env['port']}/"
    db = pymongo.MongoClient(uri)[f"ref{env['uri'].rsplit('/', 1)[1]}"]
    db.vocabulary.insert_one({"_id": SOURCE, "vocabulary": list({*maze.vocabulary(10), "bos", "eos"})})
    tasks = [t for _, ts in maze.generate(10, 6, seed=11, nondeterministic=False) for t in ts][:48]
    expected = {}
    for split, chunk in (("test", tasks[:8]), ("train", tasks[8:])):
        seqs, metas, expected[split] = [], [], []
        for i, t in enumerate(chunk):
            prompt = ["bos", *t["prompt"], "eos"] if i % 2 else t["prompt"]  # markers on some only
            seqs.append({"_id": 10 * i, "prompt": prompt, "reasoning": t["trace"], "plan": t["plan"]})
            metas.append({"_id": 10 * i, "prompt_len": len(prompt), "reasoning_len": len(t["trace"]),
                          "plan_len": len(t["plan"])})
            expected[split].append((10 * i, t["prompt"], t["trace"], t["plan"]))
        seqs[3]["reasoning"] = seqs[3]["reasoning"][:5] + ["c999"] + seqs[3]["reasoning"][5:]  # not in the vocabulary
        del expected[split][3]
        db[f"{SOURCE}.seq.{split}"].insert_many(seqs)
        db[f"{SOURCE}.meta.{split}"].insert_many(metas)
    return {"uri": uri, "db": db.name, "expected": expected}


def imported(db, name, split):
    vocab = dataset.get_dataset(db, name)["vocabulary"]
    part = dataset.load_split(db, name, split, use_cache=False)
    coll = db[f"ds.{name}.{dataset.get_dataset(db, name)['uid']}.{split}"]
    source_ids = [d["source_id"] for d in coll.find({}, {"source_id": 1}).sort("_id", 1)]
    return [(sid, *([vocab[i] for i in part.get(r, p)] for p in dataset.PARTS)) for r, sid in enumerate(source_ids)]


def test_import_converts_skips_unknown_tokens_and_trains(store, source):
    r = run_cli("data.py", "import", "--from-uri", source["uri"], "--from-db", source["db"], "--name", SOURCE,
                "--as", "ref.maze10", "--batch-size", "7")
    assert f"imported {SOURCE} as ref.maze10: 39 train, 7 test sequences, 2 skipped" in r.stdout
    assert "skipped 2 sequences" in r.stderr and "test 30, train 30" in r.stderr
    assert "import maze.10-by-10-deterministic.simple: 48/48" in r.stderr  # progress
    doc = dataset.get_dataset(store.db, "ref.maze10")
    assert doc["task"] == "maze" and doc["params"]["n"] == 10 and not doc["params"]["nondeterministic"]
    assert doc["vocabulary"][:4] == dataset.SPECIALS and "bos" not in doc["vocabulary"]
    assert len(doc["vocabulary"]) == 4 + len(maze.vocabulary(10)) and doc["skipped"] == 2
    for split in ("train", "test"):
        assert imported(store.db, "ref.maze10", split) == source["expected"][split]
    assert "S" in data.show_sequence(store.db, "ref.maze10", "test", 1)  # the maze board
    r = run_cli("train.py", "single", "--run-id", "imp", "--train-name", "ref.maze10", "--model-size", "tiny",
                "--train-steps", "4", "--warmup-steps", "2", "--batch-size", "4", "--log-interval", "2",
                "--eval-interval", "4", "--checkpoint-interval", "4", "--num-test-sequences", "4")
    assert "step 4/4" in r.stdout and store.get_run("imp")["status"] == "finished"


def test_interrupted_import_resumes_to_the_same_dataset(store, source, monkeypatch):
    reference_import.import_dataset(store.db, source["uri"], source["db"], SOURCE, "whole", batch=5)
    calls, save = [0], dataset.DatasetWriter.save_progress

    def dies_on_the_fourth(self, **progress):  # test: after 5, at the end; train: after 5, after 10
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        save(self, **progress)

    monkeypatch.setattr(dataset.DatasetWriter, "save_progress", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        reference_import.import_dataset(store.db, source["uri"], source["db"], SOURCE, "resumed", batch=5)
    monkeypatch.undo()
    assert store.db.datasets.find_one({"_id": "resumed"})["building"]["progress"]["after"] == {"test": 70, "train": 40}
    assert reference_import.import_dataset(store.db, source["uri"], source["db"], SOURCE, "resumed", batch=5)[1:] == \
        ({"test": 7, "train": 39}, 2)
    for split in ("train", "test"):
        a, b = (dataset.load_split(store.db, n, split, use_cache=False) for n in ("whole", "resumed"))
        assert np.array_equal(a.flat["trace"], b.flat["trace"]) and np.array_equal(a.lens["plan"], b.lens["plan"])


def test_password_never_shows_and_bad_sources_are_one_line_errors(env, source):
    # the test server has no authentication, so pymongo's login fails: the error must hide the password
    uri = f"mongodb://alice:pw-s3cret@127.0.0.1:{env['port']}/"
    r = run_cli("data.py", "import", "--from-uri", uri, "--from-db", source["db"], "--name", SOURCE, check=False)
    assert r.returncode != 0 and "pw-s3cret" not in r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "alice:***@" in r.stderr
    db = pymongo.MongoClient(env["uri"]).get_default_database()
    with pytest.raises(DataError, match="no dataset 'nope'"):
        reference_import.import_dataset(db, source["uri"], source["db"], "nope")
    with pytest.raises(ConfigError, match="--as NEW"):
        reference_import.import_dataset(db, source["uri"], source["db"], "bad name")


def test_task_kind_from_the_name():
    assert reference_import.infer_task("maze.30-by-30-nondeterministic.simple") == ("maze", {"n": 30, "nondeterministic": True})
    assert reference_import.infer_task("sokoban.7-by-7-walls-2-boxes-2") == ("sokoban", {})
    assert reference_import.infer_task("maze.10-by-20-deterministic.simple") == ("imported", {})
    assert reference_import.infer_task("searchformer.step-1") == ("imported", {})
