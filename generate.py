"""Generating datasets: maze and Sokoban tasks with their A* traces, made in a process pool by seeded
chunks (reproducible whatever the core count, resumable), and the per-task A* statistics that the
ILR metric needs (`data.py maze`, `data.py sokoban`, `data.py astar-stats`)."""
import collections
import contextlib
import functools
import multiprocessing as mp
import signal

import numpy as np
import pymongo
from bson import Binary

import maze
import sokoban
import tasks
from dataset import ASTAR_FIELD, DTYPE, PARTS, DatasetWriter, Progress, digest, encode, get_dataset
from errors import DataError


def _maze_chunk(n, nondeterministic, layouts, seed, index):
    """One seeded job: [(layout key, [(task key, prompt, trace, plan), ...])] for `layouts` layouts."""
    out = []
    for layout, found in maze.generate(n, layouts, seed, nondeterministic):
        encoded = [[encode(t[p], index) for p in PARTS] for t in found]
        out.append((digest(layout), [(digest(ids[0].tobytes()), *ids) for ids in encoded]))
    return out


def _sokoban_chunk(max_trace_tokens, count, seed, index):
    """One seeded job: [(level key, [(level key, prompt, trace, plan)])] for `count` levels."""
    out = []
    for t in sokoban.generate(count, seed, max_trace_tokens):
        key = digest(t["key"])
        out.append((key, [(key, *(encode(t[p], index) for p in PARTS))]))
    return out


def chunk_seed(seed, chunk):
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


@contextlib.contextmanager
def worker_pool(workers):
    """A process pool whose workers leave Ctrl-C to their parent (ignore_sigint), started from a clean
    server process (forkserver), not forked from this one: a fork copies the locks that this process's
    other threads (pymongo's monitors, torch's) may hold at that moment, and a worker can then wait on
    one for ever.

    Left normally, the pool is closed and joined: its workers finish what is queued (at most the few
    chunks submitted ahead) and exit. `with Pool()` would terminate it instead, which can kill a worker
    while it holds the result queue's lock; the pool's task thread then waits on that lock for ever
    (seen: data.py hung in Pool.__exit__). Terminating is kept for an error or Ctrl-C, where stopping
    at once matters more."""
    pool = mp.get_context("forkserver").Pool(workers, initializer=ignore_sigint)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()


