"""Model selection (--patience): the best checkpoint, the stop, the selection metric on validation tasks
alone (never a reported task), validation by samples as eval.py reports, starting from the best."""
import os
import signal
import subprocess
import sys

import torch

import dataset
import report
from checkpoint_store import load_checkpoint
from conftest import FAST, ROOT, adam_steps, assert_same_weights, losses, make_toy_dataset, run_cli, weights
from hparams import TrainConfig


# --- model selection: --patience and the best checkpoint ----------------------------------------

# a constant, high learning rate: the test loss goes up and down, so patience 2 stops the run early
PATIENT = [*FAST, "--eval-interval", "5", "--lr", "3e-2", "--lr-schedule", "constant", "--train-steps", "80",
           "--patience", "2", "--seed", "0", "--eval-tasks", "8"]


def stop_by_the_rule(test_losses, patience):
    """(stop step, best step) from a run's validation plan losses (a synthetic dataset has no rollouts) by
    the selection rule, worked out here."""
    best, stale = None, 0
    for step, loss in test_losses:
        best, stale = ((step, loss), 0) if best is None or loss < best[1] else (best, stale + 1)
        if stale >= patience:
            return step, best[0]
    return None, best[0]


def test_patience_stops_at_the_rule_and_a_resumed_run_stops_at_the_same_step(store, pauses):
    """A run with --patience stops after that many evaluations without a lower test loss, keeps the best
    checkpoint beside the latest and records both; one killed after saving a best that its latest
    checkpoint does not know yet, and relaunched, points back at the earlier best, then stops at the
    same step with the same best as an uninterrupted one. Every step here comes from the uninterrupted
    run's own test losses (floating point may give another trajectory on another CPU)."""
    make_toy_dataset(store.db)
    r = run_cli("train.py", "single", "--run-id", "straight", *PATIENT)
    tests = [(r["step"], r["val_plan_loss"]) for r in store.get_logs("straight", "test")]
    stop, best = stop_by_the_rule(tests, 2)
    assert stop is not None and stop < 80, tests  # it did stop early, where the rule says
    assert stop == best + 2 * 5  # patience 2: two evaluations (every 5 steps) after the best
    run = store.get_run("straight")
    assert run["status"] == "finished" and run["step"] == stop and run["checkpoint"]["step"] == stop
    assert run["stopped_early"] == {"step": stop, "best_step": best} and run["best"]["step"] == best
    assert f"stopped early at step {stop}: 2 evaluations in a row without improvement; best checkpoint: step {best}" \
        in r.stdout
    assert f"finished straight at step {stop};" in r.stdout  # the step it stopped at, not train_steps
    ck = load_checkpoint(store, "straight", which="best")
    assert ck["step"] == best and ck["selection"] == {"best": {"step": best, "plan_loss": dict(tests)[best],
                                                               "optimal_pct": None, "correct_pct": None}, "stale": 0}
    files = list(store.db["checkpoints.files"].find({"metadata.run_id": "straight"}))
    assert sorted(f["_id"] for f in files) == sorted([run["checkpoint"]["id"], run["best"]["id"]])

    # killed right after an evaluation, before the run stops; where the trajectory has one, after a new
    # best between two checkpoints (every 10 steps), which the latest checkpoint does not record yet
    best_at = lambda step: stop_by_the_rule([t for t in tests if t[0] <= step], 2)[1]  # noqa: E731
    steps = [n for n, _ in tests if 10 <= n < stop]
    kill = next((n for n in steps if n % 10 == 5 and best_at(n) == n), steps[0])
    latest = kill // 10 * 10
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "killed", *PATIENT], cwd=ROOT,
                            stdout=subprocess.DEVNULL, env={**os.environ, **pauses.env(f"step-{kill}")})
    pauses.wait(f"step-{kill}", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = store.get_run("killed")
    assert killed["checkpoint"]["step"] == latest and killed["best"]["step"] == best_at(kill)
    store.runs.update_one({"_id": "killed"}, {"$set": {"lease.expires": 0}})
    relaunch = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "killed", *PATIENT], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, **pauses.env(f"step-{latest + 1}")})
    pauses.wait(f"step-{latest + 1}", relaunch)
    assert store.get_run("killed")["best"]["step"] == best_at(latest)  # what its latest checkpoint recorded
    pauses.release(f"step-{latest + 1}")
    out, _ = relaunch.communicate(timeout=300)
    assert relaunch.returncode == 0 and f"resuming killed from step {latest}" in out
    killed = store.get_run("killed")
    assert killed["status"] == "finished" and killed["stopped_early"] == run["stopped_early"]
    assert killed["best"]["step"] == best and killed["best"]["metrics"] == run["best"]["metrics"]
    assert_same_weights(load_checkpoint(store, "straight", which="best")["model"],
                        load_checkpoint(store, "killed", which="best")["model"])
    assert_same_weights(weights(store, "straight"), weights(store, "killed"))
    assert losses(store, "straight") == losses(store, "killed")
    files = list(store.db["checkpoints.files"].find({"metadata.run_id": "killed"}))
    assert len(files) == 2  # the killed process's best and the superseded ones are gone
    # relaunching a run that stopped early trains no further
    again = run_cli("train.py", "single", "--run-id", "killed", *PATIENT).stdout
    assert f"resuming killed from step {stop}" in again and "stopped early" in again and f"step {stop + 5}" not in again
    assert store.get_run("killed")["checkpoint"]["step"] == stop


