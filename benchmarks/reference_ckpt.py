"""Importing and exporting a reference checkpoint of a given size (bench.py --sections refckpt): a file
of the reference's layout (random weights and AdamW moments, the reference's RoPE tables) is written
by one process, then `admin.py import-checkpoint` and `admin.py export-checkpoint --format reference`
each run in a fresh process of their own on the embedded database (a fresh data folder, stopped
afterwards), which measures its wall time and peak resident memory (sampled, /proc/self/statm; file
pages of the mmapped checkpoint it touched count too; the database server's memory does not).

  python bench.py --sections refckpt --refckpt-size l   (enc-l/dec-l: ~175M values, ~2.1 GB with AdamW state)
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import server
from benchmarks.measure import gib, table

ROOT = Path(__file__).resolve().parent.parent

BUILD = """
import sys, torch
sys.path.insert(0, {root!r})
import encdec, reference_checkpoint as rc
size, vocab, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcfg = encdec.EncDecConfig.from_size(size, vocab)
shapes, tables = rc.reference_shapes(rcfg), {{p: rc.rope_table(rcfg, p) for p in ("encoder", "decoder")}}
model = {{}}
for k in encdec.reference_state_keys(rcfg):
    cos, sin = tables[k.split(".")[0]]
    model[rc.PREFIX + k] = (cos if k.endswith("cos_param") else sin) if ".rope." in k else 0.02 * torch.randn(shapes[k])
order = encdec.reference_param_order(rcfg)
state = {{j: {{"step": torch.tensor(1000.0), "exp_avg": 1e-3 * torch.randn(shapes[k]), "exp_avg_sq": torch.rand(shapes[k])}}
         for j, k in enumerate(order) if ".rope." not in k}}
group = {{"lr": 1e-5, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.01, **rc.GROUP, "initial_lr": 1e-4,
          "params": list(range(len(order)))}}
train = rc.TrainConfig(train_name="bench.ref", arch="encdec", model_size=size)
config = rc.reference_config(train, "bench-ref")
torch.save({{"checkpoint_id": "bench-ref", "step": 1000, "config": config, "model": model,
             "optimizer": {{"state": state, "param_groups": [group]}}}}, path)
print(sum(t.numel() for t in {{id(t): t for t in model.values()}}.values()))
"""

MEASURE = """
import json, sys, time
sys.path.insert(0, {root!r})
from benchmarks.measure import PeakRSS
import admin
with PeakRSS() as m:
    t = time.perf_counter()
    admin.main(json.loads(sys.argv[1]))
    seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "peak": m.peak, "extra": m.extra}}))
"""


def child(code, *argv, env):
    r = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT)), *argv], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"refckpt: a step failed: {(r.stderr or r.stdout).strip()[-500:]}")
    return r.stdout.strip().splitlines()


def bench_reference_ckpt(args):
    tmp = Path(tempfile.mkdtemp(prefix="refckpt-"))
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}  # the embedded database
    env.update(SEARCHFORMER_DB_DIR=str(tmp / "db"), SEARCHFORMER_CACHE_DIR=str(tmp / "cache"))
    vocab = tmp / "vocabulary.json"
    vocab.write_text(json.dumps([f"t{i}" for i in range(args.refckpt_vocab - 2)]))
    path = tmp / "bench-ref.ckpt"
    try:
        values = int(child(BUILD, args.refckpt_size, str(args.refckpt_vocab), str(path), env=env)[-1])
        rows = []
        for what, argv in (("import", ["import-checkpoint", "--filename", str(path), "--vocabulary", str(vocab)]),
                           ("export", ["export-checkpoint", "--run-id", "bench-ref", "--format", "reference",
                                       "--export-dir", str(tmp / "out")])):
            m = json.loads(child(MEASURE, json.dumps(argv), env=env)[-1])
            rows.append([what, f"{m['seconds']:.1f}", gib(m["peak"]), gib(m["extra"])])
        size = path.stat().st_size
        print(f"\nreference checkpoint {args.refckpt_size} ({values / 1e6:.1f}M values with RoPE tables), file "
              f"{gib(size)} GiB, embedded database")
        table(["step", "seconds", "peak RSS GiB", "above start GiB"], rows)
    finally:
        server.stop_embedded(tmp / "db")
        shutil.rmtree(tmp, ignore_errors=True)
