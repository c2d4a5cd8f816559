"""Token datasets in MongoDB: generation, listing, inspection, loading and batching for training.

Native format. `datasets` holds one document per dataset: vocabulary, task kind, generation
parameters, counts, and `uid`, the generation whose collections are live. The sequences of a split
live in `ds.<name>.<uid>.<split>`, one document per sequence: `_id` (0, 1, ...), `prompt`, `trace`,
`plan` (little-endian uint16 token ids as binary), their lengths, and `key` (a digest of the task,
for de-duplication and resuming). A generation writes under a new uid and flips the pointer only
when complete, so an interrupted or failed write never replaces a good dataset; it records its
progress, so running the same command again resumes it.

A training sequence is `<bos> prompt <sep> trace plan <eos>` (`<bos> prompt <sep> plan <eos>` for
plan-only models); the loss covers everything after `<sep>`.
"""
import argparse
import collections
import functools
import hashlib
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pymongo
from bson import Binary
from pymongo.errors import PyMongoError

import store
import testhook
from store import StoreError, check_name

SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>"]
PAD, BOS, EOS, SEP = range(4)
DTYPE = np.dtype("<u2")
PARTS = ("prompt", "trace", "plan")


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def encode(tokens, index):
    """Token strings -> uint16 ids; raises KeyError on a token outside the vocabulary."""
    return np.fromiter((index[t] for t in tokens), dtype=DTYPE, count=len(tokens))


def dataset_name(task, **params):
    if task == "maze":
        kind = "nondeterministic" if params["nondeterministic"] else "deterministic"
        return f"maze.{params['n']}-by-{params['n']}-{kind}.simple"
    return "sokoban.7-by-7-walls-2-boxes-2"


# ---------------------------------------------------------------------------------------------
# writing


class DatasetWriter:
    """Builds a dataset under a fresh uid; `commit()` makes it the live one.

    With the same name and parameters as an interrupted build, it resumes: `counts`, `keys`, `groups`
    (the task groups written, see `_generate`) and `progress` come back as last recorded by
    `save_progress()`, and later writes are discarded."""

    def __init__(self, db, name, task, params, vocabulary, overwrite=False):
        self.db, self.name = db, check_name(name, "dataset name")
        doc = db.datasets.find_one({"_id": name}) or {}
        if doc.get("uid") and not overwrite:
            raise StoreError(f"dataset {name!r} exists; pass --overwrite to replace it, or drop it first")
        building = doc.get("building")
        self.vocabulary = [*SPECIALS, *vocabulary]
        self.index = {t: i for i, t in enumerate(self.vocabulary)}
        if building and building["params"] == params and building["vocabulary"] == self.vocabulary:
            self.uid, self.progress, self.counts = building["uid"], building["progress"], building["counts"]
            for split, count in self.counts.items():  # writes after the last progress record are void
                self.coll(split).delete_many({"_id": {"$gte": count}})
            docs = [d for split in self.counts for d in self.coll(split).find({}, {"key": 1, "group": 1})]
            self.keys = {d["key"] for d in docs}
            self.groups = {d["group"] for d in docs if "group" in d}
        else:
            if building:
                self._drop_uid(building["uid"])
            self.uid, self.progress, self.counts = uuid.uuid4().hex[:12], {}, {"train": 0, "test": 0}
            self.keys, self.groups = set(), set()
        self.building = {"uid": self.uid, "task": task, "params": params, "vocabulary": self.vocabulary,
                         "progress": self.progress, "counts": self.counts}
        db.datasets.update_one({"_id": name}, {"$set": {"building": self.building}}, upsert=True)
        self.pending = {"train": [], "test": []}

    def coll(self, split, uid=None):
        return self.db[f"ds.{self.name}.{uid or self.uid}.{split}"]

    def add(self, split, prompt, trace, plan, key, **extra):
        """Add one sequence (ids as uint16 arrays); returns False for a duplicate key."""
        if key in self.keys:
            return False
        self.keys.add(key)
        doc = {"_id": self.counts[split], "key": Binary(key), **extra}
        for part, ids in zip(PARTS, (prompt, trace, plan)):
            doc[part] = Binary(np.asarray(ids, DTYPE).tobytes())
            doc[f"{part}_len"] = len(ids)
        self.pending[split].append(doc)
        self.counts[split] += 1
        if len(self.pending[split]) >= 2000:
            self.flush()
        return True

    def flush(self):
        for split, docs in self.pending.items():
            if docs:
                self.coll(split).insert_many(docs, ordered=False)
                docs.clear()

    def save_progress(self, **progress):
        """Flush, then record how far the build got (what a resumed build continues from)."""
        self.flush()
        self.progress.update(progress)
        self.db.datasets.update_one({"_id": self.name}, {"$set": {"building": self.building}})
        testhook.pause("dataset-progress")  # tests: a build stopped part-way, its progress recorded

    def commit(self, **info):
        # no secondary indexes: nothing queries by field (the loader reads whole splits), and building
        # one on the embedded server took longer than generating the data
        self.flush()
        old = (self.db.datasets.find_one({"_id": self.name}) or {}).get("uid")
        b = self.building
        self.db.datasets.update_one({"_id": self.name}, {
            "$set": {"uid": self.uid, "task": b["task"], "params": b["params"], "vocabulary": self.vocabulary,
                     "counts": dict(self.counts), "created": store.now(), **info},
            "$unset": {"building": ""}})
        if old and old != self.uid:
            self._drop_uid(old)

    def _drop_uid(self, uid):
        for split in ("train", "test"):
            self.coll(split, uid).drop()