def test_extending_a_run_that_patience_stopped_is_refused_and_changes_nothing(store):
    """Raising --train-steps of a run that --patience stopped would only stop it again at once: refused
    in one line, its stored train_steps and status as they were."""
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "p", *PATIENT)
    before = store.get_run("p")
    assert before["stopped_early"] and before["step"] < 80
    r = run_cli("train.py", "single", "--run-id", "p", *PATIENT, "--train-steps", "200", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"error: run 'p' was stopped early by --patience at step {before['step']}" in r.stderr
    assert "--start-checkpoint p --start-from best" in r.stderr and "raise --patience" in r.stderr
    assert "extending" not in r.stdout
    lowered = run_cli("train.py", "single", "--run-id", "p", *PATIENT, "--patience", "1", check=False)
    assert lowered.returncode == 1 and "patience: 2 -> 1" in lowered.stderr, lowered.stderr
    assert "only --train-steps and --patience may change, raised" in lowered.stderr
    after = store.get_run("p")
    assert after["config"] == before["config"] and after["status"] == "finished" and after["step"] == before["step"]


def test_raising_the_patience_of_a_stopped_run_or_its_copy_trains_on_as_a_run_launched_with_it(store):
    """A run that --patience 2 stopped, relaunched with --patience 4, goes on from its stop and ends as
    one launched with --patience 4 from the start: the same stop, best checkpoint, weights and logged
    losses (resumes are exact), its stored config the new one. So does its copy (admin.py copy-run),
    made before, which leaves the original as it was."""
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "short", *PATIENT)
    first = store.get_run("short")
    assert first["stopped_early"] is not None
    run_cli("train.py", "single", "--run-id", "long", *PATIENT, "--patience", "4")
    long = store.get_run("long")
    assert long["step"] > first["step"] or first["step"] == 80  # patience 4 waited past patience 2's stop
    run_cli("admin.py", "copy-run", "--run-id", "short", "--to", "copy")
    copy = store.get_run("copy")
    for key in ("config", "step", "status", "stopped_early", "world_size", "last"):
        assert copy[key] == first[key], key
    assert copy["copied_from"]["run_id"] == "short" and copy["best"]["metrics"] == first["best"]["metrics"]
    wall = (first["updated"] - first["created"]).total_seconds()
    assert copy["copied_from"]["wall_s"] == wall and report.run_facts(store, copy, copy["step"])["wall_s"] >= wall
    assert losses(store, "copy") == losses(store, "short")
    for which in ("latest", "best"):
        a, b = load_checkpoint(store, "short", which=which), load_checkpoint(store, "copy", which=which)
        assert a["step"] == b["step"] and b["run_id"] == "copy"
        assert_same_weights(a["model"], b["model"])
    for rid in ("copy", "short"):
        r = run_cli("train.py", "single", "--run-id", rid, *PATIENT, "--patience", "4")
        assert f"resuming {rid} from step {first['step']}" in r.stdout
        assert "patience raised from 2 to 4 evaluations; 2 so far without improvement" in r.stdout
        run = store.get_run(rid)
        assert run["config"] == long["config"]
        assert run["step"] == long["step"] and run.get("stopped_early") == long.get("stopped_early")
        assert run["best"]["step"] == long["best"]["step"] and run["best"]["metrics"] == long["best"]["metrics"]
        assert losses(store, rid) == losses(store, "long")
        assert_same_weights(weights(store, rid), weights(store, "long"))
        assert_same_weights(load_checkpoint(store, rid, which="best")["model"],
                            load_checkpoint(store, "long", which="best")["model"])
        if rid == "copy":  # the original untouched by its copy's training
            assert store.get_run("short")["step"] == first["step"] and losses(store, "short") != losses(store, "copy")


