"""A run's record: everything the reports read of a run (its run document, logs, evaluation results
and its checkpoints' metadata), as a small JSON file, without the checkpoint files or the stored
responses; and the run restored from it into another database (admin.py export-record, import-record).

A long experiment spans several sittings, each maybe on a fresh machine and database: committing a
record per finished run lets a fresh database get the run back instead of training it again. A
restored run keeps no checkpoint, so the run document is marked (`record: true`) and resuming it,
evaluating it again or starting another run from it is refused (store.restored).

The file is plain JSON, one line, deterministic: each document's fields in the order the database
holds them (not sorted: `admin.py show` prints a run's config in that order, and an imported run is
written back in it), lists in a fixed order, datetimes as {"$date": ISO string} (restored as
datetimes), ObjectIds as strings. It names the datasets the run was trained and tested on with a fingerprint of
their data (dataset.fingerprint), which an import checks: a dataset regenerated with other flags
under the same name is refused."""
import datetime
import json
import os
from pathlib import Path

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

import testhook
from dataset import fingerprint, get_dataset
from errors import ConfigError, DataError, StoreError
from store import check_name, now, query_unheld

FORMAT, VERSION = "searchformer-run-record", 1
KEYS = {"format", "version", "run_id", "run", "logs", "results", "datasets"}
DATE = "$date"


def encode(value):
    """A stored value as plain JSON: datetimes tagged, ObjectIds as their hex string."""
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, datetime.datetime):
        return {DATE: value.astimezone(datetime.timezone.utc).isoformat()}
    if isinstance(value, ObjectId):
        return str(value)
    return value


def decode(value):
    if isinstance(value, dict):
        if set(value) == {DATE}:
            return datetime.datetime.fromisoformat(value[DATE])
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def dataset_names(config):
    return sorted({config["train_name"], config.get("test_name") or config["train_name"]})


def export_record(store, run_id):
    """The record of a run (a dict of plain JSON values); refused while a trainer holds the run."""
    doc = store.require_run(run_id)
    holder = store.live_holder(run_id)
    if holder or doc.get("status") == "importing":
        why = f"is being trained by {holder}" if holder else "is half-imported (run import-record again)"
        raise StoreError(f"run {run_id!r} {why}: export its record once it is done")
    run = {k: v for k, v in doc.items() if k not in ("lease", "pending_checkpoint")}
    logs = store.get_logs(run_id)
    results = [{k: v for k, v in r.items() if k != "_id"}
               for r in store.results.find({"run_id": run_id}).sort([("step", 1), ("time", 1), ("pkey", 1)])]
    datasets = {}
    for name in dataset_names(doc["config"]):
        ds = store.call(get_dataset, name)
        datasets[name] = {"task": ds.get("task"), "params": ds.get("params"),
                          "fingerprint": store.call(fingerprint, name)}
    return encode({"format": FORMAT, "version": VERSION, "run_id": run_id, "run": run, "logs": logs,
                   "results": results, "datasets": datasets})


def write_record(record, path):
    """Write the record to path whole or not at all (a temporary file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    return path.stat().st_size


def read_record(path):
    """A record file, checked for its format and version; ConfigError on anything else."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is not a whole run record (truncated or not JSON: {type(e).__name__}); "
                          f"export it again with `python admin.py export-record`") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a run record (written by `python admin.py export-record`)")
    if record.get("version") != VERSION:
        raise ConfigError(f"{path} is a run record of version {record.get('version')!r}; this version reads "
                          f"version {VERSION} only")
    if not fits(record):
        raise ConfigError(f"{path} is a damaged run record (its parts do not fit together); export it again")
    try:
        return decode(record)
    except (TypeError, ValueError):  # a malformed time
        raise ConfigError(f"{path} is a damaged run record (a malformed time); export it again") from None