def drop_dataset(db, name):
    doc = db.datasets.find_one({"_id": check_name(name, "dataset name")})
    if doc is None:
        raise StoreError(f"no dataset named {name!r} (see `python data.py list`)")
    for uid in {doc.get("uid"), (doc.get("building") or {}).get("uid")} - {None}:
        for split in ("train", "test"):
            db[f"ds.{name}.{uid}.{split}"].drop()
    db.datasets.delete_one({"_id": name})


def generation_rule(doc) -> str:
    """Which rule made a dataset: generated maze and Sokoban datasets record theirs (`reference`);
    those made before the reference's rules were adopted have none and are `earlier`."""
    if doc.get("task") in ("maze", "sokoban"):
        return doc.get("params", {}).get("rule", "earlier")
    return doc.get("task") or "-"  # imported or synthetic: not made here


def get_dataset(db, name):
    doc = db.datasets.find_one({"_id": check_name(name, "dataset name")})
    if doc is None or not doc.get("uid"):
        state = "is still being built (re-run its command to resume)" if doc else "does not exist"
        raise StoreError(f"dataset {name!r} {state}; see `python data.py list`")
    return doc


# ---------------------------------------------------------------------------------------------
# loading


def gather(flat, starts, lens):
    """The concatenation of flat[starts[i]:starts[i] + lens[i]] over i: one slice per run of
    consecutive segments (a filtered split is mostly such runs), no index array per token."""
    starts, lens = np.asarray(starts, np.int64), np.asarray(lens, np.int64)
    if len(lens) == 0:
        return np.zeros(0, flat.dtype)
    cut = np.flatnonzero(starts[1:] != starts[:-1] + lens[:-1]) + 1  # where a new run begins
    first, last = np.concatenate([[0], cut]), np.concatenate([cut, [len(lens)]]) - 1
    begin, end = starts[first], starts[last] + lens[last]
    return np.concatenate([flat[i:j] for i, j in zip(begin.tolist(), end.tolist())])


@dataclass
class Split:
    """One split in memory: all parts concatenated, with per-sequence lengths."""
    ids: np.ndarray  # (N,) sequence ids
    lens: dict  # part -> (N,) int64 lengths
    flat: dict  # part -> concatenated uint16 tokens
    extra: dict  # field -> (N,) float64 (e.g. astar_mean_trace_len), where present

    def offsets(self, part):
        """(N+1,) start of each sequence's part in flat[part]; computed once (get() is called per row)."""
        cached = self.__dict__.setdefault("_offsets", {})
        if part not in cached:
            cached[part] = np.concatenate([[0], np.cumsum(self.lens[part])])
        return cached[part]

    def select(self, rows):
        rows = np.asarray(rows, np.int64)
        flat = {p: gather(self.flat[p], self.offsets(p)[rows], self.lens[p][rows]) for p in PARTS}
        return Split(self.ids[rows], {p: self.lens[p][rows] for p in PARTS}, flat,
                     {k: v[rows] for k, v in self.extra.items()})

    def get(self, row, part):
        off = self.offsets(part)
        return self.flat[part][off[row]:off[row + 1]]


