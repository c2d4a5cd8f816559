"""A token dataset in MongoDB: its stored format, writing one, and loading its splits (with a local cache).

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
import hashlib
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bson import Binary

import store
import tasks
import testhook
from errors import DataError
from store import check_name

SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>"]
PAD, BOS, EOS, SEP = range(4)
DTYPE = np.dtype("<u2")
PARTS = ("prompt", "trace", "plan")
ASTAR_FIELD = "astar_mean_trace_len"  # per-sequence mean A* trace length, set by `data.py astar-stats`


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def encode(tokens, index):
    """Token strings -> uint16 ids; raises KeyError on a token outside the vocabulary."""
    return np.fromiter((index[t] for t in tokens), dtype=DTYPE, count=len(tokens))


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
            raise DataError(f"dataset {name!r} exists; pass --overwrite to replace it, or drop it first")
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


def sequence_key(split_name, split, row):
    """A derived dataset's key for a sequence of a loaded split."""
    return digest(split_name.encode() + int(split.ids[row]).to_bytes(8, "little") + split.get(row, "prompt").tobytes())


def extras(split, row):
    """A loaded sequence's per-sequence statistics (e.g. astar_mean_trace_len), to write with it."""
    return {k: float(v[row]) for k, v in split.extra.items() if not np.isnan(v[row])}


def copy_split(writer, split_name, split):
    """Add every sequence of a loaded split to the writer's split of that name, as it is."""
    for r in range(len(split.ids)):
        writer.add(split_name, *(split.get(r, p) for p in PARTS), sequence_key(split_name, split, r), **extras(split, r))


def shuffle_traces(db, name, new_name, seed, overwrite=False):
    """Write new_name, the trace-meaning control: name's training tasks, each prompt with its own plan
    and the trace of another task (the traces permuted, no task keeping its own: same lengths, valid
    tokens, no meaning for the task), and name's test split as it is (evaluation and ILR against the
    real A* traces). Reproducible from the seed; the new dataset records its source and seed."""
    doc = get_dataset(db, name)
    if new_name == name:
        raise DataError(f"shuffling {name!r} into itself would replace it; give another --name")
    train = load_split(db, name, "train")
    n = len(train.ids)
    if not train.lens["trace"].any():
        raise DataError(f"dataset {name!r} has no traces (plan-only): there is nothing to shuffle")
    if n < 2:
        raise DataError(f"dataset {name!r} has {n} training sequence: shuffling traces needs 2 or more")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    while (perm == np.arange(n)).any():  # redrawn until no task keeps its own trace (about e draws)
        perm = rng.permutation(n)
    info = {"source": name, "source_uid": doc["uid"], "seed": seed}
    writer = DatasetWriter(db, new_name, doc["task"], {**doc["params"], "shuffled_traces": info},
                           doc["vocabulary"][len(SPECIALS):], overwrite)
    for r, t in enumerate(perm.tolist()):
        writer.add("train", train.get(r, "prompt"), train.get(t, "trace"), train.get(r, "plan"),
                   sequence_key("train", train, r), source_id=int(train.ids[r]), trace_of=int(train.ids[t]),
                   **extras(train, r))
    copy_split(writer, "test", load_split(db, name, "test"))
    writer.commit()


def origin(doc):
    """Where a derived dataset came from (shown by `data.py list` and `show`), or "" for one generated or imported."""
    params = doc.get("params") or {}
    if "shuffled_traces" in params:
        return f"traces shuffled from {params['shuffled_traces']['source']} (seed {params['shuffled_traces']['seed']})"
    if "bootstrap" in params:
        return f"bootstrapped from run {params['bootstrap']['run_id']} (step {params['bootstrap']['step']})"
    return ""


def drop_dataset(db, name):
    """The dataset in the database, and its local cache on this machine (other machines' caches are keyed
    by its generation's uid: a new dataset of that name never reads them)."""
    doc = db.datasets.find_one({"_id": check_name(name, "dataset name")})
    if doc is None:
        raise DataError(f"no dataset named {name!r} (see `python data.py list`)")
    for uid in {doc.get("uid"), (doc.get("building") or {}).get("uid")} - {None}:
        for split in ("train", "test"):
            db[f"ds.{name}.{uid}.{split}"].drop()
    db.datasets.delete_one({"_id": name})
    shutil.rmtree(cache_dir() / name, ignore_errors=True)


def generation_rule(doc) -> str:
    """Which rule made a dataset: generated maze and Sokoban datasets record theirs (`reference`);
    those made before the reference's rules were adopted have none and are `earlier`."""
    if doc.get("task") in tasks.KINDS:
        return doc.get("params", {}).get("rule", "earlier")
    return doc.get("task") or "-"  # imported or synthetic: not made here


def get_dataset(db, name):
    doc = db.datasets.find_one({"_id": check_name(name, "dataset name")})
    if doc is None or not doc.get("uid"):
        state = "is still being built (re-run its command to resume)" if doc else "does not exist"
        raise DataError(f"dataset {name!r} {state}; see `python data.py list`")
    return doc


def fingerprint(db, name):
    """A digest of a dataset's vocabulary and every sequence of both splits (ids and tokens), the same
    for the same data wherever it was made: what a run record (records.py) checks its dataset by."""
    doc = get_dataset(db, name)
    h = hashlib.blake2b(repr(doc["vocabulary"]).encode(), digest_size=16)
    for split in ("train", "test"):
        data = load_split(db, name, split)
        h.update(split.encode() + np.asarray(data.ids, "<i8").tobytes())
        for p in PARTS:
            h.update(np.asarray(data.lens[p], "<i8").tobytes() + np.asarray(data.flat[p], DTYPE).tobytes())
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------
# progress of long jobs (generation, import, sampling)


class Progress:
    def __init__(self, what, total, done=0):
        self.what, self.total, self.start_done = what, total, done
        self.t0, self.last = time.monotonic(), -math.inf  # the first update prints at once

    def update(self, done, force=False, note="", eta=True):
        """Print `what: done/total (rate/s, ETA, note)`, at most every 2 s unless forced; eta=False
        leaves the estimate out (when the rate of the past says nothing of what is left)."""
        t = time.monotonic()
        if not force and t - self.last < 2.0:
            return
        self.last = t
        rate = (done - self.start_done) / max(t - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("inf")
        parts = [f"{rate:.0f}/s"] + ([f"ETA {left:.0f}s"] if eta else []) + ([note] if note else [])
        print(f"{self.what}: {done}/{self.total} ({', '.join(parts)})", file=sys.stderr, flush=True)
