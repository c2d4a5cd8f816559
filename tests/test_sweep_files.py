"""The 14 sweep files: every entry loads, the structure matches the reference, bad input is refused."""
import json
import subprocess
import sys

import pytest

import sweep
from conftest import ROOT, run_cli
from errors import ConfigError

SWEEPS = ROOT / "config" / "sweep"
KEYS = {"train_name", "test_name", "encoder", "decoder", "plan_only", "batch_size", "lr", "lr_schedule",
        "train_steps", "log_interval", "eval_interval", "num_train_sequences", "num_test_sequences",
        "min_reasoning_len", "max_reasoning_len", "start_checkpoint", "seed"}
MODELS = {"s": ("enc-s", "dec-s"), "m": ("enc-m-s", "dec-m-s"), "l": ("enc-l", "dec-l"), "xl": ("enc-xl-2", "dec-xl-2")}
MAZE = {  # file stem -> model, batch_size, lr
    "maze_sweep_rep_det_small": ("s", 8, 2.5e-4), "maze_sweep_rep_det_medium": ("m", 2, 7.5e-5),
    "maze_sweep_rep_det_large": ("l", 2, 5e-5), "maze_sweep_rep_nondet_small": ("s", 8, 2.5e-4),
    "maze_sweep_rep_nondet_medium": ("m", 2, 7.5e-5), "maze_sweep_rep_nondet_large": ("l", 2, 5e-5)}
SOKOBAN = {  # file stem -> model, plan_only, batch_size, train_steps, log_interval, eval_interval, lr
    "sokoban-7722-m-plan-only-100k": ("m", True, 8, 80000, 1000, 5000, 5e-5),
    "sokoban-7722-l-plan-only-100k": ("l", True, 8, 80000, 1000, 5000, 5e-5),
    "sokoban-7722-xl-plan-only-100k": ("xl", True, 2, 80000, 1000, 5000, 5e-5),
    "sokoban-7722-m-trace-plan-100k": ("m", False, 2, 80000, 1000, 5000, 7.5e-5),
    "sokoban-7722-l-trace-plan-100k": ("l", False, 1, 80000, 1000, 5000, 5e-5),
    **{f"sokoban-7722-m-trace-plan-100k-step-{k}": ("m", False, 1, 10000, 200, 5000, 7.5e-5) for k in (1, 2, 3)}}
SOKOBAN_DATA = "sokoban.7-by-7-walls-2-boxes-2"


def entries(stem):
    return json.loads((SWEEPS / f"{stem}.json").read_text())


def test_there_are_exactly_the_14_reference_files():
    assert sorted(p.stem for p in SWEEPS.glob("*.json")) == sorted([*MAZE, *SOKOBAN])


@pytest.mark.parametrize("stem", [*MAZE, *SOKOBAN])
def test_every_entry_loads(stem):
    path = SWEEPS / f"{stem}.json"
    for i, entry in enumerate(entries(stem)):
        assert set(entry) <= KEYS, (stem, i)
        cfg = sweep.load(str(path), i)
        assert cfg.seed == entry["seed"]


