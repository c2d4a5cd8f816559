"""A run's checkpoints in the database's GridFS bucket `checkpoints`: writing one so that a killed
process always leaves the previous one loadable, loading the current one (safe while the run trains),
and creating a run from an imported checkpoint all or nothing. Each file is a torch.save dict, loaded
with weights_only=True.

A run has up to two: `latest` (the run document's `checkpoint` field; where a resume starts) and, when
it selects a best (train.py --patience), `best` (its `best` field: the checkpoint of its best
evaluation, with that evaluation's selection metrics)."""
import contextlib
import shutil
import tempfile

import gridfs
import torch
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

import testhook
from errors import CheckpointError, StoreError
from store import check_name, fenced, lost_run_error, now, query_unheld, restored, retrying


FIELDS = {"latest": "checkpoint", "best": "best"}  # which checkpoint -> the run document's field pointing at it


@retrying
def save_checkpoint(store, run_id, step, state, owner=None, which="latest", metrics=None):
    """Write the new checkpoint in full, then move the run's pointer (FIELDS[which]) to it, then delete
    the files it replaces.

    A process killed at any point leaves the previous checkpoint loadable; the upload it left
    half-done is deleted by the next save (or by a load once the run's lease is free). With an
    owner, nothing is written unless that process still holds the run. A best save (with its selection
    metrics) deletes nothing: the latest checkpoint may still record the previous best, which a resume
    from it points back at (point_best); a latest save deletes every other file of the run but the
    current best. An upload that a load took for abandoned meanwhile (this process paused past its
    lease) is written again."""
    while True:
        info = _save(store, run_id, step, state, owner, which, metrics)
        if info is not None:
            return info


def _open_upload(store, run_id, step, which, metrics):
    """A new checkpoint file's upload stream, named and tagged as loads and point_best look for it."""
    best = which == "best"
    meta = {"run_id": run_id, "step": step, **({"kind": "best", "metrics": metrics} if best else {})}
    return store.fs.open_upload_stream(f"{run_id}/{step}{'/best' if best else ''}", metadata=meta)


def _save(store, run_id, step, state, owner, which, metrics):
    """One attempt of save_checkpoint: the new pointer's info, or None when the upload was taken away."""
    best = which == "best"
    stream = _open_upload(store, run_id, step, which, metrics)
    before = store.runs.find_one_and_update(fenced(run_id, owner), {"$set": {"pending_checkpoint": stream._id}},
                                            {"pending_checkpoint": 1})
    if before is None:
        raise lost_run_error(run_id) if owner else StoreError(f"no run with id {run_id!r}")
    if before.get("pending_checkpoint") is not None:  # left by a killed process or a failed attempt
        store.delete_upload(before["pending_checkpoint"])
    writer = _Writer(stream)
    try:
        torch.save(state, writer)  # streamed in chunks, no second copy in memory
        testhook.pause(f"{'best' if best else 'checkpoint'}-{step}")  # tests: the upload written and not closed
        stream.close()
    except BaseException as e:
        with contextlib.suppress(PyMongoError):
            stream.abort()
        if writer.error is not None and writer.error is not e:
            raise writer.error from None  # torch.save turns the write's error (e.g. a lost connection) into a RuntimeError
        raise
    info = {"id": stream._id, "step": step, "size": stream.length, "time": now(), **({"metrics": metrics} if best else {})}
    after = store.runs.find_one_and_update({**fenced(run_id, owner), "pending_checkpoint": stream._id},
                                           {"$set": {FIELDS[which]: info, "pending_checkpoint": None}},
                                           {"best": 1}, return_document=ReturnDocument.AFTER)
    if after is None:
        store.delete_upload(stream._id)
        if store.runs.count_documents(fenced(run_id, owner), limit=1) == 0:
            raise lost_run_error(run_id)
        return None  # still held: the pointer was cleared by a load that took the upload for abandoned
    if not best:
        delete_stale(store, run_id, keep=[stream._id, (after.get("best") or {}).get("id")])
    return info


@retrying
def point_best(store, run_id, step, owner=None):
    """After a resume: point the run's `best` at its best checkpoint of `step`, the best that the resumed
    checkpoint recorded (a killed process may have saved a later one), or at none (step None). Returns
    False when that file is not stored (a run imported from an exported file keeps no best file)."""
    found = None
    if step is not None:
        files = store.fs.find({"metadata.run_id": run_id, "metadata.kind": "best", "metadata.step": step})
        found = next(iter(files.sort("uploadDate", -1).limit(1)), None)
    info = found and {"id": found._id, "step": step, "size": found.length, "time": found.upload_date,
                      "metrics": found.metadata.get("metrics")}
    if store.runs.update_one(fenced(run_id, owner), {"$set": {"best": info}}).matched_count == 0:
        raise lost_run_error(run_id) if owner else StoreError(f"no run with id {run_id!r}")
    return step is None or found is not None


