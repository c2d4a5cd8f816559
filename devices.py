"""The device a process runs on (--device) and the process group it joins under torchrun
(--dist-timeout-minutes): what train.py, eval.py and bench.py share; the small collectives the
trainer's ranks agree through."""
import datetime
import os
import re

import torch
import torch.distributed as dist

from errors import ConfigError, shown

DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda (under torchrun: each rank its local GPU) or cuda:N"
DIST_TIMEOUT_MINUTES = 120.0


def parse_device(text):
    """The torch.device for a --device value; ConfigError for anything else, or a GPU that is not there."""
    m = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", text)
    if m is None:
        raise ConfigError(f"--device {shown(text)} is not a device: use auto, cpu, cuda or cuda:N")
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU build of torch" if torch.version.cuda is None else "no GPU visible"
        raise ConfigError(f"--device {text}: {build} here; use --device cpu (or auto)")
    local, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if m.group(1) is not None and local_world > 1:
        raise ConfigError(f"--device {text} would put all {local_world} ranks of this machine on one GPU: "
                          f"use --device cuda (each rank its local GPU)")
    index = local if m.group(1) is None else int(m.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {text}: no cuda:{index} here ({count} GPU{'s' * (count != 1)} visible); "
                          f"use --device cuda{f' with at most {count} processes per machine' if m.group(1) is None else ''}")
    return torch.device("cuda", index)


def add_flags(ap):
    ap.add_argument("--device", default="auto", help=DEVICE_HELP)
    ap.add_argument("--dist-timeout-minutes", type=float, default=DIST_TIMEOUT_MINUTES,
                    help=f"under torchrun, how long a rank waits for the others at a collective before the job fails "
                         f"(default {DIST_TIMEOUT_MINUTES:g}; torch's own is 10, less than ranks of a long sampling "
                         f"job can finish apart)")


def from_flags(args):
    """The device of add_flags' flags, both checked."""
    if not args.dist_timeout_minutes > 0:
        raise ConfigError(f"need --dist-timeout-minutes > 0, not {args.dist_timeout_minutes:g}")
    return parse_device(args.device)


def init_process_group(device, timeout_minutes, cpu_group=False):
    """Join torchrun's process group: NCCL on a GPU, gloo on the CPU, every collective waiting up to
    timeout_minutes. With cpu_group under NCCL, returns a gloo group beside it (host-side checks that
    must not wait for the device), waiting as long; None otherwise (the default group is gloo)."""
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return dist.new_group(backend="gloo", timeout=timeout) if cpu_group and device.type == "cuda" else None


def print0(*args, **kwargs):
    """All rank-0-only output goes through here."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def all_sum(t):
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def any_rank(flag, group=None):
    """True on every rank when flag is on any: one small collective at a step boundary, on the CPU
    (group: a gloo group beside NCCL, so the host does not wait for the device)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def broadcast_obj(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
