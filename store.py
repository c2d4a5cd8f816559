"""MongoDB access: the connection (MONGODB_URI or the embedded server), runs, leases and logs; the
checkpoint files themselves are written and read by checkpoint_store.py.

Collections:
  runs        one document per run id: hyper-parameters, status, step, lease, last metrics,
              pointer to its current checkpoint
  logs        one document per (run id, split, step) with rank-reduced metrics
  checkpoints GridFS bucket; each file is a torch.save dict, loaded with weights_only=True
  results     evaluation results (eval.py)
  responses   sampled responses, one per (run, step, sampling parameters, task, sample) (eval.py)

When MONGODB_URI is unset, the embedded server of server.py is used (started on first use).
"""
import copy
import datetime
import functools
import os
import re
import socket
import sys
import time
import warnings
from urllib.parse import unquote, urlsplit, urlunsplit

import gridfs
import pymongo
from pymongo.errors import AutoReconnect, DuplicateKeyError, PyMongoError, ServerSelectionTimeoutError

import server
from errors import ConfigError, StoreError, shown

DEFAULT_DB = "searchformer"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")  # no leading "-": it reads as an option
NAME_MAX = 120
TRANSIENT = (AutoReconnect, ServerSelectionTimeoutError)  # AutoReconnect covers connection and network timeouts


def check_name(value, what="run id"):
    """The one validation rule for run ids and dataset names, applied before any database call."""
    if not isinstance(value, str) or len(value) > NAME_MAX or not NAME_RE.fullmatch(value):
        raise ConfigError(f"invalid {what} {shown(value)}: use letters, digits, '-' and '_' (not first), with single "
                          f"dots only between parts, at most {NAME_MAX} characters")
    return value


CHECKPOINTS = ("latest", "best")  # a run's checkpoints: where a resume starts, and its best (train.py --patience)


def check_checkpoint(value):
    """A checkpoint name given on the command line (--checkpoint)."""
    if value not in CHECKPOINTS:
        raise ConfigError(f"unknown checkpoint {shown(value)}: give --checkpoint latest (the run's current one) or "
                          f"--checkpoint best (kept by runs trained with --patience)")
    return value


SECRET_OPTION = re.compile(r"password|secret|token|authmechanismproperties", re.IGNORECASE)


def _secrets(uri):
    """The secret parts of a URI as written (and unescaped): its password and secret-looking option values."""
    try:
        parts = urlsplit(uri)
    except (ValueError, TypeError, AttributeError):
        return []
    user, sep, _ = parts.netloc.rpartition("@")
    found = [user.partition(":")[2] or unquote(user).partition(":")[2]] if sep else []
    found += [v for k, _, v in (p.partition("=") for p in parts.query.split("&")) if SECRET_OPTION.search(k)]
    found += [unquote(x) for x in found]
    return sorted({x for x in found if x}, key=len, reverse=True)


def redact(uri):
    """The URI with its password (and any secret-looking option value) replaced by ***, for printing."""
    try:
        parts = urlsplit(uri)
    except (ValueError, TypeError, AttributeError):
        return "<unparseable uri>"
    user, sep, host = parts.netloc.rpartition("@")
    if sep and (":" in user or ":" in unquote(user)):
        user = unquote(user).partition(":")[0] + ":***"
    query = "&".join(f"{k}=***" if SECRET_OPTION.search(k) else f"{k}{eq}{v}"
                     for k, eq, v in (p.partition("=") for p in parts.query.split("&"))) if parts.query else ""
    return scrub(urlunsplit(parts._replace(netloc=f"{user}{sep}{host}", query=query)), uri)


def scrub(text, uri):
    """text with every secret of uri replaced by ***: for error messages that might quote it."""
    for secret in _secrets(uri):
        text = text.replace(secret, "***")
    return text


def world_size_refusal(run_id, was, world_size):
    return (f"run {run_id!r} was trained with world size {was} and its data order depends on it; relaunch it with "
            f"{was} processes in all (e.g. torchrun --nproc-per-node {was}), not {world_size}, or use a new --run-id")


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def query_unheld(t, owner=None):
    """A query for a run no process holds at server time t (its lease released or expired), or that
    owner holds: leases are written and read on the database server's clock (Store.server_time),
    never a host's, so a host whose clock runs ahead cannot take a live lease for expired."""
    return {"$or": [{"lease": None}, {"lease.expires": {"$lt": t}}, *([{"lease.owner": owner}] if owner else [])]}


def fenced(run_id, owner):
    """A query for the run's document, and with an owner only while that process holds the run: the
    fence that keeps a trainer whose lease was taken over (or whose run was dropped) from writing to it."""
    return {"_id": run_id, **({"lease.owner": owner} if owner else {})}


