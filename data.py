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
import hashlib
import multiprocessing as mp
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

    With the same name and parameters as an interrupted build, it resumes: `counts`, `keys` and
    `progress` come back as last recorded by `save_progress()`, and later writes are discarded."""

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
            self.keys = {d["key"] for split in self.counts for d in self.coll(split).find({}, {"key": 1})}
        else:
            if building:
                self._drop_uid(building["uid"])
            self.uid, self.progress, self.counts, self.keys = uuid.uuid4().hex[:12], {}, {"train": 0, "test": 0}, set()
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

    def commit(self, **info):
        self.flush()
        for split in ("train", "test"):
            self.coll(split).create_index([("trace_len", 1)])
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


def get_dataset(db, name):
    doc = db.datasets.find_one({"_id": check_name(name, "dataset name")})
    if doc is None or not doc.get("uid"):
        state = "is still being built (re-run its command to resume)" if doc else "does not exist"
        raise StoreError(f"dataset {name!r} {state}; see `python data.py list`")
    return doc


# ---------------------------------------------------------------------------------------------
# loading


@dataclass
class Split:
    """One split in memory: all parts concatenated, with per-sequence lengths."""
    ids: np.ndarray  # (N,) sequence ids
    lens: dict  # part -> (N,) int64 lengths
    flat: dict  # part -> concatenated uint16 tokens
    extra: dict  # field -> (N,) float64 (e.g. astar_mean_trace_len), where present

    def offsets(self, part):
        return np.concatenate([[0], np.cumsum(self.lens[part])])

    def select(self, rows):
        rows = np.asarray(rows)
        flat = {}
        for part in PARTS:
            off = self.offsets(part)
            flat[part] = np.concatenate([self.flat[part][off[r]:off[r + 1]] for r in rows]) if len(rows) else \
                np.zeros(0, DTYPE)
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
            if isinstance(v, float):
                extra.setdefault(k, [np.nan] * i).append(v)
        for k, vals in extra.items():
            if len(vals) <= i:
                vals.append(np.nan)
    return Split(np.asarray(ids, np.int64), {p: np.asarray(lens[p], np.int64) for p in PARTS},
                 {p: np.frombuffer(b"".join(chunks[p]), DTYPE) for p in PARTS},
                 {k: np.asarray(v, np.float64) for k, v in extra.items()})


def load_split(db, name, split, use_cache=True):
    """The whole split, from the local cache when it holds this generation, else from MongoDB."""
    doc = get_dataset(db, name)
    folder = cache_dir() / name / doc["uid"] / split
    if use_cache and (folder / "done").exists():
        arrays = {f.stem: np.load(f, mmap_mode="r") for f in folder.glob("*.npy")}
        return Split(np.asarray(arrays["ids"]), {p: np.asarray(arrays[f"len_{p}"]) for p in PARTS},
                     {p: arrays[f"flat_{p}"] for p in PARTS},
                     {k[6:]: np.asarray(v) for k, v in arrays.items() if k.startswith("extra_")})
    data = _read_split(db, f"ds.{name}.{doc['uid']}.{split}")
    if use_cache:
        tmp = folder.with_name(f"{split}.tmp{os.getpid()}")
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            np.save(tmp / "ids.npy", data.ids)
            for p in PARTS:
                np.save(tmp / f"len_{p}.npy", data.lens[p])
                np.save(tmp / f"flat_{p}.npy", data.flat[p])
            for k, v in data.extra.items():
                np.save(tmp / f"extra_{k}.npy", v)
            (tmp / "done").touch()
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)  # another rank may have won the race: either copy is the same data
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return data


def filter_split(data, min_trace=0, max_trace=None, limit=None):
    """Rows whose trace length is within bounds, the first `limit` of them by id."""
    ok = data.lens["trace"] >= min_trace
    if max_trace is not None:
        ok &= data.lens["trace"] <= max_trace
    rows = np.flatnonzero(ok)
    return rows[:limit] if limit else rows


@dataclass
class Sequences:
    """Training sequences `<bos> prompt <sep> [trace] plan <eos>` built from a split."""
    flat: np.ndarray  # concatenated sequences
    offsets: np.ndarray  # (N+1,)
    prompt_len: np.ndarray  # (N,) tokens up to and including <sep>: these carry no loss
    trace_len: np.ndarray  # (N,) 0 when plan-only

    @classmethod
    def build(cls, data, rows, plan_only):
        rows = np.asarray(rows)
        offs = {p: data.offsets(p) for p in PARTS}
        pieces, lens = [], []
        for r in rows:
            parts = [[BOS], data.flat["prompt"][offs["prompt"][r]:offs["prompt"][r + 1]], [SEP]]
            if not plan_only:
                parts.append(data.flat["trace"][offs["trace"][r]:offs["trace"][r + 1]])
            parts += [data.flat["plan"][offs["plan"][r]:offs["plan"][r + 1]], [EOS]]
            seq = np.concatenate([np.asarray(x, DTYPE) for x in parts])
            pieces.append(seq)
            lens.append(len(seq))
        flat = np.concatenate(pieces) if pieces else np.zeros(0, DTYPE)
        trace_len = np.zeros(len(rows), np.int64) if plan_only else data.lens["trace"][rows]
        return cls(flat, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                   data.lens["prompt"][rows] + 2, trace_len)

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def lengths(self):
        return np.diff(self.offsets)

    def collate(self, rows):
        """Right-padded inputs, targets (-1 = no loss) and a plan mask, each (B, T-1) int64 / bool."""
        lens = self.lengths[rows]
        T = int(lens.max()) - 1
        x = np.full((len(rows), T), PAD, np.int64)
        y = np.full((len(rows), T), -1, np.int64)
        plan = np.zeros((len(rows), T), bool)
        for i, r in enumerate(rows):
            seq = self.flat[self.offsets[r]:self.offsets[r + 1]].astype(np.int64)
            n, p = len(seq) - 1, self.prompt_len[r]
            x[i, :n] = seq[:-1]
            y[i, p - 1:n] = seq[p:]  # position t predicts token t+1; the prompt carries no loss
            plan[i, p - 1 + self.trace_len[r]:n] = True
        return x, y, plan


def epoch_batches(lengths, seed, epoch, rows, world, token_budget=0, window=64):
    """One epoch's global batches: a seeded shuffle, then sorting inside windows of similar size so
    that each batch holds sequences of similar length (little padding), then a shuffled batch order.

    A batch holds `rows * world` sequences, or with a token budget as many as keep every rank's
    padded tokens (rows x longest) within it, and never fewer than `world`. Each is an array of
    indices, shortest first; an epoch's last few sequences that cannot fill a batch are skipped."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    size = rows * world
    batches = []
    for start in range(0, len(perm), size * window):
        chunk = perm[start:start + size * window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        if not token_budget:
            batches += [chunk[i:i + size] for i in range(0, len(chunk) - world + 1, size)]
            continue
        i = 0
        while i + world <= len(chunk):
            j = i + world  # grow while each rank's share, padded to the longest, fits the budget
            while j < len(chunk) and -(-(j + 1 - i) // world) * lengths[chunk[j]] <= token_budget:
                j += 1
            batches.append(chunk[i:j])
            i = j
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def rank_share(batch, rank, world):
    """A rank's rows of a global batch: strided over the length-sorted batch so shares are balanced."""
    return batch[rank::world]


# ---------------------------------------------------------------------------------------------
# generation


def _maze_chunk(args):
    import maze
    n, count, seed, nondet, index = args
    out = []
    for t in maze.generate(n, count, seed, nondet):
        out.append((digest(t["layout"]), *(encode(t[p], index) for p in PARTS)))
    return out


def chunk_seed(seed, chunk):
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


class Progress:
    def __init__(self, what, total, done=0):
        self.what, self.total, self.start_done = what, total, done
        self.t0 = self.last = time.monotonic()

    def update(self, done, force=False):
        t = time.monotonic()
        if not force and t - self.last < 2.0:
            return
        self.last = t
        rate = (done - self.start_done) / max(t - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"{self.what}: {done}/{self.total} ({rate:.0f}/s, ETA {eta:.0f}s)", file=sys.stderr, flush=True)


def generate_maze(db, n, num_train, num_test, nondeterministic, seed, overwrite, workers, chunk=256):
    import maze
    name = dataset_name("maze", n=n, nondeterministic=nondeterministic)
    params = {"n": n, "nondeterministic": nondeterministic, "seed": seed, "num_train": num_train,
              "num_test": num_test}
    w = DatasetWriter(db, name, "maze", params, maze.vocabulary(n), overwrite)
    want = {"test": num_test, "train": num_train}
    next_chunk = w.progress.get("next_chunk", 0)
    progress = Progress(f"maze {n}x{n}", num_train + num_test, sum(w.counts.values()))
    with mp.Pool(workers) as pool:
        while sum(w.counts.values()) < num_train + num_test:
            jobs = [(n, chunk, chunk_seed(seed, c), nondeterministic, w.index)
                    for c in range(next_chunk, next_chunk + 4 * workers)]
            for tasks in pool.imap(_maze_chunk, jobs):
                for key, prompt, trace, plan in tasks:  # test first: the split is by wall layout
                    split = "test" if w.counts["test"] < want["test"] else "train"
                    if w.counts[split] < want[split]:
                        w.add(split, prompt, trace, plan, key)
                next_chunk += 1
                w.save_progress(next_chunk=next_chunk)
                progress.update(sum(w.counts.values()))
    w.commit()
    progress.update(sum(w.counts.values()), force=True)
    return name


# ---------------------------------------------------------------------------------------------
# command line


def length_stats(db, name):
    doc = get_dataset(db, name)
    rows = []
    for split in ("train", "test"):
        lens = {p: [] for p in PARTS}
        for d in db[f"ds.{name}.{doc['uid']}.{split}"].find({}, {f"{p}_len": 1 for p in PARTS}):
            for p in PARTS:
                lens[p].append(d[f"{p}_len"])
        for p in PARTS:
            if lens[p]:
                q = np.percentile(lens[p], [0, 25, 50, 75, 100]).astype(int)
                rows.append((split, p, len(lens[p]), *q))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate, list, inspect and drop token datasets in MongoDB.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("maze", help="generate n x n maze tasks with A* traces")
    p.add_argument("--size", type=int, default=10, help="maze side n (default 10)")
    p.add_argument("--num-train", type=int, required=True)
    p.add_argument("--num-test", type=int, required=True)
    p.add_argument("--nondeterministic", action="store_true", help="shuffled A* tie-breaks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    sub.add_parser("list", help="list datasets")
    p = sub.add_parser("drop", help="delete a dataset")
    p.add_argument("name")
    p = sub.add_parser("show", help="counts and length statistics of a dataset")
    p.add_argument("name")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "maze":
            if args.size < 3 or args.num_train < 0 or args.num_test < 0 or args.workers < 1:
                raise StoreError("--size must be >= 3, --num-train/--num-test >= 0, --workers >= 1")
        db = store.connect().db
        if args.cmd == "maze":
            name = generate_maze(db, args.size, args.num_train, args.num_test, args.nondeterministic, args.seed,
                                 args.overwrite, args.workers)
            print(f"wrote dataset {name}")
        elif args.cmd == "list":
            print(f"{'name':45} {'task':8} {'train':>9} {'test':>8}  state")
            for d in db.datasets.find().sort("_id", 1):
                b = d.get("building")
                state = f"building ({sum(b['counts'].values())} written)" if b else "complete"
                counts = d.get("counts", {})
                print(f"{d['_id']:45} {d.get('task', b and b['task']):8} {counts.get('train', '-'):>9} "
                      f"{counts.get('test', '-'):>8}  {state}")
        elif args.cmd == "drop":
            drop_dataset(db, args.name)
            print(f"dropped dataset {args.name}")
        elif args.cmd == "show":
            doc = get_dataset(db, args.name)
            print(f"{args.name}: task {doc['task']}, vocabulary {len(doc['vocabulary'])} tokens, "
                  f"params {doc['params']}")
            print(f"{'split':6} {'part':7} {'count':>8} {'min':>6} {'q25':>6} {'median':>6} {'q75':>6} {'max':>6}")
            for split, part, count, *q in length_stats(db, args.name):
                print(f"{split:6} {part:7} {count:>8} " + " ".join(f"{v:>6}" for v in q))
    except StoreError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
