"""Hostile and bad input: checkpoint files that run code or are broken, names that are not names,
malformed sweep files, URIs with passwords, an unreachable database. Each is refused with one line
on stderr, runs nothing and writes nothing."""
import dataclasses
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import time
import zipfile

import bson
import pymongo
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import admin
import data
import eval as evaluate
import sweep
import train
from checkpoint_store import load_checkpoint
from conftest import (ROOT, call, checkpoint_state, make_checkpoint, make_toy_dataset, run_cli, snapshot, start_server,
                      stop_server)
from errors import ConfigError
from hparams import TrainConfig
from store import NAME_MAX, check_name, connect, redact


def one_line_error(code, err, *words):
    lines = err.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), (words, err)
    assert "Traceback" not in err


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


# ---------------------------------------------------------------------------------------------
# checkpoint files


class Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def exported(store, tmp_path):
    """A real exported checkpoint file, and a place for marker files."""
    make_checkpoint(store, "good")
    assert call(admin.main, "export-checkpoint", "--run-id", "good", "--export-dir", tmp_path)[0] == 0
    return tmp_path / "good.pt"


def malicious_files(folder, good):
    marker = folder / "pwned"
    ck = torch.load(good, weights_only=True)
    files = {}
    torch.save(Payload(marker), files.setdefault("top-level", folder / "evil1.pt"))
    torch.save({**ck, "config": Payload(marker)}, files.setdefault("inside a checkpoint", folder / "evil2.pt"))
    torch.save({**ck, "step": Payload(marker)}, files.setdefault("legacy format", folder / "evil3.pt"),
               _use_new_zipfile_serialization=False)
    (files.setdefault("plain pickle", folder / "evil4.pt")).write_bytes(pickle.dumps(Payload(marker)))
    return marker, files


def test_checkpoint_that_would_run_code_is_refused_without_running_it(store, exported, tmp_path):
    marker, files = malicious_files(tmp_path, exported)
    before = snapshot(store.db)
    for kind, path in files.items():
        code, out, err = call(admin.main, "import-checkpoint", "--filename", path, "--run-id", "evil")
        one_line_error(code, err, str(path))
        assert not marker.exists(), kind
        assert kind != "top-level" or "objects other than tensors and plain data" in err, err
        assert "weights only" not in err.lower() and "unpickl" not in err.lower(), err  # not torch's words
    assert snapshot(store.db) == before
    r = run_cli("admin.py", "import-checkpoint", "--filename", files["inside a checkpoint"], check=False)
    one_line_error(r.returncode, r.stderr, "not a valid checkpoint file")
    assert not marker.exists() and snapshot(store.db) == before
    # a tampered store: the payload planted as a run's checkpoint is refused when training or evaluating loads it
    store.runs.update_one({"_id": "good"}, {"$set": {"checkpoint.id": store.fs.upload_from_stream(
        "good/10", files["inside a checkpoint"].read_bytes(), metadata={"run_id": "good", "step": 10})}})
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(store, "good")
    assert not marker.exists()