def fits(record):
    """Whether a record's parts fit together: one run, its logs and results, its datasets' fingerprints."""
    run_id, run = record.get("run_id"), record.get("run")
    if set(record) != KEYS or not isinstance(run_id, str) or not isinstance(run, dict) or run.get("_id") != run_id \
            or not isinstance(run.get("config"), dict) or not isinstance(run["config"].get("train_name"), str) \
            or not isinstance(record["logs"], list) or not isinstance(record["results"], list) \
            or not isinstance(record["datasets"], dict):
        return False
    check_name(run_id)
    if set(record["datasets"]) != set(dataset_names(run["config"])):
        return False
    for name, ds in record["datasets"].items():
        check_name(name, "dataset name")
        if not isinstance(ds, dict) or not isinstance(ds.get("fingerprint"), str):
            return False
    return all(isinstance(d, dict) and d.get("run_id") == run_id for d in record["logs"] + record["results"])


def check_datasets(store, record):
    """Refuse a record whose datasets are not in the database, or hold other data than it was run on."""
    for name, want in sorted(record["datasets"].items()):
        params = json.dumps(want.get("params"), sort_keys=True)
        if store.call(lambda db: db.datasets.find_one({"_id": name, "uid": {"$exists": True}}, {"_id": 1})) is None:
            raise DataError(f"run {record['run_id']!r} needs dataset {name!r}, which is not in the database: "
                            f"generate it first (a {want.get('task')} dataset with parameters {params}), "
                            f"then import the record again")
        if store.call(fingerprint, name) != want["fingerprint"]:
            raise DataError(f"dataset {name!r} holds other data than run {record['run_id']!r} was run on (its "
                            f"fingerprint differs): regenerate it with parameters {params}, then import again")


def import_record(store, record, replace=False):
    """Create (or with replace, replace) the run of a record, all or nothing: the run document is
    written first with status `importing` (marked as a record: no process trains or samples it), then
    the old run's records are deleted and the record's logs and results written, then the document is
    switched to the record's in one write. A killed import leaves an `importing` run, which the same
    import completes (without --replace) and drop-run removes."""
    run_id = record["run_id"]
    check_datasets(store, record)
    old = store.get_run(run_id)
    if old is not None and old.get("status") != "importing":
        if not replace:
            raise StoreError(f"run {run_id!r} exists; pass --replace to overwrite it with the record")
        holder = store.live_holder(run_id)
        if holder:
            raise StoreError(f"run {run_id!r} is being trained by {holder}; stop that process first")
    t = now()
    marker = {"_id": run_id, "status": "importing", "record": True}
    if old is None:
        try:
            store.runs.insert_one({**marker, "config": record["run"]["config"], "created": t, "updated": t, "step": 0,
                                   "error": None, "lease": None, "checkpoint": None, "pending_checkpoint": None})
        except DuplicateKeyError:  # another import (or a trainer) of this id went first
            raise StoreError(f"run {run_id!r} exists; pass --replace to overwrite it with the record") from None
    else:
        # no process may take it meanwhile: the lease must be free now, and `record` refuses a new one
        taken = store.runs.find_one_and_update({"_id": run_id, **query_unheld(store.server_time())},
                                               {"$set": {"status": "importing", "record": True, "lease": None}})
        if taken is None:
            raise StoreError(f"run {run_id!r} is being trained; stop that process first")
        if taken.get("pending_checkpoint") is not None:
            store.delete_upload(taken["pending_checkpoint"])
        for f in store.fs.find({"metadata.run_id": run_id}):
            store.fs.delete(f._id)
    for coll in (store.logs, store.results, store.responses):  # the old run's, or a killed import's
        coll.delete_many({"run_id": run_id})
    if record["logs"]:
        store.logs.insert_many([dict(r) for r in record["logs"]])
    if record["results"]:
        store.results.insert_many([dict(r) for r in record["results"]])
    testhook.pause("record-import")  # tests: logs and results written, the run document not yet switched
    doc = {**record["run"], "lease": None, "pending_checkpoint": None, "record": True}
    for field in ("checkpoint", "best"):
        if doc.get(field):
            doc[field] = {**doc[field], "id": None}  # the metadata only: no file behind it
    if store.runs.replace_one(marker, doc).matched_count == 0:
        raise StoreError(f"run {run_id!r} changed during the import (dropped or imported again); try again")
