"""Manage runs and checkpoints in MongoDB, and the embedded database server.

An exported checkpoint is one self-contained torch.save file (weights, optimizer, scheduler, data
position, hyper-parameters, vocabulary, step); it is copied byte for byte from the store and
written under a temporary name first, so an interrupted export never leaves a file that looks whole.
"""
import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from pathlib import Path

import gridfs

import errors
import server
from dataset import generation_rule
from errors import CheckpointError, ConfigError, StoreError
from metrics import print_table
from records import export_record, import_record, read_record, write_record
from store import check_checkpoint, check_name, connect, restored

def fmt_time(t):
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def fmt_loss(doc, split):
    v = (doc.get("last") or {}).get(split, {}).get("loss")
    return f"{v:.4f}" if v is not None else "-"


def fmt_age(seconds):
    s = int(max(0, seconds))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h{s % 3600 // 60:02d}m" if s < 172800 \
        else f"{s // 86400}d"


def status_of(doc):
    """The run's status as stored, except that a `running` run whose trainer's lease has expired (it
    died, or gave up on the database, without a word) is `interrupted`; with the time since it was
    last seen. Reading only: nothing is written."""
    status, lease = doc.get("status", "-"), doc.get("lease")
    if status == "interrupted":  # stopped by a signal (train.py), at a step boundary
        return status, None
    if status != "running" or (lease and lease.get("expires", 0) > time.time()):
        return status, None
    seen = (lease or {}).get("seen") or (doc["updated"].timestamp() if doc.get("updated") else None)
    return "interrupted", (time.time() - seen if seen else None)


def interrupted_note(run_id, age):
    return (f"trainer last seen {fmt_age(age)} ago" if age is not None else "stopped") + \
        f"; continue with `python train.py single --run-id {run_id}`"


def fmt_optimal(store, run_id):
    """optimal % of the run's latest evaluation on the test split by eval.py (not a bootstrap's, which is
    on the train split)."""
    res = store.results.find_one({"run_id": run_id, "params.split": "test"}, sort=[("time", -1)])
    return f"{res['metrics']['optimal_pct']:.1f}" if res else "-"


def list_all(store, args):
    runs = store.list_runs()
    print(f"{'run id':40} {'status':11} {'step':>15} {'dataset':38} {'arch':7} {'size':4} {'train':>7} {'test':>7} {'opt %':>6}  updated")
    for r in runs:
        cfg = r.get("config", {})
        step = f"{r.get('step', 0)}/{cfg.get('train_steps', '?')}"
        status, age = status_of(r)
        print(f"{r['_id']:40} {status:11} {step:>15} {cfg.get('train_name', '-'):38} "
              f"{cfg.get('arch', 'decoder'):7} {cfg.get('model_size', '-'):4} {fmt_loss(r, 'train'):>7} {fmt_loss(r, 'test'):>7} "
              f"{fmt_optimal(store, r['_id']):>6}  {fmt_time(r.get('updated'))}")
        if r.get("status") == "failed" and r.get("error"):
            print(f"{'':40}   error: {r['error'].splitlines()[0][:100]}")
        if status == "interrupted":
            print(f"{'':40}   {interrupted_note(r['_id'], age)}")
    if not runs:
        print("(no runs)")


def show(store, args):
    r = store.require_run(args.run_id)
    status, age = status_of(r)
    note = f" ({interrupted_note(r['_id'], age)})" if status == "interrupted" else ""
    print(f"run {r['_id']}: {status}{note} at step {r.get('step', 0)}, world size {r.get('world_size', '-')}, "
          f"host {r.get('host', '-')}, updated {fmt_time(r.get('updated'))}")
    for k, v in r["config"].items():
        print(f"  {k:22} {v}")
    if "arch" not in r["config"]:  # stored before --arch existed: decoder-only (hparams.ADDED)
        print(f"  {'arch':22} decoder")
    for key in ("train_name", "test_name"):
        name = r["config"].get(key)
        ds = store.db.datasets.find_one({"_id": name}, {"task": 1, "params": 1}) if name else None
        if ds:  # datasets made before the reference's generation rules are flagged as such
            print(f"{key.split('_')[0]} dataset {name}: generation rule {generation_rule(ds)}")
    ck, best = r.get("checkpoint"), r.get("best")
    print(f"checkpoint: step {ck['step']}, {ck['size'] / 2**20:.1f} MiB" if ck else "checkpoint: none")
    if best:  # train.py --patience
        m = best.get("metrics") or {}
        rate = f"optimal {m['optimal_pct']:.1f}%, correct {m['correct_pct']:.1f}%, " \
            if m.get("correct_pct") is not None else ""
        why = f"validation: {rate}plan loss {m['plan_loss']:.4f}" if "plan_loss" in m else \
            f"test loss {m.get('loss', float('nan')):.4f}, as selected before validation-only selection"
        print(f"best checkpoint: step {best['step']} ({why}), {best['size'] / 2**20:.1f} MiB")
    if r.get("stopped_early"):
        k = r["config"].get("patience")
        print(f"stopped early at step {r['stopped_early']['step']}: {k} evaluations in a row without improvement "
              f"(--patience {k}); best step {r['stopped_early']['best_step']}")
    print(f"{'step':>8} {'split':5} {'loss':>8} {'trace':>8} {'plan':>8} {'acc':>6}")
    for rec in store.get_logs(args.run_id):
        rollout = f"  rollouts: optimal {rec['rollout_optimal_pct']:.1f}%, correct {rec['rollout_correct_pct']:.1f}% " \
                  f"of {rec['rollout_tasks']} tasks" if "rollout_optimal_pct" in rec else ""  # train.py --eval-tasks
        print(f"{rec['step']:>8} {rec['split']:5} {rec['loss']:>8.4f} {rec['trace_loss']:>8.4f} "
              f"{rec['plan_loss']:>8.4f} {rec['accuracy']:>6.3f}{rollout}")
    results = list(store.results.find({"run_id": args.run_id}).sort([("step", 1), ("time", 1)]))
    if results:
        print("evaluations (eval.py):")
        print_table([(f"step {e['step']}: {p['num_tasks']} {p['split']} x {p['samples']}, T {p['temperature']:g}, "
                           f"max {p['max_tokens']}", e["metrics"]) for e in results for p in [e["params"]]],
                         label="checkpoint and sampling")


def drop_run(store, args):
    store.drop_run(args.run_id, force=args.force)
    print(f"dropped run {args.run_id}")


def bulk_drop_run(store, args):
    ids = list(args.run_id or [])
    for i in ids:
        store.require_run(i)  # all or nothing: check every id before dropping any
    if args.pattern:
        ids += [r["_id"] for r in store.list_runs() if re.fullmatch(args.pattern, r["_id"]) and r["_id"] not in ids]
    if not ids:
        raise ConfigError("no run matched; give --run-id ID (repeatable) or --pattern REGEX")
    live = [i for i in ids if store.live_holder(i)]
    if live and not args.force:
        raise StoreError(f"{len(live)} of these runs are being trained ({', '.join(live[:3])}); stop them first, "
                         f"or pass --force to drop them anyway")
    for i in ids:
        store.drop_run(i, force=args.force)
        print(f"dropped run {i}")


def list_all_checkpoints(store, args):
    print(f"{'run id':40} {'step':>9} {'kind':6} {'size MiB':>9}  time")
    for ck in store.list_checkpoints():
        print(f"{ck['run_id']:40} {ck['step']:>9} {ck['which']:6} {ck['size'] / 2**20:>9.1f}  {fmt_time(ck['time'])}")


def export_one(store, run_id, export_dir, which="latest"):
    export_dir = Path(export_dir)
    stem = run_id if which == "latest" else f"{run_id}.best"
    final = export_dir / f"{stem}.pt"
    tmp = export_dir / f".{stem}.pt.partial-{os.getpid()}"
    for stale in export_dir.glob(f".{stem}.pt.partial-*"):  # left by an export that was killed
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not server.pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    for attempt in range(3):
        doc = store.require_run(run_id)
        if doc.get("record"):
            raise restored(run_id)
        info = doc.get("checkpoint" if which == "latest" else "best")
        if not info:
            raise StoreError(f"run {run_id!r} has no checkpoint yet" if which == "latest" else
                             f"run {run_id!r} has no best checkpoint (kept by runs trained with --patience)")
        try:
            export_dir.mkdir(parents=True, exist_ok=True)
            with store.fs.open_download_stream(info["id"]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, final)
            break
        except (gridfs.errors.NoFile, gridfs.errors.CorruptGridFile) as e:
            if attempt == 2:  # else the run saved a newer checkpoint meanwhile and deleted this one: export that
                raise CheckpointError(f"the checkpoint of run {run_id!r} is unreadable ({type(e).__name__})") from None
        except OSError as e:
            raise ConfigError(f"cannot write {final}: {e.strerror or e}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    print(f"exported {run_id} step {info['step']}{' (best)' if which == 'best' else ''} to {final}")


def export_checkpoint(store, args):
    if args.format == "reference":
        import reference_checkpoint  # imports torch, as checkpoint.py does
        path, step = reference_checkpoint.export_file(store, args.run_id, args.export_dir, args.which)
        print(f"exported {args.run_id} step {step}{' (best)' if args.which == 'best' else ''} in the reference's "
              f"format to {path}")
        return
    export_one(store, args.run_id, args.export_dir, args.which)


def bulk_export_checkpoint(store, args):
    ids = args.run_id or [ck["run_id"] for ck in store.list_checkpoints() if ck["which"] == "latest"]
    for i in ids:
        store.require_run(i)
    for i in ids:
        export_one(store, i, args.export_dir)


def read_checkpoint(path):
    """An exported checkpoint file or a reference .ckpt, loaded and checked: ("own" or "reference", its
    dict); ConfigError or CheckpointError on anything that is not a whole, valid checkpoint."""
    import reference_checkpoint  # imported here (it imports torch): the other commands start without it
    return reference_checkpoint.read(path)


def import_checkpoint(store, args):
    ck, run_id = args.checkpoint, args.run_id  # both checked before connecting (main)
    if args.kind == "reference":
        import reference_checkpoint
        print(reference_checkpoint.import_file(store, args.filename, ck, run_id, args.dataset, args.tokens, args.replace))
        return
    ck["run_id"] = run_id
    from checkpoint_store import put_checkpoint  # imports torch, as checkpoint.py does
    put_checkpoint(store, run_id, ck["config"], ck, ck["step"], replace=args.replace)
    print(f"imported {args.filename} as run {run_id} (step {ck['step']})")


def bulk_import_checkpoint(store, args):
    """Every checkpoint file of a folder (*.ckpt: the reference's, *.pt: ours), one line each; a bad one is
    named, the others still imported."""
    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir}: no such folder")
    import reference_checkpoint
    files, failed = reference_checkpoint.bulk_import(store, args.dir, args.dataset, args.tokens, args.replace)
    if failed:
        raise StoreError(f"{failed} of {files} checkpoint files not imported (named above)")
    if not files:
        print(f"no checkpoint files (*.ckpt, *.pt) in {args.dir}")


def copy_run(store, args):
    from checkpoint_store import copy_run  # imports torch, as checkpoint.py does
    copy_run(store, args.run_id, args.to)
    print(f"copied run {args.run_id} to {args.to}: relaunch it with `torchrun ... train.py single --run-id {args.to}`")


def export_record_cmd(store, args):
    size = write_record(export_record(store, args.run_id), args.out)
    print(f"exported the record of run {args.run_id} to {args.out} ({size / 1024:.1f} KiB)")


def import_record_cmd(store, args):
    record = args.record  # read and checked before connecting (main)
    import_record(store, record, replace=args.replace)
    print(f"imported run {record['run_id']} from {args.filename} ({len(record['logs'])} log records, "
          f"{len(record['results'])} evaluations, no checkpoints)")


def bulk_import_record(store, args):
    """Every *.json record of a folder, one line each; a bad one is named, the others still imported."""
    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir}: no such folder")
    files = sorted(Path(args.dir).glob("*.json"))
    failed = 0
    for path in files:
        try:
            record = read_record(path)
            if args.skip_existing and store.get_run(record["run_id"]) is not None:
                print(f"{path}: run {record['run_id']} exists, skipped")
                continue
            import_record(store, record, replace=args.replace)
            print(f"{path}: imported run {record['run_id']}")
        except errors.Error as e:
            failed += 1
            print(f"{path}: not imported: {e}")
    if failed:
        raise StoreError(f"{failed} of {len(files)} records not imported (named above)")
    if not files:
        print(f"no records (*.json) in {args.dir}")