def broken_files(folder, good):
    whole = good.read_bytes()
    ck = torch.load(good, weights_only=True)
    files = {}

    def save(name, obj):
        torch.save(obj, files.setdefault(name, folder / f"{name.replace(' ', '-')}.pt"))

    def write(name, content):
        (files.setdefault(name, folder / f"{name.replace(' ', '-')}.pt")).write_bytes(content)

    write("empty", b"")
    write("truncated half", whole[:len(whole) // 2])
    write("truncated head", whole[:100])
    write("last byte missing", whole[:-1])
    write("text", b"these are not the weights you are looking for\n")
    write("json", json.dumps({"model": {}, "step": 1}).encode())
    write("random bytes", os.urandom(5000))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.pkl", b"not a pickle")
    write("foreign zip", buf.getvalue())
    save("a tensor", torch.zeros(3))
    save("missing keys", {"model": ck["model"], "step": 3})
    save("wrong shapes", {**ck, "model": {k: torch.zeros(2) for k in ck["model"]}})
    save("unknown hyper-parameter", {**ck, "config": {**ck["config"], "bogus": 1}})
    save("negative step", {**ck, "step": -1})
    save("bad run id inside", {**ck, "run_id": "$where"})
    return files


def test_broken_checkpoint_files_are_refused_with_one_line(store, exported, tmp_path):
    files = broken_files(tmp_path, exported)
    before = snapshot(store.db)
    for kind, path in [*files.items(), ("directory", tmp_path), ("missing", tmp_path / "nope.pt")]:
        code, out, err = call(admin.main, "import-checkpoint", "--filename", path)
        one_line_error(code, err)
        assert snapshot(store.db) == before, kind
    r = run_cli("admin.py", "import-checkpoint", "--filename", files["truncated half"], check=False)
    one_line_error(r.returncode, r.stderr, "not a valid checkpoint file")
    assert snapshot(store.db) == before
    for kind in ("empty", "truncated head", "text", "json", "random bytes", "foreign zip"):  # said in our words
        code, out, err = call(admin.main, "import-checkpoint", "--filename", files[kind])
        one_line_error(code, err, "not a whole file written by `python admin.py export-checkpoint`")
        said = err.split(f"{files[kind]}: ", 1)[1].lower()
        assert not any(w in said for w in ("pytorchstreamreader", "load key", "zip", "pickle", "eof")), err
    # the good one goes in
    assert call(admin.main, "import-checkpoint", "--filename", exported, "--run-id", "copy")[0] == 0


def test_checkpoint_files_that_would_crash_a_resume_are_refused(store, exported, tmp_path):
    """Everything a resume reads is checked at import, as the resume reads it."""
    ck = torch.load(exported, weights_only=True)
    opt = ck["optimizer"]
    state = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}}
    bad = {"without rng": {k: v for k, v in ck.items() if k != "rng"},
           "without log_sums": {k: v for k, v in ck.items() if k != "log_sums"},
           "data position without index": {**ck, "data": {"epoch": 0}},
           "data position of strings": {**ck, "data": {"epoch": "0", "index": 1}},
           "rng state that is no state": {**ck, "rng": {"cpu": torch.zeros(7, dtype=torch.uint8)}},
           "rng state as a string": {**ck, "rng": {"cpu": "seed"}},
           "optimizer state of another shape": {**ck, "optimizer": {**opt, "state": state}},
           "optimizer without a parameter group": {**ck, "optimizer": {**opt, "param_groups": opt["param_groups"][:1]}},
           "log sums of another shape": {**ck, "log_sums": torch.zeros(3, dtype=torch.float64)},
           "scheduler behind the step": {**ck, "scheduler": {**ck["scheduler"], "last_epoch": 3}},
           "model_config of another size": {**ck, "model_config": {**ck["model_config"], "n_layer": 1}},
           "world size zero": {**ck, "world_size": 0},
           "selection without its count": {**ck, "selection": {"best": None}},
           "best after the step": {**ck, "selection": {"best": {"step": ck["step"] + 1, "loss": 1.0, "optimal_pct": None},
                                                       "stale": 0}},
           "best loss as a string": {**ck, "selection": {"best": {"step": 1, "loss": "1", "optimal_pct": None},
                                                         "stale": 0}}}
    before = snapshot(store.db)
    for kind, content in bad.items():
        path = tmp_path / f"{kind.replace(' ', '-')}.pt"
        torch.save(content, path)
        code, out, err = call(admin.main, "import-checkpoint", "--filename", path, "--run-id", "resumable")
        one_line_error(code, err, str(path))
        assert snapshot(store.db) == before, kind


# ---------------------------------------------------------------------------------------------
# names

BAD_NAMES = ["$where", "a$b", ".lead", "trail.", "a..b", "..", ".", "a/b", "../../etc/passwd", "a b", " lead", "tab\there",
             "new\nline", "ünïcödé", "名前", "x" * 121, "x" * 500, "", "a\x00b", "{}", "a;b", "a*b", "run\\id",
             "maze..10-by-10", "maze.10-by-10-deterministic.simple.", "-lead", "--help"]