def cache_dir():
    root = os.environ.get("SEARCHFORMER_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "searchformer" / "datasets"


def _read_split(db, coll):
    ids, lens, chunks, extra = [], {p: [] for p in PARTS}, {p: [] for p in PARTS}, {}
    for i, doc in enumerate(db[coll].find({}, {"key": 0}, batch_size=10000).sort("_id", 1)):
        ids.append(doc["_id"])
        for p in PARTS:
            chunks[p].append(doc[p])
            lens[p].append(doc[f"{p}_len"])
        for k, v in doc.items():
            if isinstance(v, float):  # per-sequence statistics such as astar_mean_trace_len
                extra.setdefault(k, {})[i] = v
    columns = {}
    for k, values in extra.items():  # NaN where a sequence lacks the field
        columns[k] = np.full(len(ids), np.nan)
        columns[k][list(values)] = list(values.values())
    return Split(np.asarray(ids, np.int64), {p: np.asarray(lens[p], np.int64) for p in PARTS},
                 {p: np.frombuffer(b"".join(chunks[p]), DTYPE) for p in PARTS}, columns)


def load_split(db, name, split, use_cache=True):
    """The whole split, from the local cache when it holds this generation, else from MongoDB."""
    doc = get_dataset(db, name)
    # the revision counts later additions (astar-stats): a cache made before one is stale
    folder = cache_dir() / name / f"{doc['uid']}.{doc.get('revision', 0)}" / split
    if use_cache and (folder / "done").exists():
        return read_cache(folder)
    data = _read_split(db, f"ds.{name}.{doc['uid']}.{split}")
    if use_cache:
        write_cache(folder, data)
    return data


def read_cache(folder):
    """A split from its cache folder: the tokens memory-mapped (read on use, shared between processes)."""
    arrays = {f.stem: np.load(f, mmap_mode="r") for f in folder.glob("*.npy")}
    return Split(np.asarray(arrays["ids"]), {p: np.asarray(arrays[f"len_{p}"]) for p in PARTS},
                 {p: arrays[f"flat_{p}"] for p in PARTS},
                 {k[6:]: np.asarray(v) for k, v in arrays.items() if k.startswith("extra_")})


def write_cache(folder, data):
    """Write a split's cache folder whole, or not at all (a full disk only costs the cache)."""
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "ids.npy", data.ids)
        for p in PARTS:
            np.save(tmp / f"len_{p}.npy", data.lens[p])
            np.save(tmp / f"flat_{p}.npy", data.flat[p])
        for k, v in data.extra.items():
            np.save(tmp / f"extra_{k}.npy", v)
        (tmp / "done").touch()
        try:
            os.replace(tmp, folder)  # atomic, and refused when another process's copy is already in place
        except OSError:
            if (folder / "done").exists():  # never pull a whole copy from under the processes reading it
                raise
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete leftover
            os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def filter_split(data, min_trace=0, max_trace=None, limit=None):
    """Rows whose trace length is within bounds, the first `limit` of them by id."""
    ok = data.lens["trace"] >= min_trace
    if max_trace is not None:
        ok &= data.lens["trace"] <= max_trace
    rows = np.flatnonzero(ok)
    return rows[:limit] if limit else rows


