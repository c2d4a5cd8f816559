"""Importing a dataset published in the reference's MongoDB layout (`data.py import`).

The reference keeps a dataset in one database: `vocabulary` holds {_id: name, vocabulary: [token]}
and `<name>.seq.<split>` holds {_id, prompt, reasoning, plan}, each a list of token strings, with
per-sequence lengths in `<name>.meta.<split>` (not needed: lengths are recomputed). The reference
adds its `bos` / `eos` markers at training time; an export that stored them around a part has
them stripped, and they are left out of the vocabulary, which gets our own special tokens in front.
Every other token, including the `plan` keyword that starts each plan step, is kept as it is.
"""
import re
import sys
from urllib.parse import unquote, urlsplit

import numpy as np
import pymongo
from pymongo.errors import PyMongoError

import store
import tasks
from dataset import DTYPE, SPECIALS, DatasetWriter, Progress, digest, encode
from errors import ConfigError, DataError, StoreError
from store import check_name

REF_MARKERS = ("bos", "eos")


def infer_task(name):
    """Task kind and parameters from a reference dataset name; ('imported', {}) when unknown."""
    m = re.fullmatch(r"maze\.(\d+)-by-\1-(deterministic|nondeterministic)\..+", name)
    if m:
        return "maze", {"n": int(m[1]), "nondeterministic": m[2] == "nondeterministic"}
    if name.startswith(tasks.dataset_name("sokoban")):
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
    except ConfigError as e:
        raise ConfigError(f"{e}; pick a name for the import with --as NEW" if new_name is None else str(e)) from None
    src = _source(uri, from_db)
    vdoc = src["vocabulary"].find_one({"_id": name})
    if vdoc is None:
        raise DataError(f"no dataset {name!r} in database {from_db!r} at {store.redact(uri)} "
                        f"(its `vocabulary` collection has no such _id)")
    vocabulary = sorted(set(vdoc["vocabulary"]) - set(REF_MARKERS) - set(SPECIALS))
    if len(SPECIALS) + len(vocabulary) > np.iinfo(DTYPE).max + 1:
        raise DataError(f"dataset {name!r} has {len(vocabulary)} tokens, more than uint16 ids can hold")
    colls = {split: src[f"{name}.seq.{split}"] for split in ("test", "train")}
    total = sum(c.estimated_document_count() for c in colls.values())
    if not total:
        raise DataError(f"dataset {name!r} in database {from_db!r} has no sequences ({name}.seq.train/test are empty)")
    task, params = infer_task(name)
    params["source"] = {"uri": store.redact(uri), "db": from_db, "name": name}
    writer = DatasetWriter(db, new_name or name, task, params, vocabulary, overwrite)
    state = {"after": {}, "skipped": {"test": 0, "train": 0}, "first_skipped": [], **writer.progress}
    progress = Progress(f"import {name}", total, sum(writer.counts.values()) + sum(state["skipped"].values()))
    for split, coll in colls.items():
        query = {"_id": {"$gt": state["after"][split]}} if split in state["after"] else {}
        for n, doc in enumerate(coll.find(query, batch_size=batch).sort("_id", 1), 1):
            try:
                ids = [encode(_strip_markers(doc.get(k) or []), writer.index) for k in ("prompt", "reasoning", "plan")]
            except KeyError:  # a token outside the vocabulary
                state["skipped"][split] += 1
                if len(state["first_skipped"]) < 5:
                    state["first_skipped"].append(f"{split} {doc['_id']}")
            else:
                writer.add(split, *ids, digest(f"{split}:{doc['_id']}".encode()), source_id=doc["_id"])
            state["after"][split] = doc["_id"]
            if n % batch == 0:
                writer.save_progress(**state)
                progress.update(sum(writer.counts.values()) + sum(state["skipped"].values()))
        writer.save_progress(**state)
    skipped = sum(state["skipped"].values())
    writer.commit(skipped=skipped)
    progress.update(total, force=True)
    if skipped:
        print(f"skipped {skipped} sequences with tokens outside the vocabulary of {name!r} "
              f"(first: {', '.join(state['first_skipped'])})", file=sys.stderr)
    return writer.name, dict(writer.counts), skipped