GOOD_NAMES = ["maze.10-by-10-deterministic.simple", "sokoban.7-by-7-walls-2-boxes-2", "run_1", "a", "x" * 120,
              "A-b_c.d-e"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_rejects(name):
    with pytest.raises(ConfigError, match="invalid run id") as e:
        check_name(name)
    assert "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_name_accepts(name):
    assert check_name(name) == name


@settings(max_examples=300, deadline=None)
@given(hs.one_of(hs.text(), hs.text(alphabet="ab.-_$/ \n"), hs.binary(), hs.integers(), hs.none(), hs.lists(hs.text())))
def test_check_name_accepts_only_safe_names(value):
    try:
        check_name(value)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 300
        return
    assert isinstance(value, str) and 0 < len(value) <= NAME_MAX and value.isascii()
    assert not set(value) & set("$/\\ \t\n\x00*;{}") and ".." not in value
    assert not value.startswith(".") and not value.endswith(".")


@pytest.fixture
def no_database(monkeypatch):
    """MONGODB_URI at a closed port, and any attempt to make a client fails the test."""
    monkeypatch.setenv("MONGODB_URI", f"mongodb://127.0.0.1:{closed_port()}/x")

    def refuse(*a, **k):
        raise AssertionError("a database client was created before the name was checked")
    monkeypatch.setattr(pymongo, "MongoClient", refuse)


def commands_with(name, tmp_path):
    """Every command that takes a run id or dataset name, with that name in its place."""
    good = tmp_path / "sweep.json"
    good.write_text(json.dumps([{"train_name": "toy.copy"}]))
    bad = tmp_path / "bad-sweep.json"
    bad.write_text(json.dumps([{"train_name": name}]))
    ck = tmp_path / "x.pt"
    pos = ["--", name] if name.startswith("-") else [name]  # else argparse reads it as an option
    optional = [] if name == "" else [  # for these, empty means none
        (train.main, ["single", "--run-id", "ok", f"--test-name={name}"]),
        (train.main, ["single", "--run-id", "ok", f"--start-checkpoint={name}"]),
        (admin.main, ["import-checkpoint", "--filename", ck, f"--run-id={name}"])]
    return optional + [
        (train.main, ["single", f"--run-id={name}"]),
        (train.main, ["single", "--run-id", "ok", f"--train-name={name}"]),
        (train.main, ["sweep", f"--run-id={name}", "--sweep", good, "--index", "0"]),
        (train.main, ["sweep", "--run-id", "ok", "--sweep", bad, "--index", "0"]),
        (admin.main, ["show", f"--run-id={name}"]),
        (admin.main, ["drop-run", f"--run-id={name}"]),
        (admin.main, ["bulk-drop-run", "--run-id", "ok", f"--run-id={name}"]),
        (admin.main, ["export-checkpoint", f"--run-id={name}", "--export-dir", tmp_path]),
        (admin.main, ["bulk-export-checkpoint", "--export-dir", tmp_path, f"--run-id={name}"]),
        (data.main, ["show", *pos]),
        (data.main, ["drop", *pos]),
        (data.main, ["astar-stats", *pos]),
        (data.main, ["import", "--from-uri", "mongodb://127.0.0.1:1", f"--name={name}"]),
    ]


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if "\x00" not in n])
def test_every_command_rejects_bad_names_before_any_database_call(name, no_database, tmp_path):
    torch.save(checkpoint_state("x"), tmp_path / "x.pt")
    for main, argv in commands_with(name, tmp_path):
        code, out, err = call(main, *argv)
        one_line_error(code, err, "invalid")
        assert "cannot reach" not in err, (argv, err)


def test_command_line_rejects_bad_names_before_connecting(tmp_path):
    """The same through real processes: the validation error comes first, before any connection attempt."""
    env = {"MONGODB_URI": f"mongodb://127.0.0.1:{closed_port()}/x"}
    procs = [subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env={**os.environ, **env}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cmd in (
        ["train.py", "single", "--run-id", "ok", "--train-name", "a..b"], ["admin.py", "show", "--run-id", "../../x"],
        ["data.py", "drop", "ünï"])]
    for p in procs:
        out, err = p.communicate(timeout=120)
        one_line_error(p.returncode, err, "invalid")
        assert "cannot reach" not in err


# ---------------------------------------------------------------------------------------------
# sweep files

json_values = hs.recursive(hs.none() | hs.booleans() | hs.integers() | hs.integers(min_value=2**62) |
                           hs.floats(allow_nan=True, allow_infinity=True) | hs.text(max_size=30),
                           lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=10), inner, max_size=4),
                           max_leaves=10)
known_keys = hs.sampled_from([f.name for f in dataclasses.fields(TrainConfig)] + ["encoder", "decoder"])
plausible = {"train_name": hs.sampled_from(GOOD_NAMES[:2] + BAD_NAMES[:6]), "model_size": hs.sampled_from(["tiny", "s", "xxl"]),
             "encoder": hs.sampled_from(sorted(sweep.MODEL_NAMES) + ["enc-huge"]), "lr": hs.floats(),
             "decoder": hs.sampled_from(sorted(sweep.MODEL_NAMES)), "batch_size": hs.integers(-3, 2**64)}