@dataclass
class Sequences:
    """Training sequences `<bos> prompt <sep> [trace] plan <eos>` over a split's token arrays.

    No token is copied: each batch is assembled from the split's parts (memory-mapped when they come
    from the cache, so ranks on one machine share one copy), and building is bookkeeping on (N,)
    arrays, milliseconds for a million sequences."""
    flat: dict  # part -> the split's concatenated uint16 tokens
    starts: dict  # part -> (N,) int64 start of each sequence's part in flat[part]
    part_len: dict  # part -> (N,) int64 tokens of each part (trace all 0 when plan-only)
    lengths: np.ndarray  # (N,) tokens of each whole sequence
    prompt_len: np.ndarray  # (N,) tokens up to and including <sep>: these carry no loss
    trace_len: np.ndarray  # (N,) 0 when plan-only

    @classmethod
    def build(cls, data, rows, plan_only):
        rows = np.asarray(rows, np.int64)
        starts = {p: data.offsets(p)[rows] for p in PARTS}
        lens = {p: np.zeros(len(rows), np.int64) if plan_only and p == "trace" else data.lens[p][rows].astype(np.int64)
                for p in PARTS}
        total = lens["prompt"] + lens["trace"] + lens["plan"] + 3
        return cls(data.flat, starts, lens, total, lens["prompt"] + 2, lens["trace"])

    def __len__(self):
        return len(self.lengths)

    def tokens(self, r):
        """Sequence r as one uint16 array."""
        pieces = [self.flat[p][self.starts[p][r]:self.starts[p][r] + self.part_len[p][r]] for p in PARTS]
        return np.concatenate([[BOS], pieces[0], [SEP], *pieces[1:], [EOS]]).astype(DTYPE)

    def collate(self, rows, multiple=1):
        """Right-padded inputs, targets (-1 = no loss) and a plan mask, each (B, T) int64 / bool, where
        T is the longest sequence less one, rounded up to `multiple` (fewer shapes for compiled code)."""
        rows = np.asarray(rows)
        n = self.lengths[rows] - 1  # (B,) inputs per row: the last token is only a target
        T = -(-int(n.max()) // multiple) * multiple
        seq = np.full((len(rows), T + 1), PAD, np.int64)
        for i, r in enumerate(rows):
            seq[i, :n[i] + 1] = self.tokens(r)
        col = np.arange(T)
        p = self.prompt_len[rows, None]  # (B, 1)
        loss = (col >= p - 1) & (col < n[:, None])  # position t predicts token t+1; the prompt carries no loss
        x = np.where(col < n[:, None], seq[:, :-1], PAD)  # (B, T)
        y = np.where(loss, seq[:, 1:], -1)  # (B, T)
        plan = loss & (col >= p - 1 + self.trace_len[rows, None])  # (B, T)
        return x, y, plan


def epoch_batches(lengths, seed, epoch, rows, world, token_budget=0, window=64):
    """One epoch's global batches: a seeded shuffle, then sorting inside windows of similar size so
    that each batch holds sequences of similar length (little padding), then a shuffled batch order.

    A batch holds `rows * world` sequences, or with a token budget as many as keep every rank's
    padded tokens (rows x longest) within it, a multiple of `world` and never fewer. With a budget a
    window holds about `window` batches whatever the lengths. Each batch is an array of indices,
    shortest first; an epoch's last few sequences that cannot fill a batch are skipped."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    size = rows * world
    span = size * window  # sequences sorted together
    if token_budget and len(lengths):  # about `window` batches of the budget, whatever the lengths
        span = max(span, int(window * world * token_budget / max(1.0, float(np.mean(lengths)))))
    batches = []
    for start in range(0, len(perm), span):
        chunk = perm[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        if not token_budget:
            batches += [chunk[i:i + size] for i in range(0, len(chunk) - world + 1, size)]
            continue
        lens, i = lengths[chunk].tolist(), 0  # python ints: this loop sees every sequence
        while i + world <= len(chunk):
            j = i + world  # grow while each rank's share, padded to the longest, fits the budget
            while j < len(chunk) and -(-(j + 1 - i) // world) * lens[j] <= token_budget:
                j += 1
            j = i + (j - i) // world * world  # as many rows on every rank: none waits for an extra one
            batches.append(chunk[i:j])
            i = j
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def rank_share(batch, rank, world):
    """A rank's rows of a global batch: strided over the length-sorted batch so shares are balanced."""
    return batch[rank::world]


# ---------------------------------------------------------------------------------------------
# generation


def _maze_chunk(n, nondeterministic, layouts, seed, index):
    """One seeded job: [(layout key, [(task key, prompt, trace, plan), ...])] for `layouts` layouts."""
    import maze
    out = []
    for layout, tasks in maze.generate(n, layouts, seed, nondeterministic):
        encoded = [[encode(t[p], index) for p in PARTS] for t in tasks]
        out.append((digest(layout), [(digest(ids[0].tobytes()), *ids) for ids in encoded]))
    return out


def _sokoban_chunk(max_trace_tokens, count, seed, index):
    """One seeded job: [(level key, [(level key, prompt, trace, plan)])] for `count` levels."""
    import sokoban
    out = []
    for t in sokoban.generate(count, seed, max_trace_tokens):
        key = digest(t["key"])
        out.append((key, [(key, *(encode(t[p], index) for p in PARTS))]))
    return out


def chunk_seed(seed, chunk):
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


class Progress:
    def __init__(self, what, total, done=0):
        self.what, self.total, self.start_done = what, total, done
        self.t0, self.last = time.monotonic(), -math.inf  # the first update prints at once

    def update(self, done, force=False):
        t = time.monotonic()
        if not force and t - self.last < 2.0:
            return
        self.last = t
        rate = (done - self.start_done) / max(t - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"{self.what}: {done}/{self.total} ({rate:.0f}/s, ETA {eta:.0f}s)", file=sys.stderr, flush=True)


def _generate(w, what, want, worker, args, seed, workers, chunk):
    """Fill the splits up to `want` ({"test": n, "train": m}, test first) with the task groups of
    seeded chunks made by `worker(*args, chunk, seed, index)` in a process pool, then commit.

    A group (a maze's wall layout, a Sokoban level) goes whole into one split, cut short where the
    split fills up; a group seen before is dropped, so no layout is in both splits. Chunks are
    consumed in order whatever the number of workers, so the dataset depends only on the seed and
    chunk size. Progress is saved after each chunk: running the same command again after an
    interruption continues at the next chunk and ends with the same dataset."""
    total = sum(want.values())
    next_chunk = w.progress.get("next_chunk", 0)
    progress = Progress(what, total, sum(w.counts.values()))
    with mp.Pool(workers) as pool:
        pending = collections.deque()
        submitted = next_chunk
        while sum(w.counts.values()) < total:
            while len(pending) < 2 * workers:  # keep every worker busy, results still in chunk order
                job = (*args, chunk, chunk_seed(seed, submitted), w.index)
                pending.append(pool.apply_async(worker, job))
                submitted += 1
            for group, tasks in pending.popleft().get():
                split = "test" if w.counts["test"] < want["test"] else "train"
                if group in w.groups or w.counts[split] >= want[split]:
                    continue
                w.groups.add(group)
                for key, prompt, trace, plan in tasks[:want[split] - w.counts[split]]:
                    w.add(split, prompt, trace, plan, key, group=Binary(group))
            next_chunk += 1
            w.save_progress(next_chunk=next_chunk)
            progress.update(sum(w.counts.values()))
    w.commit()
    progress.update(total, force=True)


def generate_maze(db, n, num_train, num_test, nondeterministic, seed, overwrite, workers, chunk=16):
    import maze
    name = dataset_name("maze", n=n, nondeterministic=nondeterministic)
    params = {"n": n, "nondeterministic": nondeterministic, "seed": seed, "num_train": num_train,
              "num_test": num_test, "chunk": chunk, "rule": maze.RULE}
    w = DatasetWriter(db, name, "maze", params, maze.vocabulary(n), overwrite)
    # a group is a wall layout: the split is by layout
    _generate(w, f"maze {n}x{n}", {"test": num_test, "train": num_train}, _maze_chunk, (n, nondeterministic),
              seed, workers, chunk)
    return name


def generate_sokoban(db, num_train, num_test, seed, overwrite, workers, max_trace_tokens=10000, chunk=64):
    import sokoban
    name = dataset_name("sokoban")
    params = {"seed": seed, "num_train": num_train, "num_test": num_test, "max_trace_tokens": max_trace_tokens,
              "chunk": chunk, "rule": sokoban.RULE}
    w = DatasetWriter(db, name, "sokoban", params, sokoban.vocabulary(), overwrite)
    _generate(w, "sokoban 7x7", {"test": num_test, "train": num_train}, _sokoban_chunk, (max_trace_tokens,),
              seed, workers, chunk)
    return name


# ---------------------------------------------------------------------------------------------
# A* statistics (the ILR metric compares model traces with the mean A* trace of each task)

ASTAR_FIELD = "astar_mean_trace_len"


def _astar_means(task, params, vocabulary, runs, jobs):
    """[(id, mean A* trace length in tokens)] for jobs of (id, prompt bytes, seed)."""
    import maze
    import sokoban
    out = []
    for seq_id, prompt, seed in jobs:
        tokens = [vocabulary[i] for i in np.frombuffer(prompt, DTYPE)]
        try:
            if task == "sokoban":
                mean = sokoban.mean_trace_len(sokoban.parse_prompt(tokens), runs, seed)
            elif params["nondeterministic"]:
                m, rng = maze.parse_prompt(tokens, params["n"]), np.random.default_rng(seed)
                mean = sum(len(maze.trace_tokens(maze.astar(m, rng)[0])) for _ in range(runs)) / runs
            else:  # deterministic A* has one trace
                mean = len(maze.trace_tokens(maze.astar(maze.parse_prompt(tokens, params["n"]))[0]))
        except ValueError as e:
            return f"sequence {seq_id}: cannot run A* on its prompt ({e})"
        out.append((seq_id, float(mean)))
    return out


def astar_stats(db, name, split="test", runs=64, limit=0, seed=0, workers=1, batch=8):
    """Store the mean A* trace length on each sequence of a split (the first `limit` if given).

    Sequences that already have it are skipped, so an interrupted run continues where it stopped.
    Each task's A* runs are seeded by (seed, sequence id): the result does not depend on batching."""
    doc = get_dataset(db, name)
    if doc["task"] not in ("maze", "sokoban"):
        raise StoreError(f"dataset {name!r} holds {doc['task']!r} tasks; astar-stats knows maze and sokoban tasks")
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
    with mp.Pool(workers) as pool:
        for result in pool.imap(work, jobs()):
            if isinstance(result, str):
                raise StoreError(f"dataset {name!r} {split} {result}")
            if result:
                coll.bulk_write([pymongo.UpdateOne({"_id": i}, {"$set": {ASTAR_FIELD: v}}) for i, v in result])
            db.datasets.update_one({"_id": name}, {"$inc": {"revision": 1}})  # cached copies are now stale
            done += len(result)
            progress.update(done)
    progress.update(total, force=True)
    return total


# ---------------------------------------------------------------------------------------------
# importing datasets in the reference layout
#
# The reference keeps a dataset in one database: `vocabulary` holds {_id: name, vocabulary: [token]}
# and `<name>.seq.<split>` holds {_id, prompt, reasoning, plan}, each a list of token strings, with
# per-sequence lengths in `<name>.meta.<split>` (not needed: lengths are recomputed). The reference
# adds its `bos` / `eos` markers at training time; an export that stored them around a part has
# them stripped, and they are left out of the vocabulary, which gets our own special tokens in front.
# Every other token, including the `plan` keyword that starts each plan step, is kept as it is.

REF_MARKERS = ("bos", "eos")


def infer_task(name):
    """Task kind and parameters from a reference dataset name; ('imported', {}) when unknown."""
    m = re.fullmatch(r"maze\.(\d+)-by-\1-(deterministic|nondeterministic)\..+", name)
    if m:
        return "maze", {"n": int(m[1]), "nondeterministic": m[2] == "nondeterministic"}
    if name.startswith(dataset_name("sokoban")):
        return "sokoban", {}
    return "imported", {}


def _strip_markers(tokens):
    tokens = list(tokens)
    if tokens[:1] == ["bos"]:
        tokens = tokens[1:]
    if tokens[-1:] == ["eos"]:
        tokens = tokens[:-1]
    return tokens


def _source(uri, db_name):
    """The source database; errors name the server without its password."""
    secret = urlsplit(uri).password if "@" in uri else None
    try:
        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000)
        client.admin.command("ping")
    except (PyMongoError, ValueError) as e:
        reason = str(e).split(",")[0].split(" (configured")[0][:160]
        for s in {secret, unquote(secret or "")} - {None, ""}:
            reason = reason.replace(s, "***")
        raise StoreError(f"cannot reach the source MongoDB at {store.redact(uri)}: {reason}") from None
    return client[db_name]


