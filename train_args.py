"""train.py's command line, and the config a launch trains with: one flag per TrainConfig field (a
negative number taken as a value, not an option), the runtime flags, a sweep entry; a relaunch of a
stored run takes its stored values for the flags it leaves out."""
import argparse
import re
import sys
from dataclasses import fields

import devices
import sweep
from errors import ConfigError, StoreError
from hparams import ADDED, CHOICES, TrainConfig


def add_config_flags(ap):
    """One flag per TrainConfig field, its help its default and choices; a flag left out takes the
    stored run's value when the run exists (settle_stored), else that default."""
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                            help=f"default {flag if f.default else '--no-' + flag[2:]}")
            continue
        choices = CHOICES.get(f.name)
        ap.add_argument(flag, type=f.type, default=None, metavar=f.type.__name__.upper(),
                        help=(f"one of {', '.join(choices)}; " if choices else "") + f"default {f.default!r}")


def add_runtime_flags(ap, run_id_help=None):
    ap.add_argument("--run-id", required=run_id_help is None,
                    help=run_id_help or "the run's id: launching an existing id resumes it")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved hyper-parameters and exit")
    devices.add_flags(ap)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute activations (big models)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: bf16 autocast on GPU, fp32 on CPU (bf16 there is faster on CPUs with AMX)")
    ap.add_argument("--no-cache", action="store_true", help="read datasets from MongoDB, not the local cache")
    ap.add_argument("--lease-seconds", type=float, default=60.0, help="how long a dead trainer blocks a relaunch (default %(default)s)")
    ap.add_argument("--db-retry-seconds", type=float, default=300.0,
                    help="how long to wait for a lost database before failing (default %(default)s)")


NEGATIVE = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf(inity)?|-nan", re.IGNORECASE)


def parse_args(argv, description=None):
    """train.py's command line (description: its --help text)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "-1e-3" for an option: join a negative number to the flag before it ("--lr=-1e-3")
    for i in range(len(argv) - 1, 0, -1):
        if NEGATIVE.fullmatch(argv[i]) and argv[i - 1].startswith("--") and "=" not in argv[i - 1]:
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    single = sub.add_parser("single", help="one run from flags (defaults as in TrainConfig)",
                            description="Train, continue or extend one run. Launching a stored run id continues "
                                        "it: flags left out take its stored values, and only a raised "
                                        "--train-steps may differ (it extends the run).")
    add_runtime_flags(single)
    add_config_flags(single)
    sw = sub.add_parser("sweep", help="one entry of a sweep file")
    add_runtime_flags(sw, "the run's id (default: <sweep file stem>-<index>, or <base>-<index>-step-<k> for a step "
                          "file <base>-step-<k>.json); launching an existing id resumes it")
    sw.add_argument("--sweep", required=True, help="JSON list of hyper-parameter dicts")
    sw.add_argument("--index", type=int, required=True, help="entry index (e.g. a job array's index)")
    sw.add_argument("--arch", choices=CHOICES["arch"], default=None,
                    help="the architecture of an entry that names none (default decoder; the reference's "
                         "sweeps were encdec, their encoder/decoder names its sizes)")
    args = ap.parse_args(argv)
    if args.mode == "sweep" and args.run_id is None:
        args.run_id = sweep.run_id(args.sweep, args.index)
    return args


def resolve_config(args, defaults=None):
    """The config the flags or the sweep entry give; keys they leave out take `defaults`, then TrainConfig's."""
    if args.mode == "sweep":
        return sweep.load(args.sweep, args.index, {**(defaults or {}), **({"arch": args.arch} if args.arch else {})})
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:
        return TrainConfig.from_dict({**(defaults or {}), **given})
    except (ValueError, ConfigError) as e:
        raise ConfigError(str(e)) from None


def settle_stored(store, args, cfg):
    """A relaunch of a stored run takes the run's hyper-parameters for what its flags leave out, so
    `train.py single --run-id ID` alone continues it as it trained. A run stored before a key existed
    trained with that key's old value: its stored config gains the missing keys with those values
    (hparams.ADDED, TrainConfig.from_stored)."""
    doc = store.get_run(args.run_id)
    if doc is None:
        return cfg
    try:
        stored = TrainConfig.from_stored(doc["config"])
    except (ValueError, TypeError) as e:
        raise StoreError(f"run {args.run_id!r} has a stored config this version cannot read ({e}); use a new "
                         f"--run-id") from None
    if args.arch and args.arch != stored.arch:
        raise ConfigError(f"run {args.run_id!r} is a {stored.arch} run: it cannot continue as --arch {args.arch}; "
                          f"use a new --run-id")
    missing = [k for k in ADDED if k not in doc["config"]]
    if missing:
        unset = {f"config.{k}": {"$exists": False} for k in missing}
        store.call(lambda db: db.runs.update_one({"_id": args.run_id, **unset},
                                                 {"$set": {f"config.{k}": ADDED[k] for k in missing}}))
    return resolve_config(args, stored.to_dict())