def ignore_sigint():
    """A pool worker leaves Ctrl-C (sent to the whole terminal's process group) to its parent, which stops
    them: one line from data.py instead of a traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _generate(writer, what, want, worker, args, seed, workers, chunk):
    """Fill the splits up to `want` ({"test": n, "train": m}, test first) with the task groups of
    seeded chunks made by `worker(*args, chunk, seed, index)` in a process pool, then commit.

    A group (a maze's wall layout, a Sokoban level) goes whole into one split, cut short where the
    split fills up; a group seen before is dropped, so no layout is in both splits. Chunks are
    consumed in order whatever the number of workers, so the dataset depends only on the seed and
    chunk size. Progress is saved after each chunk: running the same command again after an
    interruption continues at the next chunk and ends with the same dataset."""
    total = sum(want.values())
    next_chunk = writer.progress.get("next_chunk", 0)
    progress = Progress(what, total, sum(writer.counts.values()))
    with worker_pool(workers) as pool:
        pending = collections.deque()
        submitted = next_chunk
        while sum(writer.counts.values()) < total:
            while len(pending) < 2 * workers:  # keep every worker busy, results still in chunk order
                job = (*args, chunk, chunk_seed(seed, submitted), writer.index)
                pending.append(pool.apply_async(worker, job))
                submitted += 1
            for group, members in pending.popleft().get():
                split = "test" if writer.counts["test"] < want["test"] else "train"
                if group in writer.groups or writer.counts[split] >= want[split]:
                    continue
                writer.groups.add(group)
                for key, prompt, trace, plan in members[:want[split] - writer.counts[split]]:
                    writer.add(split, prompt, trace, plan, key, group=Binary(group))
            next_chunk += 1
            writer.save_progress(next_chunk=next_chunk)
            progress.update(sum(writer.counts.values()))
    writer.commit()
    progress.update(total, force=True)


def writer_for(db, name, task, params, vocabulary, overwrite):
    """The DatasetWriter of a generation: a complete dataset of that name made with other parameters
    (another --seed, say) is refused with how to make this one beside it."""
    doc = db.datasets.find_one({"_id": name}, {"uid": 1, "params": 1}) or {}
    had = doc.get("params") or {}
    if doc.get("uid") and not overwrite and had != params:
        diff = ", ".join(f"{k} {had.get(k)!r} -> {v!r}" for k, v in params.items() if had.get(k) != v)
        raise DataError(f"dataset {name!r} exists, made with other parameters ({diff}); give this one another name "
                        f"with --name (e.g. --name {name}.seed-{params['seed']}), or pass --overwrite to replace it")
    return DatasetWriter(db, name, task, params, vocabulary, overwrite)


def generate_maze(db, n, num_train, num_test, nondeterministic, seed, overwrite, workers, chunk=16, name=None):
    name = name or tasks.dataset_name("maze", n=n, nondeterministic=nondeterministic)
    params = {"n": n, "nondeterministic": nondeterministic, "seed": seed, "num_train": num_train,
              "num_test": num_test, "chunk": chunk, "rule": maze.RULE}
    writer = writer_for(db, name, "maze", params, maze.vocabulary(n), overwrite)
    # a group is a wall layout: the split is by layout
    _generate(writer, f"maze {n}x{n}", {"test": num_test, "train": num_train}, _maze_chunk, (n, nondeterministic),
              seed, workers, chunk)
    return name


def generate_sokoban(db, num_train, num_test, seed, overwrite, workers, max_trace_tokens=10000, chunk=64, name=None):
    name = name or tasks.dataset_name("sokoban")
    params = {"seed": seed, "num_train": num_train, "num_test": num_test, "max_trace_tokens": max_trace_tokens,
              "chunk": chunk, "rule": sokoban.RULE}
    writer = writer_for(db, name, "sokoban", params, sokoban.vocabulary(), overwrite)
    _generate(writer, "sokoban 7x7", {"test": num_test, "train": num_train}, _sokoban_chunk, (max_trace_tokens,),
              seed, workers, chunk)
    return name


# ---------------------------------------------------------------------------------------------
# A* statistics (the ILR metric compares model traces with the mean A* trace of each task)


def _astar_means(kind, params, vocabulary, runs, jobs):
    """[(id, mean A* trace length in tokens)] for jobs of (id, prompt bytes, seed)."""
    task = tasks.of(kind, params)
    out = []
    for seq_id, prompt, seed in jobs:
        tokens = [vocabulary[i] for i in np.frombuffer(prompt, DTYPE)]
        try:
            mean = task.mean_trace_len(task.parse_prompt(tokens), runs, seed)
        except ValueError as e:
            return f"sequence {seq_id}: cannot run A* on its prompt ({e})"
        out.append((seq_id, float(mean)))
    return out


def astar_stats(db, name, split="test", runs=64, limit=0, seed=0, workers=1, batch=8):
    """Store the mean A* trace length on each sequence of a split (the first `limit` if given).

    Sequences that already have it are skipped, so an interrupted run continues where it stopped.
    Each task's A* runs are seeded by (seed, sequence id): the result does not depend on batching."""
    doc = get_dataset(db, name)
    if doc["task"] not in tasks.KINDS:
        raise DataError(f"dataset {name!r} holds {doc['task']!r} tasks; astar-stats knows maze and sokoban tasks")
    coll = db[f"ds.{name}.{doc['uid']}.{split}"]
    query = {ASTAR_FIELD: {"$exists": False}, **({"_id": {"$lt": limit}} if limit else {})}
    todo = [d["_id"] for d in coll.find(query, {"_id": 1}).sort("_id", 1)]
    total = min(limit or doc["counts"][split], doc["counts"][split])
    done = total - len(todo)
    progress = Progress(f"astar-stats {name} {split}", total, done)

    def jobs():  # read lazily by the pool's feeder thread; prompts are small
        for start in range(0, len(todo), batch):
            docs = coll.find({"_id": {"$in": todo[start:start + batch]}}, {"prompt": 1})
            yield [(d["_id"], d["prompt"], chunk_seed(seed, d["_id"])) for d in docs]

    work = functools.partial(_astar_means, doc["task"], doc["params"], doc["vocabulary"], runs)
    with worker_pool(workers) as pool:
        for result in pool.imap(work, jobs()):
            if isinstance(result, str):
                raise DataError(f"dataset {name!r} {split} {result}")
            if result:
                coll.bulk_write([pymongo.UpdateOne({"_id": i}, {"$set": {ASTAR_FIELD: v}}) for i, v in result])
            db.datasets.update_one({"_id": name}, {"$inc": {"revision": 1}})  # cached copies are now stale
            done += len(result)
            progress.update(done)
    progress.update(total, force=True)
    return total