def test_the_selection_metric_is_the_validation_optimal_then_correct_rate_then_plan_loss():
    import train
    t = train.Training.__new__(train.Training)
    t.selection = {"best": None, "stale": 0}
    for step, optimal, correct, loss, new_best in [
            (5, 10.0, 10.0, 2.0, True), (10, 20.0, 20.0, 2.5, True),  # a higher optimal rate wins
            (15, 20.0, 20.0, 2.6, False), (20, 10.0, 50.0, 1.0, False),  # not a higher loss, nor a lower rate
            (25, 20.0, 30.0, 2.9, True), (30, 20.0, 30.0, 2.4, True)]:  # then the correct rate, then the loss
        t.step = step
        m = {"loss": 0.0, "val_plan_loss": loss, "rollout_optimal_pct": optimal, "rollout_correct_pct": correct}
        assert t.select(m) == new_best
    assert t.selection == {"best": {"step": 30, "optimal_pct": 20.0, "correct_pct": 30.0, "plan_loss": 2.4},
                           "stale": 0}
    # no rollouts (a synthetic dataset): the validation plan loss alone; the test loss is never read
    t.selection, t.step = {"best": {"step": 5, "plan_loss": 2.0, "optimal_pct": None, "correct_pct": None},
                           "stale": 0}, 10
    assert not t.select({"loss": 0.1, "val_plan_loss": 2.0}) and t.selection["stale"] == 1
    t.step = 15
    assert t.select({"loss": 9.0, "val_plan_loss": 1.9}) and t.selection["stale"] == 0


def test_a_run_stored_before_patience_existed_resumes(store):
    """A stored config without the patience key (made before it existed) gains it with 0 on relaunch."""
    make_toy_dataset(store.db)
    args = ["train.py", "single", "--run-id", "pre", *FAST, "--train-steps", "5"]
    run_cli(*args)
    store.runs.update_one({"_id": "pre"}, {"$unset": {"config.patience": ""}})
    r = run_cli(*args)
    assert "resuming pre from step 5" in r.stdout and store.get_run("pre")["config"]["patience"] == 0


def test_start_from_best_takes_the_best_checkpoint_of_a_patient_run(store):
    """--start-from best initialises from the start run's best checkpoint (bootstrapping from a model
    trained to its best), not its latest; a start run without a best one is refused in one line."""
    make_toy_dataset(store.db)
    run_cli("train.py", "single", "--run-id", "patient", *PATIENT)
    best = load_checkpoint(store, "patient", which="best")["step"]
    assert best < store.get_run("patient")["step"]  # the best is not the latest
    r = run_cli("train.py", "single", "--run-id", "from-best", *FAST, "--train-steps", "5", "--start-checkpoint", "patient",
                "--start-from", "best")
    assert f"initialised from patient (best checkpoint, step {best}): weights and optimizer state" in r.stdout
    assert adam_steps(load_checkpoint(store, "from-best")) == {best + 5.0}  # the best's AdamW moments, carried on
    run_cli("train.py", "single", "--run-id", "base", *FAST, "--train-steps", "5")
    r = run_cli("train.py", "single", "--run-id", "orphan", *FAST, "--train-steps", "5", "--start-checkpoint", "base",
                "--start-from", "best", check=False)
    assert r.returncode == 1 and r.stderr.strip() == ("error: start_checkpoint run 'base' has no best checkpoint (it trained "
                                                      "without --patience)")
    assert store.get_run("orphan") is None
    r = run_cli("train.py", "single", "--run-id", "orphan", *FAST, "--start-from", "worst", check=False)
    assert r.returncode == 1 and "start_from" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def with_other_reported_tasks(db, name, new_name, reported):
    """new_name: name's training split, and its test split with the first `reported` tasks replaced by
    other tasks (training tasks), the rest (the validation tasks among them) as they are."""
    doc = dataset.get_dataset(db, name)
    train, test = dataset.load_split(db, name, "train"), dataset.load_split(db, name, "test")
    w = dataset.DatasetWriter(db, new_name, doc["task"], {**doc["params"], "other_reported": reported},
                              doc["vocabulary"][len(dataset.SPECIALS):])
    dataset.copy_split(w, "train", train)
    for split, r in [(train, r) for r in range(reported)] + [(test, r) for r in range(reported, len(test.ids))]:
        assert w.add("test", *(split.get(r, p) for p in dataset.PARTS), dataset.sequence_key("test", split, r))
    w.commit()


