"""Sokoban datasets in MongoDB: generation, resuming after a kill, plan checks, A* statistics, show."""
import os
import signal
import subprocess
import sys
from collections import deque

import numpy as np
import pymongo
import pytest

import data
import dataset
import generate
import sokoban
from conftest import ROOT, run_cli
from errors import DataError

NAME = "sokoban.7-by-7-walls-2-boxes-2"
SMALL = ["--max-trace-tokens", "3000", "--chunk", "4", "--workers", "2"]


def decoded(db, split):
    """(tokens of prompt, trace, plan) per sequence, read back through load_split and the stored vocabulary."""
    vocab = dataset.get_dataset(db, NAME)["vocabulary"]
    part = dataset.load_split(db, NAME, split, use_cache=False)
    return [tuple([vocab[i] for i in part.get(r, p)] for p in dataset.PARTS) for r in range(len(part.ids))]


# --- an independent reading of the token format and a breadth-first solver


def parse_level(prompt):
    cells = {"worker": [], "box": [], "dock": [], "wall": []}
    for i in range(0, len(prompt), 3):
        cells[prompt[i]].append((int(prompt[i + 1]), int(prompt[i + 2])))
    return cells["worker"][0], frozenset(cells["box"]), frozenset(cells["dock"]), frozenset(cells["wall"])


def shortest_plan_moves(worker, boxes, docks, walls):
    """Fewest worker moves that put every box on a dock (breadth-first over (worker, boxes))."""
    start = (worker, boxes)
    dist, queue = {start: 0}, deque([start])
    while queue:
        (w, bs) = state = queue.popleft()
        if bs == docks:
            return dist[state]
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (w[0] + dx, w[1] + dy)
            if nxt in walls:
                continue
            nbs = bs
            if nxt in bs:
                pushed = (nxt[0] + dx, nxt[1] + dy)
                if pushed in walls or pushed in bs:
                    continue
                nbs = bs - {nxt} | {pushed}
            if (nxt, nbs) not in dist:
                dist[(nxt, nbs)] = dist[state] + 1
                queue.append((nxt, nbs))
    return None


def plays_out(worker, boxes, docks, walls, plan):
    cells = [(int(plan[i + 1]), int(plan[i + 2])) for i in range(0, len(plan), 3)]
    assert plan[::3] == ["plan"] * len(cells)
    if cells[0] != worker:
        return False
    for a, b in zip(cells, cells[1:]):
        d = (b[0] - a[0], b[1] - a[1])
        if abs(d[0]) + abs(d[1]) != 1 or b in walls:
            return False
        if b in boxes:
            pushed = (b[0] + d[0], b[1] + d[1])
            if pushed in walls or pushed in boxes:
                return False
            boxes = boxes - {b} | {pushed}
    return boxes == docks


# --- tests


def test_stored_plans_are_valid_and_optimal_and_show_draws_them(store):
    generate.generate_sokoban(store.db, 24, 8, seed=5, overwrite=False, workers=1, max_trace_tokens=3000, chunk=8)
    doc = dataset.get_dataset(store.db, NAME)
    assert doc["task"] == "sokoban" and doc["counts"] == {"train": 24, "test": 8}
    keys = {split: [d["key"] for d in store.db[f"ds.{NAME}.{doc['uid']}.{split}"].find()] for split in ("train", "test")}
    assert len(set(keys["train"] + keys["test"])) == 32  # no level twice, none in both splits
    for split in ("train", "test"):
        seqs = decoded(store.db, split)
        prompts = {tuple(p) for p, _, _ in seqs}
        assert len(prompts) == len(seqs)
        for prompt, trace, plan in seqs[:12]:
            worker, boxes, docks, walls = parse_level(prompt)
            assert len(walls) == 24 + 2 and len(boxes) == len(docks) == 2
            assert 0 < len(trace) < 3000
            assert plays_out(worker, boxes, docks, walls, plan)
            assert len(plan) // 3 - 1 == shortest_plan_moves(worker, boxes, docks, walls)
    out = run_cli("data.py", "show", NAME, "--id", "1", "--split", "train").stdout
    prompt, trace, plan = decoded(store.db, "train")[1]
    assert f"prompt {len(prompt)}, trace {len(trace)}, plan {len(plan)} tokens" in out
    board = out.splitlines()[1:]
    assert len(board) == 7 and board[0] == "#######"
    assert "".join(board).count("o") >= 1  # the plan is drawn
    with pytest.raises(DataError, match="no test sequence 99"):
        data.show_sequence(store.db, NAME, "test", 99)


