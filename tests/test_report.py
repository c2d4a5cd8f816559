"""report.py: each plot rendered from a tiny trained and evaluated run is a valid, non-trivial PNG;
bad input gets a one-line error and writes nothing."""
import matplotlib.image
import numpy as np
import pytest

import dataset as data
import report
import rollouts
from eval import response_key, store_responses
from conftest import call, run_cli

MAZE = "maze.10-by-10-deterministic.simple"
TRAIN = ["--train-name", MAZE, "--model-size", "tiny", "--warmup-steps", "2", "--lr", "1e-3", "--log-interval", "2",
         "--eval-interval", "4", "--checkpoint-interval", "4", "--num-test-sequences", "8", "--batch-size", "4",
         "--train-steps", "8"]


def assert_real_png(path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    pixels = matplotlib.image.imread(path)  # rows x columns x RGBA in [0, 1]
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 20  # lines, bars, text in several colours


@pytest.fixture
def evaluated(store):
    """A tiny model trained 8 steps on 10x10 mazes and evaluated on 4 test tasks, two of which hold a
    planted A* response (as if the model had sampled it: optimal, with A*'s trace length)."""
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "8", "--chunk", "2", "--workers", "1")
    run_cli("train.py", "single", "--run-id", "tiny", *TRAIN)
    test = data.load_split(store.db, MAZE, "test")
    key = response_key("tiny", 8, data.get_dataset(store.db, MAZE), "test", rollouts.Opts(temperature=1.0, max_tokens=150))
    planted = [((row, 0), np.concatenate([test.get(row, "trace"), test.get(row, "plan")]), True) for row in (0, 3)]
    store_responses(store.db, key, test, planted)
    run_cli("eval.py", "--run-id", "tiny", "--num-tasks", "4", "--samples", "2", "--max-tokens", "150")
    return test


def test_each_plot_is_a_valid_non_trivial_png(store, evaluated, tmp_path):
    res = store.results.find_one({"run_id": "tiny"})
    assert sorted(res["optimal_trace_lens"]) == sorted(int(evaluated.lens["trace"][r]) for r in (0, 3))
    assert res["metrics"]["optimal_pct"] == 50.0
    for argv in (["loss", "--run-id", "tiny"],
                 ["traces", "--dataset", MAZE, "--run-id", "tiny"],
                 ["metrics", "--run-id", "tiny"]):
        out = tmp_path / f"{argv[0]}.png"
        code, stdout, err = call(report.main, *argv, "--out", out)
        assert code == 0, err
        assert f"wrote {out}" in stdout
        assert_real_png(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("argv, msg", [
    (["loss", "--run-id", "nope"], "no run with id 'nope'"),
    (["metrics", "--run-id", "bare"], "run 'bare' has no evaluation on the test split"),
    (["traces", "--run-id", "bare"], "run 'bare' has no evaluation on the test split"),
    (["loss", "--run-id", "bare"], "run 'bare' has no logs yet"),
    (["traces", "--dataset", "nope"], "dataset 'nope' does not exist"),
    (["traces"], "nothing to plot"),
    (["traces", "--dataset", "nope", "--first", "-1"], "--first must not be negative"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/missing/plot.png"], "missing does not exist"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/file.txt/plot.png"], "file.txt is not a folder"),
    (["loss", "--run-id", "bare", "--out", "{tmp}/plot.jpg"], "must name a .png file"),
])
def test_bad_input_gives_one_line_errors_and_writes_nothing(store, tmp_path, argv, msg):
    store.runs.insert_one({"_id": "bare", "config": {}, "status": "running", "step": 0, "lease": None, "error": None})
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    (tmp_path / "file.txt").write_text("x")
    if "--out" not in argv:
        argv = argv + ["--out", "{tmp}/plot.png"]
    code, _, err = call(report.main, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1 and msg in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
