"""Measuring on this machine, for the benchmarks: time on the device (sync), resident memory and its
peak (PeakRSS), graphs torch.compile made, the device's known bf16 peak and its measured matmul rate
and memory bandwidth, and the plain-text tables the benchmarks print."""
import os
import resource
import threading
import time

import torch

# dense bf16 tensor-core peak FLOP/s, matched in order as substrings of torch.cuda.get_device_name()
DEVICE_PEAKS = [
    ("GH200", 989e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12),
    ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12),
    ("B200", 2250e12),
]


def device_peak(device):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DEVICE_PEAKS if key in name), None)


def compiled_graphs():
    """Graphs torch.compile has made so far in this process."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def extra(self):
        return self.peak - self.base


def gib(n):
    return f"{n / 2**30:.2f}"


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(width) if i else str(v).ljust(width)
                               for i, (v, width) in enumerate(zip(r, widths)))
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print()


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


def machine_limits(device):
    """(matmul FLOP/s, memory bandwidth B/s) measured now on this device."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn(256 << 20 if device.type == "cuda" else 128 << 20, device=device)  # 1 GiB / 512 MiB fp32
    flops, bw = [], []
    for _ in range(4):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        flops.append(2 * n ** 3 / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        bw.append(x.numel() * 4 / (time.perf_counter() - t0))
    return max(flops[1:]), max(bw[1:])