def import_dataset(db, uri, from_db, name, new_name=None, overwrite=False, batch=1000):
    """Convert a reference-layout dataset into the native format, streaming in batches.

    Sequences with tokens outside the dataset's vocabulary are skipped and counted. An interrupted
    import resumes after the last batch it recorded."""
    try:
        check_name(new_name or name, "dataset name")
    except StoreError as e:
        raise StoreError(f"{e}; pick a name for the import with --as NEW" if new_name is None else str(e)) from None
    src = _source(uri, from_db)
    vdoc = src["vocabulary"].find_one({"_id": name})
    if vdoc is None:
        raise StoreError(f"no dataset {name!r} in database {from_db!r} at {store.redact(uri)} "
                         f"(its `vocabulary` collection has no such _id)")
    vocabulary = sorted(set(vdoc["vocabulary"]) - set(REF_MARKERS) - set(SPECIALS))
    if len(SPECIALS) + len(vocabulary) > np.iinfo(DTYPE).max + 1:
        raise StoreError(f"dataset {name!r} has {len(vocabulary)} tokens, more than uint16 ids can hold")
    colls = {split: src[f"{name}.seq.{split}"] for split in ("test", "train")}
    total = sum(c.estimated_document_count() for c in colls.values())
    if not total:
        raise StoreError(f"dataset {name!r} in database {from_db!r} has no sequences ({name}.seq.train/test are empty)")
    task, params = infer_task(name)
    params["source"] = {"uri": store.redact(uri), "db": from_db, "name": name}
    w = DatasetWriter(db, new_name or name, task, params, vocabulary, overwrite)
    state = {"after": {}, "skipped": {"test": 0, "train": 0}, "first_skipped": [], **w.progress}
    progress = Progress(f"import {name}", total, sum(w.counts.values()) + sum(state["skipped"].values()))
    for split, coll in colls.items():
        query = {"_id": {"$gt": state["after"][split]}} if split in state["after"] else {}
        for n, doc in enumerate(coll.find(query, batch_size=batch).sort("_id", 1), 1):
            try:
                ids = [encode(_strip_markers(doc.get(k) or []), w.index) for k in ("prompt", "reasoning", "plan")]
            except KeyError:  # a token outside the vocabulary
                state["skipped"][split] += 1
                if len(state["first_skipped"]) < 5:
                    state["first_skipped"].append(f"{split} {doc['_id']}")
            else:
                w.add(split, *ids, digest(f"{split}:{doc['_id']}".encode()), source_id=doc["_id"])
            state["after"][split] = doc["_id"]
            if n % batch == 0:
                w.save_progress(**state)
                progress.update(sum(w.counts.values()) + sum(state["skipped"].values()))
        w.save_progress(**state)
    skipped = sum(state["skipped"].values())
    w.commit(skipped=skipped)
    progress.update(total, force=True)
    if skipped:
        print(f"skipped {skipped} sequences with tokens outside the vocabulary of {name!r} "
              f"(first: {', '.join(state['first_skipped'])})", file=sys.stderr)
    return w.name, dict(w.counts), skipped