def restored(run_id):
    """The refusal to train, sample or start from a run restored from a record (records.py)."""
    return StoreError(f"run {run_id!r} was restored from a record (admin.py import-record), without checkpoints: "
                      f"it cannot be resumed, evaluated again or started from; train it again under a new --run-id "
                      f"(or drop it first)")


def lost_run_error(run_id):
    """The error a fenced write raises when this process no longer holds its run."""
    return StoreError(f"run {run_id!r} is no longer held by this process (its lease expired and another "
                      f"process took it over, or the run was dropped); stopping")


# ---------------------------------------------------------------------------------------------
# the store


def embedded_uri(folder=None, start=True, wait_s=60.0):
    """URI of the embedded server of a data folder (server.embedded_address), started when not up."""
    return f"mongodb://{server.embedded_address(folder, start, wait_s)}/{DEFAULT_DB}"


def retrying(method):
    """Retry a store operation on connection loss for up to store.retry_s seconds, then give up."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline = time.monotonic() + self.retry_s
        delay = 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except TRANSIENT as e:
                self._follow_embedded()
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"lost the database at {self.address} for over {self.retry_s:.0f}s: "
                                     f"{type(e).__name__}") from e
                print(f"database unreachable ({type(e).__name__}), retrying in {delay:.1f}s", file=sys.stderr)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
    return wrapper


def bounded(seconds):
    """A context in which every database operation of this thread gives up after `seconds` in all
    (pymongo's client-side timeout, server selection included): for last best-effort writes."""
    return pymongo.timeout(seconds)


def _probe(uri, timeout_s):
    """Raise OSError at once when no host of a mongodb:// URI takes a TCP connection (refused, unknown
    host), or none does within timeout_s: pymongo would retry until its selection timeout."""
    if not uri.startswith("mongodb://"):
        return  # mongodb+srv: the hosts come from DNS, leave them to pymongo
    nodes = pymongo.uri_parser.parse_uri(uri)["nodelist"]
    deadline, reasons = time.monotonic() + timeout_s, []
    for host, port in nodes:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic())):
                return
        except socket.gaierror:
            reasons.append(f"unknown host {host}")
        except ConnectionRefusedError:
            reasons.append(f"connection refused by {host}:{port}")
        except OSError as e:
            reasons.append(f"{host}:{port}: {e.strerror or type(e).__name__}")
    raise OSError("; ".join(reasons[:3]))


def connect(uri=None, timeout_s=5.0, retry_s=0.0):
    """Connect to MONGODB_URI (or `uri`), or to the embedded server when neither is given."""
    uri = uri or os.environ.get("MONGODB_URI")
    embedded = not uri
    if embedded:
        uri = embedded_uri()
    ms = int(timeout_s * 1000)
    try:
        if not embedded:
            _probe(uri, min(timeout_s, 2.5))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pymongo only warns about (and ignores) an invalid option
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True)
        client.admin.command("ping")
        name = client.get_default_database(default=DEFAULT_DB).name
        return Store(client[name], redact(uri), retry_s, server.db_dir() if embedded else None)
    except (PyMongoError, ValueError, TypeError, Warning, OSError) as e:  # a malformed URI is a ValueError
        hint = ("run `python admin.py db status`" if embedded else
                "check MONGODB_URI, or unset it to use the embedded server (started on first use)")
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(", full error")[0]
        reason = scrub(reason.split(", Timeout:")[0].split(" (configured")[0][:160], uri)
        raise StoreError(f"cannot reach MongoDB at {redact(uri)}: {reason}; {hint}") from None


class Connection:
    """A database and its collections, shared by a Store and its with_retry copies, so that all of
    them follow the embedded server together when it moves."""

    def __init__(self, db, address):
        self.db, self.address = db, address
        self.runs, self.logs, self.results, self.responses = db["runs"], db["logs"], db["results"], db["responses"]
        self.fs = gridfs.GridFSBucket(db, "checkpoints")