entries = hs.dictionaries(hs.one_of(known_keys, hs.text(max_size=8)), json_values, max_size=6) | \
    hs.fixed_dictionaries({}, optional={**plausible, **{k: json_values for k in ("seed", "plan_only", "warmup_steps")}})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.lists(entries | json_values, max_size=3) | json_values, hs.integers(-2, 4) | hs.integers())
def test_generated_sweep_files_give_a_config_or_one_line_error(tmp_path, content, index):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(content))
    try:
        cfg = sweep.load(str(path), index)
    except ConfigError as e:
        assert "\n" not in str(e) and len(str(e)) < 500, str(e)
        return
    cfg.validate()
    json.dumps(cfg.to_dict(), allow_nan=False)  # storable as it is


@pytest.mark.parametrize("text", [b"\xff\xfe garbage", b"[" * 100000, b'[{"lr": NaN}]', b'[{"lr": Infinity}]',
                                  b'[{"grad_clip": NaN}]', b'[{"seed": 100000000000000000000}]',
                                  b'[{"lr": 1' + b"0" * 400 + b"}]", b'[{"encoder": ["enc-s"]}]',
                                  b'[{"encoder": "enc-s", "model_size": ["s"]}]', b"[]"])
def test_sweep_files_that_used_to_escape_as_tracebacks(tmp_path, text):
    path = tmp_path / "sweep.json"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        sweep.load(str(path), 0)
    assert "\n" not in str(e.value) and len(str(e.value)) < 500


def test_out_of_range_flags_are_refused():
    for flags in (["--lr", "nan"], ["--grad-clip", "inf"], ["--seed", str(2**64)], ["--train-steps", str(10**30)]):
        code, out, err = call(train.main, "single", "--run-id", "x", *flags, "--dry-run")
        one_line_error(code, err, "out of range")


# ---------------------------------------------------------------------------------------------
# secrets

SECRET = "s3cret-Pa55"


@pytest.mark.parametrize("uri", [
    f"mongodb://u:{SECRET}@h:27017/db", f"mongodb://u:{SECRET}@h1:1,h2:2/db?authSource=admin",
    f"mongodb+srv://u:{SECRET}@cluster.example/db", f"mongodb://u:{SECRET}@h", f"mongodb://u:pre@{SECRET}@h/db",
    f"mongodb://u%3A{SECRET}@h/db", f"mongodb://h/db?tlsCertificateKeyFilePassword={SECRET}",
    f"mongodb://u:{SECRET}@h/db?authMechanismProperties=AWS_SESSION_TOKEN:{SECRET}", f"mongodb://u:{SECRET}@[::1/db",
    f"mongodb://u:{SECRET.replace('-', '%2D')}@h/db",
])
def test_redact_hides_passwords(uri):
    shown = redact(uri)
    assert SECRET not in shown and SECRET.replace("-", "%2D") not in shown and "5" not in shown.split("@")[0]
    where = lambda u: u.rsplit("@", 1)[-1].split("?")[0]
    assert shown == "<unparseable uri>" or where(shown) == where(uri)  # the address stays readable


@pytest.fixture
def auth_server(env, monkeypatch):
    """A server with a user, and MONGODB_URI with that user's password."""
    proc, port = start_server(env["tmp"] / "auth.log")
    pymongo.MongoClient(f"mongodb://127.0.0.1:{port}").admin.command("createUser", "trainer", pwd=SECRET, roles=["root"])
    uri = f"mongodb://trainer:{SECRET}@127.0.0.1:{port}/secure?authSource=admin"
    monkeypatch.setenv("MONGODB_URI", uri)
    yield port
    stop_server(proc)