# ---------------------------------------------------------------------------------------------
# command line


def length_stats(db, name):
    """[(split, part, count, min, q25, median, q75, max)] of token lengths, parts as stored and
    `response` = trace + plan (what a search-augmented model generates)."""
    doc = get_dataset(db, name)
    rows = []
    for split in ("train", "test"):
        lens = {p: [] for p in PARTS}
        for d in db[f"ds.{name}.{doc['uid']}.{split}"].find({}, {f"{p}_len": 1 for p in PARTS}):
            for p in PARTS:
                lens[p].append(d[f"{p}_len"])
        lens["response"] = np.add(lens["trace"], lens["plan"])
        for p, v in lens.items():
            if len(v):
                q = np.percentile(v, [0, 25, 50, 75, 100]).astype(int)
                rows.append((split, p, len(v), *q))
    return rows


def render_task(doc, tokens):
    """The task as a board with its plan drawn, or None when the kind has none or tokens do not parse."""
    import maze
    import sokoban
    try:
        if doc["task"] == "sokoban":
            return sokoban.render(sokoban.parse_prompt(tokens["prompt"]), sokoban.parse_plan(tokens["plan"]))
        if doc["task"] == "maze":
            return maze.render(maze.parse_prompt(tokens["prompt"], doc["params"]["n"]), maze.parse_plan(tokens["plan"]))
    except ValueError:
        pass
    return None