class Store:
    """One database's runs, logs, evaluation results and sampled responses, and the GridFS bucket of
    checkpoint files (written and read by checkpoint_store.py). Methods marked @retrying ride out a
    lost connection for retry_s seconds; code above the store reaches the database through them, or
    through call() for what it reads and writes itself."""

    def __init__(self, db, address, retry_s=0.0, folder=None):
        self.link = Connection(db, address)
        self.retry_s = retry_s
        self.folder = folder  # the embedded server's data folder, else None
        self.logs.create_index([("run_id", 1), ("split", 1), ("step", 1)], unique=True)
        self.results.create_index([("run_id", 1)])
        self.responses.create_index([("run_id", 1), ("step", 1), ("pkey", 1), ("task", 1), ("sample", 1)], unique=True)
        db["checkpoints.files"].create_index([("metadata.run_id", 1)])

    def __getattr__(self, name):  # db, address, runs, logs, results, responses, fs: the shared connection's
        if name == "link":
            raise AttributeError(name)
        return getattr(self.link, name)

    def _follow_embedded(self):
        """After a lost connection to the embedded server: when it was restarted on another address
        (its port was taken meanwhile), rebind to the one its folder's record names and close the old
        client (its monitor threads and sockets). The indexes are the folder's: nothing to create."""
        info = server.server_info(self.folder) if self.folder else None
        uri = info and info["up"] and f"mongodb://{info['host']}:{info['port']}/{DEFAULT_DB}"
        if uri and redact(uri) != self.address:
            client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, tz_aware=True)
            print(f"the embedded server moved to {uri}: reconnecting", file=sys.stderr)
            old, link = self.db.client, self.link
            link.__init__(client[self.db.name], redact(uri))
            old.close()

    @retrying
    def call(self, fn, *args, **kwargs):
        """fn(db, *args, **kwargs), retried like the store's own methods: for the reads and writes of the
        modules above the store (datasets, responses). fn must be safe to run again from the start."""
        return fn(self.db, *args, **kwargs)

    def server_time(self):
        """The database server's clock, in seconds since the epoch: what leases are measured on."""
        return self.db.command("hello", codec_options=self.db.codec_options)["localTime"].timestamp()

    def delete_upload(self, file_id):
        """Remove a GridFS file by hand, chunks first: it may be an upload that was never closed."""
        self.db["checkpoints.chunks"].delete_many({"files_id": file_id})
        self.db["checkpoints.files"].delete_many({"_id": file_id})

    # runs ------------------------------------------------------------------------------------

    @retrying
    def get_run(self, run_id):
        return self.runs.find_one({"_id": check_name(run_id)})

    def require_run(self, run_id):
        doc = self.get_run(run_id)
        if doc is None:
            raise StoreError(f"no run with id {run_id!r} (see `python admin.py list-all`)")
        return doc

    @retrying
    def list_runs(self, pattern=None):
        query = {"_id": {"$regex": pattern}} if pattern else {}
        return list(self.runs.find(query).sort("_id", 1))

    @retrying
    def start_run(self, run_id, config, owner, lease_s, world_size, host):
        """Create the run or re-open it for resuming; refuses a changed config or a live holder, except
        that a raised train_steps extends the run, and a raised patience (of a run with patience) lets it
        wait longer, one it stopped too (the stored config takes them).

        Returns the run document as it was before this call (None for a new run)."""
        check_name(run_id)
        t, server_t = now(), self.server_time()
        lease = {"owner": owner, "expires": server_t + lease_s, "seen": server_t}
        fields = {"status": "running", "error": None, "world_size": world_size, "host": host, "updated": t}
        doc = self.runs.find_one({"_id": run_id})
        if doc and doc.get("record"):
            raise restored(run_id)
        if doc and (doc.get("lease") or {}).get("owner") == owner and doc.get("created") == doc.get("updated"):
            return None  # this call's own insert, its answer lost (retried whole): still a new run (RunGuard.created)
        if doc is None:
            try:
                self.runs.insert_one({"_id": run_id, "config": config, "created": t, "step": 0,
                                      "lease": lease, **fields})
                return None
            except DuplicateKeyError:
                doc = self.runs.find_one({"_id": run_id})
        diff = sorted(k for k in set(config) | set(doc["config"]) if config.get(k) != doc["config"].get(k))
        # raising train_steps extends the run; raising patience (from a patience run's) lets it wait longer,
        # so a run patience stopped goes on as one launched with the larger patience would have
        raised = {k for k in diff if k in ("train_steps", "patience") and config[k] > doc["config"][k] and
                  (k == "train_steps" or doc["config"][k] > 0)}
        extend = bool(diff) and set(diff) == raised
        if extend and doc.get("stopped_early") and "patience" not in raised:
            at = doc["stopped_early"]
            raise StoreError(f"run {run_id!r} was stopped early by --patience at step {at['step']} (best: step "
                             f"{at['best_step']}): raising --train-steps would not train it further; raise "
                             f"--patience to let it wait longer, or start a new run from it with "
                             f"--start-checkpoint {run_id} --start-from best")
        if diff and not extend:
            changes = ", ".join(f"{k}: {doc['config'].get(k)!r} -> {config.get(k)!r}" for k in diff[:6])
            raise StoreError(f"run {run_id!r} exists with other hyper-parameters ({changes}); only --train-steps "
                             f"and --patience may change, raised, to extend it; use a new --run-id or drop it with "
                             f"`python admin.py drop-run --run-id {run_id}`")
        if doc.get("checkpoint") and doc.get("world_size") not in (None, world_size):
            raise StoreError(world_size_refusal(run_id, doc["world_size"], world_size))
        if not self.acquire_lease(run_id, owner, lease_s):
            held = self.runs.find_one({"_id": run_id})["lease"]
            left = held["expires"] - self.server_time()
            raise StoreError(f"run {run_id!r} is being trained by {held['owner']} (lease expires in {left:.0f}s "
                             f"unless renewed); wait for it or stop that process")
        unset = {"$unset": {"stopped_early": ""}} if extend and "patience" in raised else {}
        self.runs.update_one({"_id": run_id}, {"$set": {**fields, **({"config": config} if extend else {})}, **unset})
        return doc

    def acquire_lease(self, run_id, owner, lease_s):
        t = self.server_time()
        new = {"$set": {"lease": {"owner": owner, "expires": t + lease_s, "seen": t}}}
        return self.runs.find_one_and_update({"_id": run_id, **query_unheld(t, owner)}, new) is not None

    def release_lease(self, run_id, owner):
        self.runs.update_one({"_id": run_id, "lease.owner": owner}, {"$set": {"lease": None}})

    def with_retry(self, seconds):
        """This store with another retry window, e.g. 0 for a last best-effort write after the database was lost."""
        other = copy.copy(self)
        other.retry_s = seconds
        return other

    @retrying
    def set_status(self, run_id, status, error=None, owner=None):
        """Returns False when owner is given and no longer holds the run (nothing is written then)."""
        r = self.runs.update_one(fenced(run_id, owner), {"$set": {"status": status, "error": error, "updated": now()}})
        return r.matched_count > 0

    @retrying
    def set_stopped_early(self, run_id, step, best_step, owner=None):
        """Record that model selection (train.py --patience) ended the run at `step`, its best at best_step."""
        r = self.runs.update_one(fenced(run_id, owner), {"$set": {"stopped_early": {"step": step, "best_step": best_step},
                                                                   "updated": now()}})
        if owner and r.matched_count == 0:
            raise lost_run_error(run_id)

    @retrying
    def live_holder(self, run_id):
        """The owner of the run's unexpired training lease, or None."""
        lease = (self.runs.find_one({"_id": run_id}, {"lease": 1}) or {}).get("lease")
        return lease["owner"] if lease and lease["expires"] > self.server_time() else None

    def drop_run(self, run_id, force=False):
        doc = self.require_run(run_id)
        holder = self.live_holder(run_id)
        if holder and not force:
            raise StoreError(f"run {run_id!r} is being trained by {holder}; stop that process first, or drop it "
                             f"anyway with `python admin.py drop-run --run-id {run_id} --force` (the trainer then stops)")
        if doc.get("pending_checkpoint") is not None:  # an upload never closed (a killed save or import): chunks, no file
            self.delete_upload(doc["pending_checkpoint"])
        for f in self.fs.find({"metadata.run_id": run_id}):
            self.fs.delete(f._id)
        self.logs.delete_many({"run_id": run_id})
        self.results.delete_many({"run_id": run_id})
        self.responses.delete_many({"run_id": run_id})
        self.runs.delete_one({"_id": run_id})

    # logs ------------------------------------------------------------------------------------

    @retrying
    def log(self, run_id, step, split, metrics, owner=None):
        """One log record per (run, split, step): a rewrite after a resume replaces, never duplicates."""
        r = self.runs.update_one(fenced(run_id, owner),
                                 {"$set": {f"last.{split}": metrics, "step": step, "updated": now()}})
        if owner and r.matched_count == 0:
            raise lost_run_error(run_id)
        key = {"run_id": run_id, "split": split, "step": step}
        self.logs.replace_one(key, {**key, **metrics, "time": now()}, upsert=True)

    @retrying
    def truncate_logs(self, run_id, after_step, owner=None):
        """Drop records a killed process wrote after its last checkpoint."""
        if owner and self.runs.count_documents(fenced(run_id, owner), limit=1) == 0:
            raise lost_run_error(run_id)
        self.logs.delete_many({"run_id": run_id, "step": {"$gt": after_step}})

    @retrying
    def get_logs(self, run_id, split=None):
        query = {"run_id": run_id, **({"split": split} if split else {})}
        return list(self.logs.find(query, {"_id": 0}).sort([("split", 1), ("step", 1)]))

    # checkpoints (the files themselves: checkpoint_store.py) -------------------------------

    @retrying
    def list_checkpoints(self):
        """Every run's checkpoints, its latest (`checkpoint`) then its best (train.py --patience), by run id."""
        docs = self.runs.find({"checkpoint": {"$ne": None}, "record": {"$ne": True}},  # a record's: metadata, no file
                              {"checkpoint": 1, "best": 1}).sort("_id", 1)
        return [{"run_id": d["_id"], "which": which, **d[field]}
                for d in docs for which, field in (("latest", "checkpoint"), ("best", "best")) if d.get(field)]