@retrying
def load_checkpoint(store, run_id, map_location="cpu", which="latest", with_id=False):
    """The run's current checkpoint dict (`latest` or `best`), or None when it has none; with_id,
    (that dict, its file id) or (None, None): what read_checkpoint_file reads again.

    Safe while the run trains: a live trainer's upload in progress is left alone, and a checkpoint
    replaced (and deleted) while it was being read is read again at the new pointer."""
    for attempt in range(3):
        doc = store.require_run(run_id)
        if doc.get("record"):
            raise restored(run_id)
        pending = doc.get("pending_checkpoint")
        if pending is not None:
            # a save (or import) was killed mid-write when nobody holds the run by the server's clock:
            # clear the pointer first, in one write that checks both, and only then remove the chunks,
            # so that a trainer that still writes it finds its upload gone before it can point at it
            claim = {"_id": run_id, "pending_checkpoint": pending, **query_unheld(store.server_time())}
            if store.runs.update_one(claim, {"$set": {"pending_checkpoint": None}}).matched_count:
                testhook.pause("stale-upload")  # tests: the pointer cleared, the chunks not yet removed
                store.delete_upload(pending)
        info = doc.get(FIELDS[which])
        if info is None:
            return (None, None) if with_id else None
        try:
            ck = _read(store, info["id"], map_location)
            return (ck, info["id"]) if with_id else ck
        except (gridfs.errors.NoFile, gridfs.errors.CorruptGridFile) as e:
            moved = (store.runs.find_one({"_id": run_id}, {FIELDS[which]: 1}) or {}).get(FIELDS[which]) != info
            if not moved or attempt == 2:
                raise CheckpointError(f"the {which} checkpoint of run {run_id!r} is unreadable "
                                      f"({type(e).__name__}: {e})") from None


def _read(store, file_id, map_location):
    with store.fs.open_download_stream(file_id) as f, tempfile.TemporaryFile() as tmp:
        # torch.load seeks about, and each seek in a GridFS stream is a new query: copy the file to
        # local disk in one sequential read, then load (one copy in memory)
        shutil.copyfileobj(f, tmp, 16 << 20)
        tmp.seek(0)
        return torch.load(tmp, map_location=map_location, weights_only=True)


@retrying
def read_checkpoint_file(store, file_id, map_location="cpu"):
    """The checkpoint in this file (an id from load_checkpoint(with_id=True)), or None once it is gone:
    its run saved a newer one, which deleted it."""
    try:
        return _read(store, file_id, map_location)
    except (gridfs.errors.NoFile, gridfs.errors.CorruptGridFile):
        return None


def put_checkpoint(store, run_id, config, state, step, replace=False, extra=None):
    """Create (or with replace, replace) a finished run from an imported checkpoint, all or nothing:
    the upload is recorded as the run's pending checkpoint before its first chunk (a new run's
    document is created for it, status `importing`), so that a killed import's chunks are found and
    removed like a killed save's (by a load, drop-run, or the same import run again); the new
    checkpoint is written in full, then the run document is switched to it in one write, then the
    old run's logs, results and checkpoint files are deleted. extra: more fields of the run document
    (an imported reference checkpoint's original config)."""
    check_name(run_id)
    old = store.get_run(run_id)
    if old is not None and old.get("status") != "importing":  # a killed import's leftover is imported over
        if not replace:
            raise StoreError(f"run {run_id!r} exists; pass --replace to overwrite it, or --run-id NEW")
        holder = store.live_holder(run_id)
        if holder:
            raise StoreError(f"run {run_id!r} is being trained by {holder}; stop that process first, or drop it with "
                             f"`python admin.py drop-run --run-id {run_id} --force`, then import")
    stream = store.fs.open_upload_stream(f"{run_id}/{step}", metadata={"run_id": run_id, "step": step})
    mine, t = {"_id": run_id, "pending_checkpoint": stream._id}, now()
    if old is None:
        try:
            store.runs.insert_one({**mine, "config": config, "created": t, "updated": t, "step": 0, "status": "importing",
                                   "error": None, "lease": None, "checkpoint": None})
        except DuplicateKeyError:  # another import of this id went first
            raise StoreError(f"run {run_id!r} exists; pass --replace to overwrite it, or --run-id NEW") from None
    else:
        before = store.runs.find_one_and_update({"_id": run_id}, {"$set": {"pending_checkpoint": stream._id}})
        if before and before.get("pending_checkpoint") is not None:
            store.delete_upload(before["pending_checkpoint"])
    try:
        torch.save(state, _Writer(stream))
        testhook.pause("import-upload")  # tests: the new file written, the old run not yet switched
        stream.close()
    except BaseException:
        with contextlib.suppress(PyMongoError):
            stream.abort()
            store.runs.delete_one({**mine, "status": "importing"})  # a new run's document, made for this import
            store.runs.update_one(mine, {"$set": {"pending_checkpoint": None}})
        raise
    doc = {"_id": run_id, "config": config, "created": t, "updated": t, "step": step, "status": "imported",
           "error": None, "lease": None, "world_size": state.get("world_size"), "pending_checkpoint": None,
           "checkpoint": {"id": stream._id, "step": step, "size": stream.length, "time": t}, **(extra or {})}
    try:
        if store.runs.replace_one(mine, doc).matched_count == 0:
            raise StoreError(f"run {run_id!r} changed during the import (relaunched, dropped or imported again); "
                             f"try again")
    except BaseException:
        store.delete_upload(stream._id)
        raise
    if old is not None:  # the old run's records: its run document no longer points at any of them
        store.logs.delete_many({"run_id": run_id})
        store.results.delete_many({"run_id": run_id})
        store.responses.delete_many({"run_id": run_id})
        delete_stale(store, run_id, keep=[stream._id])