def show_sequence(db, name, split, seq_id):
    doc = get_dataset(db, name)
    seq = db[f"ds.{name}.{doc['uid']}.{split}"].find_one({"_id": seq_id})
    if seq is None:
        raise StoreError(f"dataset {name!r} has no {split} sequence {seq_id} "
                         f"(ids 0..{doc['counts'][split] - 1})")
    tokens = {p: [doc["vocabulary"][i] for i in np.frombuffer(seq[p], DTYPE)] for p in PARTS}
    board = render_task(doc, tokens)
    if board is None:  # no board: show the tokens, the trace shortened
        trace = tokens["trace"][:40] + (["..."] if len(tokens["trace"]) > 40 else [])
        board = "\n".join(f"{p}: {' '.join(t)}" for p, t in (("prompt", tokens["prompt"]), ("trace", trace),
                                                              ("plan", tokens["plan"])))
    astar = f", mean A* trace {seq[ASTAR_FIELD]:.1f}" if ASTAR_FIELD in seq else ""
    return (f"{name} {split} #{seq_id} ({doc['task']}): prompt {seq['prompt_len']}, trace {seq['trace_len']}, "
            f"plan {seq['plan_len']} tokens{astar}\n{board}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate, list, inspect and drop token datasets in MongoDB.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("maze", help="generate n x n maze tasks with A* traces")
    p.add_argument("--size", type=int, default=10, help="maze side n (default 10)")
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--nondeterministic", action="store_true",
                   help="the reference's nondeterministic A*: shuffled children, coin-flip f-ties")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--chunk", type=int, default=16,
                   help="wall layouts per seeded job, about 17 tasks each (part of the dataset's identity)")
    p = sub.add_parser("sokoban", help="generate 7x7 Sokoban levels (2 walls, 2 boxes) with A* traces")
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--max-trace-tokens", type=int, default=10000, help="keep levels whose trace is shorter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--chunk", type=int, default=64, help="levels per seeded job (part of the dataset's identity)")
    p = sub.add_parser("astar-stats", help="store each test task's mean A* trace length (for ILR)")
    p.add_argument("name")
    p.add_argument("--runs", type=int, default=64, help="A* runs per task (nondeterministic A*)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=int, default=0, help="only the first N sequences (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p = sub.add_parser("import", help="convert a dataset in the reference's MongoDB layout")
    p.add_argument("--from-uri", required=True, help="MongoDB URI of the server holding it")
    p.add_argument("--from-db", default="tokenSeqDB", help="its database (default tokenSeqDB, the reference's)")
    p.add_argument("--name", required=True, help="its name (the _id in its `vocabulary` collection)")
    p.add_argument("--as", dest="new_name", help="name to give it here (default: the same)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--batch-size", type=int, default=1000, help="sequences read per batch")
    sub.add_parser("list", help="list datasets")
    p = sub.add_parser("drop", help="delete a dataset")
    p.add_argument("name")
    p = sub.add_parser("show", help="counts and length statistics of a dataset, or one task with --id")
    p.add_argument("name")
    p.add_argument("--id", type=int, help="print this sequence: its board with the plan drawn, and lengths")
    p.add_argument("--split", choices=("test", "train"), default="test")
    args = ap.parse_args(argv)

    try:
        if args.cmd in ("maze", "sokoban"):
            if args.num_train < 0 or args.num_test < 0 or args.workers < 1 or args.chunk < 1:
                raise StoreError("--num-train/--num-test must be >= 0, --workers and --chunk >= 1")
            if args.cmd == "maze" and args.size < 3:
                raise StoreError("--size must be >= 3")
            if args.cmd == "sokoban" and args.max_trace_tokens < 100:  # shorter traces are too rare to fill a set
                raise StoreError("--max-trace-tokens must be >= 100")
        if args.cmd == "astar-stats" and (args.runs < 1 or args.limit < 0 or args.workers < 1):
            raise StoreError("--runs and --workers must be >= 1, --limit >= 0")
        if args.cmd == "import" and args.batch_size < 1:
            raise StoreError("--batch-size must be >= 1")
        named = (args.new_name or args.name) if args.cmd == "import" else getattr(args, "name", None)
        if named is not None:
            check_name(named, "dataset name")  # before any database call
        db = store.connect().db
        if args.cmd == "maze":
            name = generate_maze(db, args.size, args.num_train, args.num_test, args.nondeterministic, args.seed,
                                 args.overwrite, args.workers, args.chunk)
            print(f"wrote dataset {name}")
        elif args.cmd == "sokoban":
            name = generate_sokoban(db, args.num_train, args.num_test, args.seed, args.overwrite, args.workers,
                                    args.max_trace_tokens, args.chunk)
            print(f"wrote dataset {name}")
        elif args.cmd == "astar-stats":
            n = astar_stats(db, args.name, args.split, args.runs, args.limit, args.seed, args.workers)
            print(f"{args.name}: {ASTAR_FIELD} set on {n} {args.split} sequences")
        elif args.cmd == "import":
            name, counts, skipped = import_dataset(db, args.from_uri, args.from_db, args.name, args.new_name,
                                                   args.overwrite, args.batch_size)
            print(f"imported {args.name} as {name}: {counts['train']} train, {counts['test']} test sequences"
                  + (f", {skipped} skipped" if skipped else ""))
        elif args.cmd == "list":
            print(f"{'name':45} {'task':8} {'rule':9} {'train':>9} {'test':>8}  state")
            for d in db.datasets.find().sort("_id", 1):
                b = d.get("building")
                state = f"building ({sum(b['counts'].values())} written)" if b else "complete"
                counts = d.get("counts", {})
                print(f"{d['_id']:45} {d.get('task', b and b['task']):8} {generation_rule(d if d.get('uid') else b):9} "
                      f"{counts.get('train', '-'):>9} {counts.get('test', '-'):>8}  {state}")
        elif args.cmd == "drop":
            drop_dataset(db, args.name)
            print(f"dropped dataset {args.name}")
        elif args.cmd == "show" and args.id is not None:
            print(show_sequence(db, args.name, args.split, args.id))
        elif args.cmd == "show":
            doc = get_dataset(db, args.name)
            print(f"{args.name}: task {doc['task']}, generation rule {generation_rule(doc)}, "
                  f"vocabulary {len(doc['vocabulary'])} tokens, params {doc['params']}")
            print(f"{'split':6} {'part':8} {'count':>8} {'min':>6} {'q25':>6} {'median':>6} {'q75':>6} {'max':>6}")
            for split, part, count, *q in length_stats(db, args.name):
                print(f"{split:6} {part:8} {count:>8} " + " ".join(f"{v:>6}" for v in q))
    except (StoreError, PyMongoError) as e:  # the latter: e.g. the database went away mid-command
        sys.exit(f"error: {store.one_line(e)}")


if __name__ == "__main__":
    main()