def test_changing_the_reported_tasks_cannot_change_the_selected_checkpoint(store):
    """Selection (--patience) reads the validation tasks alone: two runs whose test splits differ only in
    the tasks results are reported on (the split's first ones) log different test losses, but select the
    same checkpoints by the same figures, and stop at the same step."""
    run_cli("data.py", "maze", "--size", "5", "--num-train", "60", "--num-test", "40", "--chunk", "2", "--workers", "1")
    maze = "maze.5-by-5-deterministic.simple"
    with_other_reported_tasks(store.db, maze, "maze.other", 20)
    common = ["--train-name", maze, "--model-size", "tiny", "--warmup-steps", "2", "--lr", "1e-2", "--log-interval", "5",
              "--eval-interval", "5", "--checkpoint-interval", "5", "--num-test-sequences", "16", "--batch-size", "8",
              "--train-steps", "40", "--eval-tasks", "10", "--patience", "3"]
    run_cli("train.py", "single", "--run-id", "a", *common)
    run_cli("train.py", "single", "--run-id", "b", *common, "--test-name", "maze.other")
    a, b = store.get_logs("a", "test"), store.get_logs("b", "test")
    assert [r["loss"] for r in a] != [r["loss"] for r in b]  # the reported tasks did change what is logged
    assert [{k: v for k, v in r.items() if k.startswith(("val_", "rollout_"))} for r in a] == \
        [{k: v for k, v in r.items() if k.startswith(("val_", "rollout_"))} for r in b]
    ra, rb = store.get_run("a"), store.get_run("b")
    assert ra["best"]["step"] == rb["best"]["step"] and ra["best"]["metrics"] == rb["best"]["metrics"]
    assert ra["step"] == rb["step"] and ra.get("stopped_early") == rb.get("stopped_early")
    assert load_checkpoint(store, "a", which="best")["selection"] == load_checkpoint(store, "b", which="best")["selection"]


def test_validation_by_samples_scores_each_task_as_eval_reports(store):
    """--eval-samples K: every validation task gets K samples at temperature 1 and counts as solved when
    any is (eval.py's rule); the streams are fixed, so the same weights always score the same, and the
    first sample of K is the one a single-sample evaluation draws (so K can only solve more)."""
    import rollouts
    from checkpoint import build
    run_cli("data.py", "maze", "--size", "5", "--num-train", "40", "--num-test", "12", "--chunk", "2", "--workers", "1")
    maze = "maze.5-by-5-deterministic.simple"
    r = run_cli("train.py", "single", "--run-id", "k", "--train-name", maze, "--model-size", "tiny", "--train-steps", "4",
                "--batch-size", "4", "--eval-interval", "4", "--num-test-sequences", "4", "--eval-tasks", "4",
                "--eval-samples", "3", "--patience", "2")
    log = store.get_logs("k", "test")[-1]
    assert log["rollout_tasks"] == 4 and log["rollout_responses"] == 12 and "of 4 tasks x 3 samples" in r.stdout
    cfg = TrainConfig.from_dict({**store.get_run("k")["config"]})
    model = build(cfg, len(dataset.get_dataset(store.db, maze)["vocabulary"]), torch.device("cpu"))[0]
    model.load_state_dict(load_checkpoint(store, "k")["model"])
    go = lambda c: rollouts.rollout_metrics(model, store, c, 0, 1, torch.device("cpu"), True)  # noqa: E731
    assert go(cfg) == go(cfg)
    one = TrainConfig.from_dict({**cfg.to_dict(), "eval_samples": 1})
    assert go(one)["responses"] == 4 and go(cfg)["optimal_pct"] >= go(one)["optimal_pct"]
    assert go(cfg)["correct_pct"] >= go(one)["correct_pct"] and go(cfg)["malformed_pct"] <= 100
