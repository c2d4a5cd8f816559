"""Maze datasets in MongoDB: generation, resuming, the local cache, A* statistics and the data CLI."""
import re

import numpy as np
import pymongo
import pytest

import admin
import batches
import data
import dataset
import generate
import maze
from conftest import call, run_cli
from errors import DataError

NAME = "maze.10-by-10-deterministic.simple"


def same_split(a, b):
    assert np.array_equal(a.ids, b.ids)
    for p in dataset.PARTS:
        assert np.array_equal(a.lens[p], b.lens[p]) and np.array_equal(a.flat[p], b.flat[p])
    assert a.extra.keys() == b.extra.keys()
    for k in a.extra:
        assert np.array_equal(a.extra[k], b.extra[k], equal_nan=True)


def test_interrupted_generation_resumes_to_the_same_dataset(env, store, monkeypatch):
    ref = pymongo.MongoClient(env["uri"] + "b").get_default_database()
    generate.generate_maze(ref, 10, 300, 40, False, seed=3, overwrite=False, workers=1, chunk=1)
    calls, save = [0], dataset.DatasetWriter.save_progress

    def dies_after_five(self, **progress):
        calls[0] += 1
        if calls[0] > 5:
            raise KeyboardInterrupt
        save(self, **progress)

    monkeypatch.setattr(dataset.DatasetWriter, "save_progress", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        generate.generate_maze(store.db, 10, 300, 40, False, seed=3, overwrite=False, workers=2, chunk=1)
    monkeypatch.undo()
    assert store.db.datasets.find_one({"_id": NAME})["building"]["progress"] == {"next_chunk": 5}
    generate.generate_maze(store.db, 10, 300, 40, False, seed=3, overwrite=False, workers=2, chunk=1)
    for split in ("train", "test"):
        same_split(dataset.load_split(ref, NAME, split, use_cache=False),
                   dataset.load_split(store.db, NAME, split, use_cache=False))
    doc = dataset.get_dataset(store.db, NAME)
    assert doc["counts"] == {"train": 300, "test": 40} and "building" not in doc
    assert len({d["key"] for s in ("train", "test") for d in store.db[f"ds.{NAME}.{doc['uid']}.{s}"].find()}) == 340


def test_the_worker_pool_is_closed_not_terminated_when_left_normally():
    """Leaving generate.worker_pool normally lets queued jobs finish and the workers exit by themselves
    (exit status 0): terminating them, as `with Pool()` does, can kill one holding the result queue's
    lock and hang the parent for ever. An error still stops them at once."""
    with generate.worker_pool(2) as pool:
        workers = list(pool._pool)
        queued = [pool.apply_async(generate.chunk_seed, (0, i)) for i in range(8)]  # submitted ahead, never read
    assert all(r.ready() for r in queued) and [w.exitcode for w in workers] == [0, 0]
    with pytest.raises(KeyError):
        with generate.worker_pool(2) as pool:
            workers = list(pool._pool)
            raise KeyError("stop")
    assert all(w.exitcode is not None and w.exitcode < 0 for w in workers)  # terminated


def test_cache_equals_the_database_and_astar_stats_match_deterministic_traces(store):
    generate.generate_maze(store.db, 10, 50, 12, False, seed=0, overwrite=False, workers=1)
    fresh = dataset.load_split(store.db, NAME, "test", use_cache=False)
    same_split(dataset.load_split(store.db, NAME, "test"), fresh)  # writes the cache
    same_split(dataset.load_split(store.db, NAME, "test"), fresh)  # reads it
    generate.astar_stats(store.db, NAME, runs=5, workers=2)
    part = dataset.load_split(store.db, NAME, "test")
    # deterministic A* has one trace: the stored one
    assert np.array_equal(part.extra["astar_mean_trace_len"], part.lens["trace"].astype(float))
    same_split(part, dataset.load_split(store.db, NAME, "test", use_cache=False))


def test_nondeterministic_astar_stats_average_several_runs(store):
    name = generate.generate_maze(store.db, 10, 0, 6, True, seed=0, overwrite=False, workers=1)
    generate.astar_stats(store.db, name, runs=16, workers=1)
    doc = dataset.get_dataset(store.db, name)
    vocab = doc["vocabulary"]
    part = dataset.load_split(store.db, name, "test")
    for r in range(6):
        m = maze.parse_prompt([vocab[i] for i in part.get(r, "prompt")], 10)
        rng = np.random.default_rng(generate.chunk_seed(0, int(part.ids[r])))
        lens = [len(maze.trace_tokens(maze.astar(m, rng)[0])) for _ in range(16)]
        assert part.extra["astar_mean_trace_len"][r] == np.mean(lens)


def test_data_cli_list_show_refuse_and_drop(store):
    generate.generate_maze(store.db, 10, 30, 5, False, seed=0, overwrite=False, workers=1)
    out = run_cli("data.py", "list").stdout
    assert NAME in out and "complete" in out and "30" in out
    r = run_cli("data.py", "show", NAME, "--id", "2")
    vocab = dataset.get_dataset(store.db, NAME)["vocabulary"]
    part = dataset.load_split(store.db, NAME, "test")
    task = maze.parse_prompt([vocab[i] for i in part.get(2, "prompt")], 10)
    plan = maze.parse_plan([vocab[i] for i in part.get(2, "plan")])
    assert r.stdout.splitlines()[1:] == maze.render(task, plan).splitlines()
    assert f"trace {part.lens['trace'][2]}, plan {part.lens['plan'][2]} tokens" in r.stdout
    r = run_cli("data.py", "maze", "--num-train", "30", "--num-test", "5", check=False)
    assert r.returncode != 0 and r.stderr.strip() == \
        f"error: dataset '{NAME}' exists; pass --overwrite to replace it, or drop it first"
    code, out, err = call(data.main, "maze", "--num-train", "30", "--num-test", "5", "--seed", "1")
    assert code == 1 and "made with other parameters (seed 0 -> 1)" in err and f"--name {NAME}.seed-1" in err, err
    assert call(data.main, "maze", "--num-train", "3", "--num-test", "1", "--seed", "1", "--workers", "1",
                "--name", f"{NAME}.seed-1")[0] == 0
    assert dataset.get_dataset(store.db, f"{NAME}.seed-1")["params"]["seed"] == 1
    code, out, err = call(data.main, "maze", "--num-train", "0", "--num-test", "5")
    assert code == 1 and err.strip() == "error: --num-train must be >= 1, got 0"
    cached = dataset.cache_dir() / NAME
    assert cached.is_dir()  # load_split above cached the test split
    r = run_cli("data.py", "drop", NAME)
    assert store.db.datasets.find_one({"_id": NAME}) is None and not cached.exists()
    run_cli("data.py", "drop", f"{NAME}.seed-1")
    assert not [c for c in store.db.list_collection_names() if c.startswith("ds.")]
    with pytest.raises(DataError, match="does not exist"):
        dataset.get_dataset(store.db, NAME)


def test_overwrite_replaces_and_stats_table(store):
    generate.generate_maze(store.db, 10, 20, 4, False, seed=0, overwrite=False, workers=1)
    old = dataset.get_dataset(store.db, NAME)["uid"]
    generate.generate_maze(store.db, 10, 10, 2, False, seed=1, overwrite=True, workers=1)
    doc = dataset.get_dataset(store.db, NAME)
    assert doc["uid"] != old and doc["counts"] == {"train": 10, "test": 2}
    assert f"ds.{NAME}.{old}.train" not in store.db.list_collection_names()
    rows = data.length_stats(store.db, NAME)
    counts = (("train", 10), ("test", 2))
    assert [(s, p, n) for s, p, n, *_ in rows] == [(s, p, n) for s, n in counts for p in (*dataset.PARTS, "response")]
    trace, plan, response = (r[3:] for r in rows[1:4])
    assert response[0] >= trace[0] + plan[0] and response[-1] <= trace[-1] + plan[-1]


def test_datasets_record_their_generation_rule_and_earlier_ones_stay_usable(store):
    generate.generate_maze(store.db, 10, 30, 5, False, seed=0, overwrite=False, workers=1)
    assert dataset.get_dataset(store.db, NAME)["params"]["rule"] == maze.RULE == "reference"
    assert re.search(rf"{re.escape(NAME)}\s+maze\s+reference\s+30\s+5\s+complete", run_cli("data.py", "list").stdout)
    # a dataset made before the rule was recorded: flagged, and still loads and batches as before
    store.db.datasets.update_one({"_id": NAME}, {"$unset": {"params.rule": ""}})
    assert re.search(rf"{re.escape(NAME)}\s+maze\s+earlier\s+30", run_cli("data.py", "list").stdout)
    assert "generation rule earlier" in run_cli("data.py", "show", NAME).stdout
    seqs = batches.Sequences.build(dataset.load_split(store.db, NAME, "train", use_cache=False), range(30), plan_only=False)
    assert len(seqs) == 30
    store.runs.insert_one({"_id": "old-data", "config": {"train_name": NAME, "test_name": ""}, "status": "finished",
                        "step": 0, "lease": None, "error": None})
    code, out, _ = call(admin.main, "show", "--run-id", "old-data")
    assert code == 0 and f"train dataset {NAME}: generation rule earlier" in out


def test_every_task_of_a_layout_is_kept_in_one_split(store):
    generate.generate_maze(store.db, 10, 200, 40, True, seed=2, overwrite=False, workers=1, chunk=2)
    name = "maze.10-by-10-nondeterministic.simple"
    doc = dataset.get_dataset(store.db, name)
    assert doc["counts"] == {"train": 200, "test": 40}
    groups = {s: [d["group"] for d in store.db[f"ds.{name}.{doc['uid']}.{s}"].find({}, {"group": 1})] for s in ("train", "test")}
    assert not set(groups["train"]) & set(groups["test"])  # split by layout
    assert len(set(groups["train"])) < 200 / 5  # many tasks per layout, as the reference keeps them
    vocab = doc["vocabulary"]
    part = dataset.load_split(store.db, name, "train", use_cache=False)
    first = [r for r in range(200) if groups["train"][r] == groups["train"][0]]
    prompts = [[vocab[i] for i in part.get(r, "prompt")] for r in first]
    assert len({tuple(p[:6]) for p in prompts}) == len(first) > 1  # distinct (start, goal) pairs
    assert len({tuple(p[6:]) for p in prompts}) == 1  # on one wall layout


def test_shuffle_traces_keeps_prompts_and_plans_permutes_traces_and_is_reproducible(store):
    """data.py shuffle-traces: every training task keeps its prompt and plan and carries another task's
    trace (a permutation of the traces, none kept), the test split is copied, the same seed gives the
    same dataset, the source and seed are shown, and the result trains."""
    generate.generate_maze(store.db, 10, 30, 5, False, seed=0, overwrite=False, workers=1)
    code, out, err = call(data.main, "shuffle-traces", NAME, "--seed", "3")
    assert code == 0 and not err and f"wrote dataset shuffled.{NAME}" in out
    src, new = (dataset.load_split(store.db, n, "train") for n in (NAME, f"shuffled.{NAME}"))
    assert np.array_equal(src.ids, new.ids)
    docs = {d["_id"]: d for d in store.db[f"ds.shuffled.{NAME}.{dataset.get_dataset(store.db, f'shuffled.{NAME}')['uid']}.train"].find()}
    perm = [docs[int(i)]["trace_of"] for i in new.ids]
    assert sorted(perm) == sorted(src.ids.tolist()) and all(p != i for p, i in zip(perm, new.ids))
    for r in range(len(src.ids)):
        assert np.array_equal(new.get(r, "prompt"), src.get(r, "prompt"))
        assert np.array_equal(new.get(r, "plan"), src.get(r, "plan"))
        assert np.array_equal(new.get(r, "trace"), src.get(perm[r], "trace"))
    same_split(dataset.load_split(store.db, NAME, "test"), dataset.load_split(store.db, f"shuffled.{NAME}", "test"))
    # reproducible from its seed; another seed, another permutation
    for seed, name in (("3", "again"), ("4", "other")):
        assert call(data.main, "shuffle-traces", NAME, "--seed", seed, "--name", name)[0] == 0
    same_split(new, dataset.load_split(store.db, "again", "train"))
    assert not np.array_equal(new.flat["trace"], dataset.load_split(store.db, "other", "train").flat["trace"])
    assert f"traces shuffled from {NAME} (seed 3)" in call(data.main, "list")[1]
    assert f"derived: traces shuffled from {NAME} (seed 4)" in call(data.main, "show", "other")[1]
    # refusals: one line each, nothing written
    writer = dataset.DatasetWriter(store.db, "plans", "maze", {"n": 10}, dataset.get_dataset(store.db, NAME)["vocabulary"][4:])
    for r in range(3):
        writer.add("train", src.get(r, "prompt"), [], src.get(r, "plan"), dataset.digest(bytes([r])))
    writer.commit()
    before = sorted(store.db.list_collection_names())
    for argv, msg in ((["nope"], "dataset 'nope' does not exist"), (["plans"], "has no traces (plan-only)"),
                      ([NAME, "--seed", "3"], "exists; pass --overwrite"), ([NAME, "--name", NAME], "into itself"),
                      ([NAME, "--seed", "-1"], "--seed must be >= 0")):
        code, out, err = call(data.main, "shuffle-traces", *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and msg in err, (argv, err)
    assert sorted(store.db.list_collection_names()) == before
    r = run_cli("train.py", "single", "--run-id", "control", "--train-name", f"shuffled.{NAME}", "--model-size", "tiny",
                "--train-steps", "2", "--batch-size", "4", "--log-interval", "1", "--num-test-sequences", "4")
    assert "step 2/2" in r.stdout
