"""--device and --dist-timeout-minutes: one parsing for train.py, eval.py and bench.py; the process
group's timeout."""
import datetime

import pytest
import torch
import torch.distributed as dist

import devices
import eval as evaluate
import train
from conftest import call
from errors import ConfigError


def test_devices_are_parsed_in_one_place(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert devices.parse_device("cuda") == devices.parse_device("auto") == torch.device("cuda", 1)  # its local GPU
    assert devices.parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="use --device cuda"):
        devices.parse_device("cuda:0")  # under torchrun: every rank on one GPU
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert devices.parse_device("cuda:1") == torch.device("cuda", 1)
    for bad, words in (("cuda:2", "no cuda:2 here (2 GPUs visible)"), ("gpu", "not a device"), ("cuda:x", "not a device"),
                       ("CUDA", "not a device"), ("", "not a device")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            devices.parse_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.parse_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="use --device cpu"):
        devices.parse_device("cuda")


@pytest.mark.parametrize("main, argv", [(train.main, ["single", "--run-id", "x", "--train-name", "toy.copy"]),
                                         (evaluate.main, ["--run-id", "x"]),
                                         (evaluate.main, ["bootstrap", "--run-id", "x"])])
def test_the_process_group_waits_dist_timeout_minutes(main, argv, monkeypatch):
    """torch's default of 10 minutes is less than ranks of an hours-long sampling job finish apart."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    joined = []

    def init_process_group(backend, **kwargs):  # as far as a launch gets here: the rest needs a second rank
        joined.append((backend, kwargs.get("timeout")))
        raise SystemExit(0)
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    for flags, minutes in (([], devices.DIST_TIMEOUT_MINUTES), (["--dist-timeout-minutes", "600"], 600)):
        joined.clear()
        call(main, *argv, "--device", "cpu", *flags)
        assert joined == [("gloo", datetime.timedelta(minutes=minutes))]
    assert devices.DIST_TIMEOUT_MINUTES >= 60


def test_the_gloo_group_beside_nccl_waits_dist_timeout_minutes(monkeypatch):
    """The per-step stop check's gloo group waits as long as the NCCL group, not torch's 30 minutes."""
    made = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: made.append((backend, kw.get("timeout"))))
    monkeypatch.setattr(dist, "new_group", lambda **kw: made.append((kw.get("backend"), kw.get("timeout"))) or "group")
    assert devices.init_process_group(torch.device("cuda", 0), 7, cpu_group=True) == "group"
    assert made == [("nccl", datetime.timedelta(minutes=7)), ("gloo", datetime.timedelta(minutes=7))]
    made.clear()
    assert devices.init_process_group(torch.device("cpu"), 7, cpu_group=True) is None  # gloo already
    assert made == [("gloo", datetime.timedelta(minutes=7))]