@pytest.mark.parametrize("stem", MAZE)
def test_maze_files_match_the_reference(stem):
    model, batch, lr = MAZE[stem]
    kind = "nondeterministic" if "nondet" in stem else "deterministic"
    es = entries(stem)
    assert len(es) == 120
    for i, e in enumerate(es):
        j = i % 24  # j = 12 * plan_only + 3 * k + m
        n = (10, 20, 30)[j % 3]
        assert {k: v for k, v in e.items() if k != "seed"} == {k: v for k, v in es[j].items() if k != "seed"}
        assert e["seed"] == i // 24  # the repetition
        assert e["plan_only"] == (j >= 12)
        assert e["num_train_sequences"] == (50000, 100000, 500000, 1000000)[j % 12 // 3]
        assert e["train_name"] == e["test_name"] == f"maze.{n}-by-{n}-{kind}.simple"
        assert (e["encoder"], e["decoder"]) == MODELS[model]
        assert (e["batch_size"], e["lr"], e["lr_schedule"]) == (batch, lr, "cosine")
        assert (e["train_steps"], e["log_interval"], e["eval_interval"]) == (400000, 1000, 40000)


@pytest.mark.parametrize("stem", SOKOBAN)
def test_sokoban_files_match_the_reference(stem):
    model, plan_only, batch, steps, log, evals, lr = SOKOBAN[stem]
    es = entries(stem)
    assert [e["seed"] for e in es] == [0, 1, 2]
    for s, e in enumerate(es):
        assert (e["encoder"], e["decoder"]) == MODELS[model]
        assert (e["plan_only"], e["batch_size"], e["train_steps"]) == (plan_only, batch, steps)
        assert (e["log_interval"], e["eval_interval"], e["lr"], e["lr_schedule"]) == (log, evals, lr, "cosine")
        assert (e["min_reasoning_len"], e["max_reasoning_len"]) == (0, 10000)
        assert (e["num_train_sequences"], e["num_test_sequences"]) == (100000, 1000)
        assert e["test_name"] == SOKOBAN_DATA
        if "-step-" not in stem:
            assert e["train_name"] == SOKOBAN_DATA and "start_checkpoint" not in e
            continue
        # step k of seed s fine-tunes run sokoban-7722-m-trace-plan-100k-{s}[-step-{k-1}] on its bootstrap set
        k = int(stem.rsplit("-", 1)[1])
        start = f"sokoban-7722-m-trace-plan-100k-{s}" + (f"-step-{k - 1}" if k > 1 else "")
        assert e["start_checkpoint"] == start
        assert e["train_name"] == f"bootstrap.{start}"


# each CLI call pays for importing torch: two files by default, the other twelve in the slow run
CLI_FAST = ("maze_sweep_rep_det_small", "sokoban-7722-m-trace-plan-100k-step-2")


def default_run_id(stem, index):
    """The run id the README's recipes use: <stem>-<index>, and <base>-<index>-step-<k> for step files."""
    base, _, k = stem.partition("-step-")
    return f"{base}-{index}-step-{k}" if k else f"{stem}-{index}"


@pytest.mark.parametrize("stem", [s if s in CLI_FAST else pytest.param(s, marks=pytest.mark.slow)
                                  for s in [*MAZE, *SOKOBAN]])
def test_cli_dry_run_for_one_entry_of_each_file(stem):
    """Without --run-id, the run is named for the file and the index."""
    index = len(entries(stem)) - 1
    r = run_cli("train.py", "sweep", "--index", index, "--sweep", SWEEPS / f"{stem}.json", "--dry-run")
    printed, entry = json.loads(r.stdout), entries(stem)[index]
    assert printed["run_id"] == default_run_id(stem, index)
    assert MODELS[printed["model_size"]] == (entry.pop("encoder"), entry.pop("decoder"))
    assert {k: printed[k] for k in entry} == entry


def test_run_id_overrides_the_default_name():
    r = run_cli("train.py", "sweep", "--run-id", "mine", "--index", 0, "--sweep", SWEEPS / f"{CLI_FAST[1]}.json",
                "--dry-run")
    assert json.loads(r.stdout)["run_id"] == "mine"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_each_step_file_starts_from_the_run_its_predecessor_file_names(k):
    """Launched without --run-id, step k's entry s finds the run (and its bootstrap dataset) that the
    previous file's entry s was given by default."""
    before = SWEEPS / ("sokoban-7722-m-trace-plan-100k.json" if k == 1 else f"sokoban-7722-m-trace-plan-100k-step-{k - 1}.json")
    for s in range(3):
        cfg = sweep.load(str(SWEEPS / f"sokoban-7722-m-trace-plan-100k-step-{k}.json"), s)
        assert cfg.start_checkpoint == sweep.run_id(before, s) == default_run_id(before.stem, s)
        assert cfg.train_name == f"bootstrap.{sweep.run_id(before, s)}"


GOOD = {"train_name": SOKOBAN_DATA, "batch_size": 2}
BAD = [  # file text, index, what the one-line error must name
    ("[{", 0, ["malformed JSON"]),
    (json.dumps({"train_name": "x"}), 0, ["JSON list of objects"]),
    (json.dumps([GOOD]), 1, ["index 1 out of range"]),
    (json.dumps([GOOD]), -1, ["index -1 out of range"]),
    (json.dumps([GOOD, {**GOOD, "bogus": 1}]), 1, ["[1]", "'bogus'"]),
    (json.dumps([{**GOOD, "batch_size": "8"}]), 0, ["[0]", "'batch_size'", "int"]),
    (json.dumps([{**GOOD, "plan_only": 1}]), 0, ["[0]", "'plan_only'", "bool"]),
    (json.dumps([{**GOOD, "lr": "1e-4"}]), 0, ["[0]", "'lr'", "float"]),
    (json.dumps([{**GOOD, "batch_size": 0}]), 0, ["[0]", "'batch_size'", "positive"]),
    (json.dumps([{**GOOD, "train_steps": -5}]), 0, ["[0]", "'train_steps'", "positive"]),
    (json.dumps([{**GOOD, "num_test_sequences": 0}]), 0, ["[0]", "'num_test_sequences'", "positive"]),
    (json.dumps([{**GOOD, "num_train_sequences": -1}]), 0, ["[0]", "'num_train_sequences'", "negative"]),
    (json.dumps([{**GOOD, "encoder": "enc-huge"}]), 0, ["[0]", "'encoder'", "enc-huge"]),
    (json.dumps([{**GOOD, "train_name": "bad name!"}]), 0, ["[0]", "bad name!"]),
]


@pytest.mark.parametrize("text,index,words", BAD)
def test_bad_sweep_input_is_refused_in_process(tmp_path, text, index, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        sweep.load(str(path), index)
    assert str(path) in str(e.value) and all(w in str(e.value) for w in words)


@pytest.mark.parametrize("cases", [(0, 4, 8), pytest.param(range(len(BAD)), marks=pytest.mark.slow)])
def test_bad_sweep_input_gives_one_line_cli_errors(tmp_path, cases):
    procs = []  # run at once; by default three kinds (the in-process test covers all)
    for k, (text, index, words) in enumerate(BAD[i] for i in cases):
        path = tmp_path / f"bad{k}.json"
        path.write_text(text)
        cmd = [sys.executable, "train.py", "sweep", "--run-id", "x", "--index", str(index), "--sweep", str(path),
               "--dry-run"]
        procs.append((path, words, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    text=True)))
    for path, words, proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and out == ""
        line = err.strip()
        assert "\n" not in line and line.startswith(f"error: {path}"), line
        assert all(w in line for w in words), line


def test_missing_sweep_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="none.json: cannot read sweep file"):
        sweep.load(str(tmp_path / "none.json"), 0)