def test_killed_generation_resumes_to_the_same_dataset(env, store, pauses):
    other = env["uri"] + "b"  # a second database for the uninterrupted run
    args = ["sokoban", "--num-train", "300", "--num-test", "20", "--seed", "7", *SMALL]
    ref = pymongo.MongoClient(other).get_default_database()
    generate.generate_sokoban(ref, 300, 20, seed=7, overwrite=False, workers=2, max_trace_tokens=3000, chunk=4)
    proc = subprocess.Popen([sys.executable, "data.py", *args], cwd=ROOT, stderr=subprocess.DEVNULL,
                            env={**os.environ, **pauses.env("dataset-progress")})
    pauses.wait("dataset-progress", proc)  # held by the test hook once its first progress is recorded
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    doc = store.db.datasets.find_one({"_id": NAME})
    assert "uid" not in doc and 0 < sum(doc["building"]["counts"].values()) < 320  # stopped part-way
    with pytest.raises(DataError, match="still being built"):
        dataset.load_split(store.db, NAME, "train")
    run_cli("data.py", *args)
    for split in ("train", "test"):
        a, b = (dataset.load_split(db, NAME, split, use_cache=False) for db in (ref, store.db))
        assert np.array_equal(a.ids, b.ids)
        for p in dataset.PARTS:
            assert np.array_equal(a.lens[p], b.lens[p]) and np.array_equal(a.flat[p], b.flat[p])


def test_astar_stats_are_stored_resumed_and_reach_the_loader(store):
    generate.generate_sokoban(store.db, 4, 6, seed=1, overwrite=False, workers=1, max_trace_tokens=2000, chunk=10)
    before = dataset.load_split(store.db, NAME, "test")  # cached now, without the statistic
    assert before.extra == {}
    generate.astar_stats(store.db, NAME, runs=4, limit=2)
    first = dataset.load_split(store.db, NAME, "test").extra["astar_mean_trace_len"]
    assert not np.isnan(first[:2]).any() and np.isnan(first[2:]).all()  # the cache was refreshed
    r = run_cli("data.py", "astar-stats", NAME, "--runs", "4", "--workers", "2")
    assert "set on 6 test sequences" in r.stdout and "6/6" in r.stderr
    after = dataset.load_split(store.db, NAME, "test").extra["astar_mean_trace_len"]
    assert np.array_equal(after[:2], first[:2])  # done ones were skipped
    assert np.array_equal(after, dataset.load_split(store.db, NAME, "test", use_cache=False).extra["astar_mean_trace_len"])
    vocab = dataset.get_dataset(store.db, NAME)["vocabulary"]
    part = dataset.load_split(store.db, NAME, "test")
    for r in range(6):  # the same seeding as astar-stats: (seed, sequence id)
        level = sokoban.parse_prompt([vocab[i] for i in part.get(r, "prompt")])
        assert after[r] == sokoban.mean_trace_len(level, 4, generate.chunk_seed(0, int(part.ids[r])))
    assert "mean A* trace" in data.show_sequence(store.db, NAME, "test", 0)


def test_bad_generation_flags_are_one_line_errors(env):
    r = run_cli("data.py", "sokoban", "--num-train", "1", "--num-test", "1", "--max-trace-tokens", "0", check=False)
    assert r.returncode != 0 and r.stderr.strip() == "error: --max-trace-tokens must be >= 100"