def test_password_never_printed_stored_or_exported(auth_server, tmp_path, monkeypatch):
    store = connect()
    assert SECRET not in store.address
    make_toy_dataset(store.db)
    args = ["--train-name", "toy.copy", "--model-size", "tiny", "--train-steps", "10", "--log-interval", "5",
            "--checkpoint-interval", "5", "--num-test-sequences", "8"]
    wrong = os.environ["MONGODB_URI"].replace(SECRET, "wr0ng-Pa55")
    procs = [subprocess.Popen([sys.executable, "train.py", "single", *a], cwd=ROOT, env={**os.environ, **e}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for a, e in ((["--run-id", "sec", *args], {}), (["--run-id", "sec-bad", *args, "--min-reasoning-len", "999"], {}),
                          (["--run-id", "x", *args], {"MONGODB_URI": wrong}))]
    printed = [(p.returncode, *p.communicate(timeout=300)) for p in procs]
    printed = [(p.returncode, out, err) for p, (_, out, err) in zip(procs, printed)]
    assert printed[0][0] == 0 and printed[1][0] == 1
    one_line_error(printed[2][0], printed[2][2], "authentication failed", "trainer:***@")
    assert store.get_run("sec")["status"] == "finished" and store.get_run("sec-bad") is None  # failed before step 1
    for cmd in (["list-all"], ["show", "--run-id", "sec"], ["list-all-checkpoints"], ["db", "status"],
                ["export-checkpoint", "--run-id", "sec", "--export-dir", tmp_path], ["show", "--run-id", "nope"]):
        printed.append(call(admin.main, *cmd))
        if cmd == ["db", "status"]:  # names the server, not the password
            assert "trainer:***@127.0.0.1" in printed[-1][1]
    printed.append(call(data.main, "list"))
    monkeypatch.setenv("MONGODB_URI", wrong)
    for main, cmd in ((admin.main, ["list-all"]), (data.main, ["list"])):
        printed.append(call(main, *cmd))
        one_line_error(printed[-1][0], printed[-1][2], "authentication failed", "trainer:***@")
    for code, out, err in printed:
        assert SECRET not in out + err and "wr0ng" not in out + err
    for name in store.db.list_collection_names():
        for doc in store.db[name].find():
            assert SECRET.encode() not in bson.encode(doc), name
    assert SECRET.encode() not in (tmp_path / "sec.pt").read_bytes()


# ---------------------------------------------------------------------------------------------
# unreachable database


def test_unreachable_database_is_one_line_naming_the_address_within_seconds(monkeypatch):
    port = closed_port()
    uri = f"mongodb://127.0.0.1:{port}/x"
    procs = [subprocess.Popen([sys.executable, *c], cwd=ROOT, env={**os.environ, "MONGODB_URI": uri}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for c in (["train.py", "single", "--run-id", "x", "--train-name", "toy.copy"], ["admin.py", "list-all"],
                       ["data.py", "list"])]
    for p in procs:
        out, err = p.communicate(timeout=120)
        one_line_error(p.returncode, err, f"cannot reach MongoDB at {uri}", "unset it to use the embedded server")
    monkeypatch.setenv("MONGODB_URI", uri)
    t = time.monotonic()
    code, out, err = call(admin.main, "show", "--run-id", "x")
    one_line_error(code, err, f"cannot reach MongoDB at {uri}", f"connection refused by 127.0.0.1:{port}")
    assert time.monotonic() - t < 3  # a refused connection is said at once, not after server selection's 5 s
    # and admin.py and data.py get there without importing torch (seconds on a loaded machine)
    r = subprocess.run([sys.executable, "-c", "import sys, admin, data; sys.exit('torch' in sys.modules)"], cwd=ROOT)
    assert r.returncode == 0


def test_unusable_embedded_server_folder_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("MONGODB_URI", raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SEARCHFORMER_DB_DIR", str(tmp_path / "file" / "db"))
    code, out, err = call(admin.main, "list-all")
    one_line_error(code, err, "cannot use the database folder", "SEARCHFORMER_DB_DIR")


@pytest.mark.parametrize("device", ["gpu", "cuda:0", "cuda", "cuda:x"])
def test_a_device_that_is_not_there_is_one_line(env, device, monkeypatch):
    """--device gpu or cuda:0 once trained on the CPU without a word, and cuda on a CPU build of torch
    ended in a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main, argv in ((train.main, ["single", "--run-id", "x", "--train-name", "toy.copy"]),
                       (evaluate.main, ["--run-id", "x"])):
        code, out, err = call(main, *argv, "--device", device)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: --device ") and device in lines[0], err
    for bad in ("0", "-1", "nan"):
        code, out, err = call(train.main, "single", "--run-id", "x", "--train-name", "toy.copy", "--device", "cpu",
                              f"--dist-timeout-minutes={bad}")
        assert code == 1 and err.strip() == f"error: need --dist-timeout-minutes > 0, not {float(bad):g}", err