def db_cmd(_store, args):
    uri = os.environ.get("MONGODB_URI")
    if args.action == "status":
        if uri:
            store = connect()
            print(f"MONGODB_URI is set: using {store.address} (database {store.db.name}), reachable")
            return
        info = server.server_info()
        folder = server.db_dir()
        if info and info["up"]:
            print(f"embedded server up: pid {info['pid']}, mongodb://{info['host']}:{info['port']}, data {folder}")
        else:
            print(f"embedded server not running (data {folder}); it starts on first use")
    else:
        if uri:
            raise ConfigError("MONGODB_URI is set: `db stop` only stops the embedded server")
        stopped = server.stop_embedded()
        print("embedded server stopped" if stopped else "embedded server was not running")


def vocabulary_flags(p):
    p.add_argument("--dataset", help="a reference file's token ids: this dataset's vocabulary (default: its config's "
                   "test dataset, when it is here)")
    p.add_argument("--vocabulary", metavar="FILE.json", help="a reference file's token ids: its dataset's stored "
                   "vocabulary (a JSON list, or the reference's `vocabulary` document)")
    p.set_defaults(tokens=None)  # the file's tokens, read by main before the database is touched


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list-all", help="all runs with status, step, dataset, size and last losses").set_defaults(fn=list_all)
    p = sub.add_parser("show", help="one run: hyper-parameters, checkpoint and loss curve")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("run", nargs="?", metavar="RUN", help="the run id (as `data.py show NAME` takes a name)")
    g.add_argument("--run-id", help="the same, as a flag")
    p.set_defaults(fn=show)
    p = sub.add_parser("drop-run", help="delete a run with its logs and checkpoints")
    p.add_argument("--run-id", required=True)
    p.add_argument("--force", action="store_true", help="drop it even while a trainer holds it")
    p.set_defaults(fn=drop_run)
    p = sub.add_parser("bulk-drop-run", help="delete several runs")
    p.add_argument("--run-id", action="append", help="repeatable")
    p.add_argument("--pattern", help="regular expression matched against whole run ids")
    p.add_argument("--force", action="store_true", help="drop them even while trainers hold them")
    p.set_defaults(fn=bulk_drop_run)
    sub.add_parser("list-all-checkpoints", help="every run's checkpoints: its latest, and its best (--patience)"
                   ).set_defaults(fn=list_all_checkpoints)
    p = sub.add_parser("export-checkpoint", help="write a run's checkpoint to DIR/<run id>.pt (best: <run id>.best.pt)")
    p.add_argument("--run-id", required=True)
    p.add_argument("--export-dir", required=True)
    p.add_argument("--checkpoint", dest="which", default="latest", metavar="{latest,best}",
                   help="the run's latest checkpoint (default) or its best (kept by runs trained with --patience)")
    p.add_argument("--format", choices=["own", "reference"], default="own",
                   help="own: this project's file (default); reference: the reference's DIR/<run id>.ckpt (encdec runs "
                   "of a reference size)")
    p.set_defaults(fn=export_checkpoint)
    p = sub.add_parser("bulk-export-checkpoint", help="export several (default: all) checkpoints")
    p.add_argument("--export-dir", required=True)
    p.add_argument("--run-id", action="append", help="repeatable; default all runs with a checkpoint")
    p.set_defaults(fn=bulk_export_checkpoint)
    p = sub.add_parser("import-checkpoint", help="create a run from an exported checkpoint file or a reference .ckpt")
    p.add_argument("--filename", required=True)
    p.add_argument("--run-id", help="run id to import as (default: the one in the file)")
    p.add_argument("--replace", action="store_true", help="overwrite an existing run of that id")
    vocabulary_flags(p)
    p.set_defaults(fn=import_checkpoint)
    p = sub.add_parser("bulk-import-checkpoint", help="import every checkpoint file (*.ckpt, *.pt) of a folder")
    p.add_argument("--dir", required=True)
    p.add_argument("--replace", action="store_true", help="overwrite existing runs")
    vocabulary_flags(p)
    p.set_defaults(fn=bulk_import_checkpoint)
    p = sub.add_parser("copy-run", help="copy a run (config, logs, checkpoints; not evaluations) to another id, "
                       "to continue it there, e.g. with more --patience, the original kept")
    p.add_argument("--run-id", required=True)
    p.add_argument("--to", required=True, help="the new run id")
    p.set_defaults(fn=copy_run)
    p = sub.add_parser("export-record", help="write a run's record (run, logs, evaluations; no checkpoint files) "
                       "to a JSON file")
    p.add_argument("--run-id", required=True)
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.set_defaults(fn=export_record_cmd)
    p = sub.add_parser("import-record", help="restore a run from its record (without checkpoints: it cannot be "
                       "resumed or evaluated again)")
    p.add_argument("filename")
    p.add_argument("--replace", action="store_true", help="overwrite an existing run of that id")
    p.set_defaults(fn=import_record_cmd)
    p = sub.add_parser("bulk-import-record", help="restore every record (*.json) of a folder")
    p.add_argument("--dir", required=True)
    p.add_argument("--replace", action="store_true", help="overwrite existing runs")
    p.add_argument("--skip-existing", action="store_true", help="leave runs already in the database as they are")
    p.set_defaults(fn=bulk_import_record)
    p = sub.add_parser("db", help="the embedded database server: status or stop")
    p.add_argument("action", choices=["status", "stop"])
    p.set_defaults(fn=db_cmd)
    args = ap.parse_args(argv)
    if getattr(args, "run", None) is not None:
        args.run_id = args.run
    try:
        for rid in ([args.run_id] if isinstance(getattr(args, "run_id", None), str) else getattr(args, "run_id", None) or []):
            check_name(rid)  # validated before any database call
        if getattr(args, "to", None) is not None:
            check_name(args.to)
        if args.cmd == "export-checkpoint":
            check_checkpoint(args.which)
        if getattr(args, "dataset", None):
            check_name(args.dataset, "dataset name")
        if getattr(args, "vocabulary", None) is not None:
            import reference_checkpoint
            args.tokens = reference_checkpoint.read_vocabulary(args.vocabulary)
        if args.cmd == "import-checkpoint":
            args.kind, args.checkpoint = read_checkpoint(args.filename)  # refuse a bad file before the database
            named = args.checkpoint.get("run_id") or args.checkpoint.get("checkpoint_id") or Path(args.filename).stem
            args.run_id = check_name(args.run_id or named)
        if args.cmd == "import-record":
            args.record = read_record(args.filename)  # refuse a bad file before touching the database
        if getattr(args, "pattern", None) is not None:
            try:
                re.compile(args.pattern)
            except re.error as e:
                raise ConfigError(f"invalid --pattern {args.pattern!r}: {e}") from None
        store = None if args.cmd == "db" else connect()
        args.fn(store, args)
    except errors.REPORTED as e:
        sys.exit(errors.exit_message(e))


if __name__ == "__main__":
    main()