def copy_run(store, run_id, to):
    """A copy of a run under another id, all or nothing: its document (config, step, status, selection,
    patience stop), logs and checkpoints (latest and best, each file written anew with the new id), so
    that relaunching `to` continues it as relaunching `run_id` would; evaluations are not copied. Its
    `copied_from` names the original, its step and wall seconds (created to updated), which reports add. The
    new document is created first with status `importing`, a killed copy's leftover, which the same
    copy run again replaces; it takes the source's fields in one write at the end."""
    check_name(to)
    src = store.require_run(run_id)
    if src.get("record"):
        raise restored(run_id)
    holder = store.live_holder(run_id)
    if holder:
        raise StoreError(f"run {run_id!r} is being trained by {holder}: copy it once that process stops")
    old = store.get_run(to)
    if old is not None:
        if old.get("status") != "importing":
            raise StoreError(f"run {to!r} exists; choose another id, or drop it with "
                             f"`python admin.py drop-run --run-id {to}`")
        store.drop_run(to)  # a killed copy's leftover
    t = now()
    wall = (src["updated"] - src["created"]).total_seconds() if src.get("created") and src.get("updated") else 0.0
    try:
        store.runs.insert_one({"_id": to, "config": src["config"], "created": t, "updated": t, "step": 0,
                               "status": "importing", "error": None, "lease": None, "checkpoint": None})
    except DuplicateKeyError:
        raise StoreError(f"run {to!r} exists; choose another id") from None
    try:
        fields = {}
        for which, field in FIELDS.items():
            info = src.get(field)
            if info is None:
                continue
            ck = _read(store, info["id"], "cpu")
            ck["run_id"] = to
            stream = _open_upload(store, to, info["step"], which, info.get("metrics"))
            # recorded first, so that a killed copy's unclosed upload goes with its leftover (drop_run)
            store.runs.update_one({"_id": to}, {"$set": {"pending_checkpoint": stream._id}})
            torch.save(ck, _Writer(stream))
            stream.close()
            store.runs.update_one({"_id": to}, {"$set": {"pending_checkpoint": None}})
            fields[field] = {**info, "id": stream._id, "size": stream.length}
        logs = [{**{k: v for k, v in d.items() if k != "_id"}, "run_id": to}
                for d in store.logs.find({"run_id": run_id})]
        if logs:
            store.logs.insert_many(logs)
        testhook.pause("copy-run")  # tests: everything written but the document's switch
        doc = {k: v for k, v in src.items() if k not in ("_id", "lease", "pending_checkpoint", *FIELDS.values())}
        store.runs.replace_one({"_id": to, "status": "importing"},
                               {**doc, **fields, "_id": to, "lease": None, "pending_checkpoint": None,
                                "created": t, "updated": t, "copied_from": {"run_id": run_id, "step": src.get("step"),
                                                                            "time": t, "wall_s": wall}})
    except BaseException:
        with contextlib.suppress(PyMongoError):
            store.drop_run(to)  # nothing half-copied stays (a killed copy: the next one replaces it)
        raise


def delete_stale(store, run_id, keep):
    """Remove the run's checkpoint files but those in keep (ids)."""
    for f in store.fs.find({"metadata.run_id": run_id, "_id": {"$nin": list(keep)}}):
        store.fs.delete(f._id)


class _Writer:
    """File-like adapter: GridFS takes bytes, torch.save hands it memoryviews. Keeps the error a write
    raised, which torch.save would otherwise hide inside a RuntimeError."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, data):
        try:
            self.stream.write(bytes(data))
        except BaseException as e:
            self.error = e
            raise
        return len(data)

    def flush(self):
        pass
