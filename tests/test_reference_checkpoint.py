"""The reference's checkpoint files (reference_checkpoint.py, admin.py import-checkpoint / export-checkpoint
--format reference): a file rebuilt by the fixture's recipe (tests/reference_ckpt/) imports to the
reference's own logits and greedy rollouts, token ids moved to this project's; export and import again
change nothing; bad input gets one line and stores nothing; an imported run evaluates, bootstraps,
fine-tunes and starts a step sweep entry."""
import json

import pytest
import torch

import admin
import decode
import encdec
import eval as ev
import reference_checkpoint as rc
from checkpoint import model_from_config
from checkpoint_store import load_checkpoint
from conftest import ROOT, adam_steps, call, run_cli, snapshot
from dataset import BOS, EOS, SPECIALS, DatasetWriter, digest, encode, get_dataset

FIXTURE = json.loads((ROOT / "tests" / "reference_ckpt" / "maze-enc-s-dec-s.json").read_text())
PREFIX = FIXTURE["model_key_prefix"]


def recipe_file(path, config, vocab_size, size="s", checkpoint_id=None, step=400000):
    """A reference .ckpt by the fixture's recipe (its `about`), for any vocabulary size: the fixture's own
    file when given its config and 59 tokens. RoPE tables as the reference computes them."""
    rcfg = encdec.EncDecConfig.from_size(size, vocab_size)
    shapes, keys = rc.reference_shapes(rcfg), encdec.reference_state_keys(rcfg)
    model, i, tables = {}, 0, {}
    for k in keys:
        if ".rope." in k:  # one table pair per encoder and decoder, shared by every key (as the reference's)
            hd = shapes[k][-1] * 2
            if (k[:7], hd) not in tables:
                freqs = torch.outer(torch.arange(2**16).float(), 1.0 / (1e4 ** (torch.arange(0, hd, 2).float() / hd)))
                tables[k[:7], hd] = (freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :])
            model[PREFIX + k] = tables[k[:7], hd][0 if k.endswith("cos_param") else 1]
            continue
        g = torch.Generator().manual_seed(i)
        i += 1
        shape = shapes[k]
        model[PREFIX + k] = 1 + 0.1 * torch.randn(shape, generator=g) if len(shape) == 1 else \
            torch.randn(shape, generator=g) * shape[1] ** -0.5
    state = {}
    for j, k in enumerate(encdec.reference_param_order(rcfg)):
        if ".rope." not in k:
            g = torch.Generator().manual_seed(100000 + j)
            state[j] = {"step": torch.tensor(1000.0), "exp_avg": 1e-3 * torch.randn(shapes[k], generator=g),
                        "exp_avg_sq": 1e-6 * torch.rand(shapes[k], generator=g)}
    groups = [{**g, "betas": tuple(g["betas"]), "params": list(range(len(state) + 4))} for g in FIXTURE["param_groups"]]
    ck = {**FIXTURE["checkpoint"], "config": config, "model": model, "optimizer": {"state": state, "param_groups": groups}}
    if checkpoint_id:
        ck["checkpoint_id"] = checkpoint_id
    torch.save(ck, path)
    return path


@pytest.fixture
def fixture_file(tmp_path):
    return recipe_file(tmp_path / "maze-sweep-rep-det-small-0.ckpt", FIXTURE["checkpoint"]["config"], 59)


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "maze.vocabulary.json"
    path.write_text(json.dumps({"_id": "maze.10-by-10-deterministic.simple", "vocabulary": FIXTURE["stored_vocabulary"]}))
    return path


def stored_dataset(db, name, tokens):
    """A dataset here whose vocabulary is `tokens` in this order (not sorted: our ids are not the reference's)."""
    w = DatasetWriter(db, name, "maze", {"n": 10}, tokens, overwrite=True)
    index = {t: i for i, t in enumerate(w.vocabulary)}
    for split in ("train", "test"):
        w.add(split, encode(["wall", "0", "1"], index), encode(["create", "0", "1", "c0", "c1"], index),
              encode(["plan", "0", "1"], index), digest(split.encode()))
    w.commit()
    return name


def imported_model(store, run_id):
    ck = load_checkpoint(store, run_id)
    net = model_from_config(ck["model_config"])
    net.load_state_dict(ck["model"])
    ids = {t: i for i, t in enumerate(ck["vocabulary"])}
    ids["bos"], ids["eos"] = BOS, EOS
    return net.eval(), ids, ck


def test_the_reference_layout_is_the_fixtures():
    """encdec's reference state-dict keys and parameter order are the reference's, and the recipe's shapes."""
    rcfg = encdec.EncDecConfig.from_size("s", 59)
    assert [(k, list(s)) for k, s, _ in FIXTURE["model_keys"]] == \
        [(k, list(rc.reference_shapes(rcfg)[k])) for k in encdec.reference_state_keys(rcfg)]
    shared = lambda k: k.replace(".layers.5.attention.rope.", ".rope.")  # noqa: E731 (the fixture names the last copy)
    assert [shared(k) for k in FIXTURE["param_order"]] == encdec.reference_param_order(rcfg)
    assert rc.reference_tokens(FIXTURE["stored_vocabulary"]) == FIXTURE["reference_token_ids"]


@pytest.mark.parametrize("source", ["vocabulary", "dataset"])
def test_imported_logits_and_greedy_rollouts_are_the_references(store, fixture_file, vocab_file, source):
    """Token ids from the vocabulary file (ours then sorted as the reference's, shifted by our specials)
    or from a dataset here whose vocabulary is in another order: ids really move, and still every
    case's logits are the reference's within 1e-4 and its greedy rollouts the reference's."""
    flags = ["--vocabulary", vocab_file] if source == "vocabulary" else []
    if source == "dataset":
        stored_dataset(store.db, "maze.10-by-10-deterministic.simple", FIXTURE["stored_vocabulary"])
    code, out, err = call(admin.main, "import-checkpoint", "--filename", fixture_file, *flags)
    assert code == 0, err
    assert "as run maze-sweep-rep-det-small-0 (step 400000, enc-s/dec-s" in out
    net, ids, ck = imported_model(store, "maze-sweep-rep-det-small-0")
    ref_ids = FIXTURE["reference_token_ids"]
    moved = sum(ids[t] != i for i, t in enumerate(ref_ids))
    assert moved == len(ref_ids) if source == "dataset" else moved == len(ref_ids) and \
        [ids[t] - 2 for t in ref_ids[2:]] == list(range(2, len(ref_ids)))  # sorted, after our two extra specials
    cols = torch.tensor([ids[t] for t in ref_ids])
    sources = []
    for c in FIXTURE["cases"]:
        src = torch.tensor([[BOS, *(ids[t] for t in c["prompt"]), EOS]])
        resp = torch.tensor([[ids[t] for t in c["response"]]])
        with torch.no_grad():
            logits = net(resp, src, torch.ones_like(src, dtype=torch.bool))[0]  # (T, V)
        assert (logits[:, cols] - torch.tensor(c["logits"])).abs().max() < 1e-4
        sources.append(src[0].numpy())
    got = {i: t.tolist() for i, t, _ in decode.generate(net, [torch.tensor([BOS]).numpy()] * len(sources),
                                                        list(range(len(sources))), 47, sources=sources)}
    names = {i: t for t, i in ids.items()}
    assert [["bos", *(names[t] for t in got[i])] for i in range(len(sources))] == \
        [c["greedy_rollout_48"] for c in FIXTURE["cases"]]
    doc = store.get_run("maze-sweep-rep-det-small-0")
    assert doc["reference"]["config"] == FIXTURE["checkpoint"]["config"] and doc["reference"]["step"] == 400000
    cfg = doc["config"]
    assert (cfg["arch"], cfg["model_size"], cfg["train_name"], cfg["batch_size"], cfg["lr"], cfg["warmup_steps"],
            cfg["train_steps"], cfg["plan_only"]) == ("encdec", "s", "maze.10-by-10-deterministic.simple", 8, 2.5e-4,
                                                      2000, 400000, False)


def test_prompt_prints_the_references_log_probabilities(store, fixture_file, vocab_file):
    """eval.py prompt --response on the imported file: each response token's log-probability (and the
    <eos> the command appends) is the reference's, from its logits; the greedy response is its rollout."""
    assert call(admin.main, "import-checkpoint", "--filename", fixture_file, "--vocabulary", vocab_file)[0] == 0
    ref_id = {t: i for i, t in enumerate(FIXTURE["reference_token_ids"])}
    for c in FIXTURE["cases"]:
        code, out, err = call(ev.main, "prompt", "--run-id", "maze-sweep-rep-det-small-0", "--prompt",
                              " ".join(c["prompt"]), "--response", " ".join(c["response"][1:]), "--json")
        assert code == 0, err
        got = json.loads(out)
        targets = [ref_id[t] for t in c["response"][1:]] + [ref_id["eos"]]  # row i predicts token i + 1
        want = torch.log_softmax(torch.tensor(c["logits"], dtype=torch.float64), -1)[range(len(targets)), targets]
        assert got["response"] == c["response"][1:] + ["<eos>"]
        assert (torch.tensor(got["logprobs"]) - want).abs().max() < 1e-4
        code, out, err = call(ev.main, "prompt", "--run-id", "maze-sweep-rep-det-small-0", "--prompt",
                              " ".join(c["prompt"]), "--greedy", "--max-tokens", "47")
        assert code == 0 and ["bos", *out.split()] == c["greedy_rollout_48"], err


def test_each_optimizer_row_moves_with_its_token(store, fixture_file):
    stored_dataset(store.db, "maze.10-by-10-deterministic.simple", FIXTURE["stored_vocabulary"])
    assert call(admin.main, "import-checkpoint", "--filename", fixture_file, "--run-id", "moved")[0] == 0
    _, ids, ck = imported_model(store, "moved")
    ref = torch.load(fixture_file, weights_only=True)
    order = encdec.reference_param_order(encdec.EncDecConfig.from_size("s", 59))
    flat = [n for n, p in model_from_config(ck["model_config"]).named_parameters() if p.dim() >= 2] + \
        [n for n, p in model_from_config(ck["model_config"]).named_parameters() if p.dim() < 2]
    for ours, theirs in (("encoder.embed.weight", "encoder.embedding.weight"),
                         ("decoder.head.weight", "decoder.output.1.weight")):
        mine, src = ck["optimizer"]["state"][flat.index(ours)], ref["optimizer"]["state"][order.index(theirs)]
        for m in ("exp_avg", "exp_avg_sq"):
            for r, t in enumerate(FIXTURE["reference_token_ids"]):
                assert torch.equal(mine[m][ids[t]], src[m][r])
            assert not mine[m][[0, 3]].any()  # <pad>, <sep>: no row there, no state
        wall = FIXTURE["reference_token_ids"].index("wall")
        assert torch.equal(ck["model"][ours][ids["wall"]], ref["model"][PREFIX + theirs][wall])


def test_export_in_the_reference_format_and_import_again_changes_nothing(store, fixture_file, vocab_file, tmp_path):
    assert call(admin.main, "import-checkpoint", "--filename", fixture_file, "--vocabulary", vocab_file)[0] == 0
    code, out, err = call(admin.main, "export-checkpoint", "--run-id", "maze-sweep-rep-det-small-0", "--format",
                          "reference", "--export-dir", tmp_path / "out")
    assert code == 0, err
    path = tmp_path / "out" / "maze-sweep-rep-det-small-0.ckpt"
    assert str(path) in out and [p.name for p in (tmp_path / "out").iterdir()] == [path.name]
    a, b = torch.load(fixture_file, weights_only=True), torch.load(path, weights_only=True)
    assert list(a["model"]) == list(b["model"]) and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["config"] == b["config"] and a["step"] == b["step"] and a["checkpoint_id"] == b["checkpoint_id"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for j, s in a["optimizer"]["state"].items():
        assert all(torch.equal(s[m], b["optimizer"]["state"][j][m]) for m in s)
    assert call(admin.main, "import-checkpoint", "--filename", path, "--run-id", "again", "--vocabulary", vocab_file)[0] == 0
    first, second = load_checkpoint(store, "maze-sweep-rep-det-small-0"), load_checkpoint(store, "again")
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    assert first["optimizer"]["state"].keys() == second["optimizer"]["state"].keys()
    for j, s in first["optimizer"]["state"].items():
        assert all(torch.equal(s[m], second["optimizer"]["state"][j][m]) for m in s)


def one_line_refusal(store, *argv):
    before = snapshot(store.db)
    code, out, err = call(admin.main, *argv)
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert snapshot(store.db) == before
    return err


def test_bad_vocabularies_are_refused(store, fixture_file, vocab_file, tmp_path):
    short = tmp_path / "short.json"
    short.write_text(json.dumps([t for t in FIXTURE["stored_vocabulary"] if t != "c40"]))
    err = one_line_refusal(store, "import-checkpoint", "--filename", fixture_file, "--vocabulary", short)
    assert "58 token ids" in err and "59 rows" in err
    stored_dataset(store.db, "small.maze", [t for t in FIXTURE["stored_vocabulary"] if t != "c40"])
    err = one_line_refusal(store, "import-checkpoint", "--filename", fixture_file, "--dataset", "small.maze",
                           "--vocabulary", vocab_file)
    assert "lacks 1 token(s)" in err and "c40" in err
    err = one_line_refusal(store, "import-checkpoint", "--filename", fixture_file, "--dataset", "small.maze")
    assert "58 token ids" in err
    err = one_line_refusal(store, "import-checkpoint", "--filename", fixture_file)  # no vocabulary at all
    assert "no vocabulary" in err


def test_bad_files_are_refused(store, fixture_file, vocab_file, tmp_path):
    config = FIXTURE["checkpoint"]["config"]
    unknown = recipe_file(tmp_path / "unknown.ckpt", {**config, "encoder": "enc-q"}, 59)
    assert "unknown model size names" in one_line_refusal(store, "import-checkpoint", "--filename", unknown,
                                                          "--vocabulary", vocab_file)
    mixed = recipe_file(tmp_path / "mixed.ckpt", {**config, "decoder": "dec-m-s"}, 59)
    assert "unknown model size names" in one_line_refusal(store, "import-checkpoint", "--filename", mixed,
                                                          "--vocabulary", vocab_file)
    misnamed = recipe_file(tmp_path / "misnamed.ckpt", {**config, "encoder": "enc-m-s", "decoder": "dec-m-s"}, 59)
    err = one_line_refusal(store, "import-checkpoint", "--filename", misnamed, "--vocabulary", vocab_file)
    assert "its model keys are not those of enc-m-s/dec-m-s" in err
    ck = torch.load(fixture_file, weights_only=True)
    key = PREFIX + "decoder.layers.2.attention.wq.weight"
    ck["model"][key] = ck["model"][key][:96]
    torch.save(ck, tmp_path / "shape.ckpt")
    err = one_line_refusal(store, "import-checkpoint", "--filename", tmp_path / "shape.ckpt", "--vocabulary", vocab_file)
    assert "'decoder.layers.2.attention.wq.weight' is float32 (96, 192), not float32 (192, 192) as enc-s/dec-s" in err
    data = fixture_file.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[:len(data) // 2])
    assert "not a valid checkpoint file" in one_line_refusal(store, "import-checkpoint", "--filename", cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    assert "not a searchformer checkpoint" in one_line_refusal(store, "import-checkpoint", "--filename", foreign)
    text = tmp_path / "text.ckpt"
    text.write_text("hello")
    assert "not a valid checkpoint file" in one_line_refusal(store, "import-checkpoint", "--filename", text)
    ck = torch.load(fixture_file, weights_only=True)
    ck["model"][PREFIX + "decoder.rope.sin_param"] = ck["model"][PREFIX + "decoder.rope.sin_param"] * 0.5
    torch.save(ck, tmp_path / "rope.ckpt")
    assert "RoPE table" in one_line_refusal(store, "import-checkpoint", "--filename", tmp_path / "rope.ckpt",
                                            "--vocabulary", vocab_file)


def test_an_existing_run_is_replaced_only_with_replace(store, fixture_file, vocab_file):
    assert call(admin.main, "import-checkpoint", "--filename", fixture_file, "--vocabulary", vocab_file)[0] == 0
    err = one_line_refusal(store, "import-checkpoint", "--filename", fixture_file, "--vocabulary", vocab_file)
    assert "exists; pass --replace" in err
    assert call(admin.main, "import-checkpoint", "--filename", fixture_file, "--vocabulary", vocab_file,
                "--replace")[0] == 0


def test_bulk_import_names_a_bad_file_and_imports_the_others(store, fixture_file, vocab_file, tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    recipe_file(folder / "a.ckpt", FIXTURE["checkpoint"]["config"], 59, checkpoint_id="run-a")
    (folder / "b.ckpt").write_bytes(fixture_file.read_bytes()[:1000])
    recipe_file(folder / "c.ckpt", FIXTURE["checkpoint"]["config"], 59, checkpoint_id="run-c")
    code, out, err = call(admin.main, "bulk-import-checkpoint", "--dir", folder, "--vocabulary", vocab_file)
    assert code == 1 and "1 of 3 checkpoint files not imported" in err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "as run run-a" in lines[0] and "b.ckpt: not imported" in lines[1] and "run-c" in lines[2]
    assert {r["_id"] for r in store.list_runs()} == {"run-a", "run-c"}


def test_only_an_encdec_run_of_a_reference_size_exports(store, tmp_path):
    from conftest import make_checkpoint
    make_checkpoint(store, "dec")
    err = one_line_refusal(store, "export-checkpoint", "--run-id", "dec", "--format", "reference", "--export-dir",
                           tmp_path / "out")
    assert "only an encdec run of a reference size" in err and not (tmp_path / "out").exists()


@pytest.fixture
def maze_run(store, tmp_path):
    """A small maze dataset generated here and a reference enc-s/dec-s file of its vocabulary, imported."""
    run_cli("data.py", "maze", "--size", "5", "--num-train", "16", "--num-test", "8", "--name", "maze.small")
    vocab = get_dataset(store.db, "maze.small")["vocabulary"][len(SPECIALS):]
    config = json.loads(json.dumps(FIXTURE["checkpoint"]["config"]))
    config["data"].update(train_name="maze.small", test_name="maze.small", batch_size=2)
    path = recipe_file(tmp_path / "small.ckpt", config, len(vocab) + 2, checkpoint_id="ref-small")
    assert call(admin.main, "import-checkpoint", "--filename", path)[0] == 0
    return "ref-small"


@pytest.mark.slow
def test_an_imported_run_evaluates_and_bootstraps(store, maze_run):
    run_cli("eval.py", "--run-id", maze_run, "--num-tasks", "4", "--max-tokens", "24")
    assert store.results.count_documents({"run_id": maze_run}) == 1
    run_cli("eval.py", "bootstrap", "--run-id", maze_run, "--name", "boot.small", "--num-tasks", "4", "--max-tokens", "24")
    assert get_dataset(store.db, "boot.small")["vocabulary"] == get_dataset(store.db, "maze.small")["vocabulary"]


@pytest.mark.slow
def test_an_imported_checkpoint_fine_tunes_under_two_processes_and_starts_a_step_sweep(store, maze_run, tmp_path):
    common = ["--train-name", "maze.small", "--arch", "encdec", "--model-size", "s", "--batch-size", "1",
              "--train-steps", "2", "--warmup-steps", "1", "--log-interval", "1", "--eval-interval", "2",
              "--checkpoint-interval", "2", "--num-test-sequences", "4"]
    r = run_cli("train.py", "single", "--run-id", "tuned", *common, "--start-checkpoint", maze_run, nproc=2)
    assert f"initialised from {maze_run} (latest checkpoint, step 400000): weights and optimizer state" in r.stdout
    assert adam_steps(load_checkpoint(store, "tuned")) == {1002.0} and store.get_run("tuned")["step"] == 2
    sweep = tmp_path / "maze-small-step-1.json"
    sweep.write_text(json.dumps([{"train_name": "maze.small", "test_name": "maze.small", "encoder": "enc-s",
                                  "decoder": "dec-s", "batch_size": 1, "train_steps": 1, "log_interval": 1,
                                  "eval_interval": 1, "checkpoint_interval": 1, "num_test_sequences": 4,
                                  "warmup_steps": 1, "start_checkpoint": maze_run}]))
    r = run_cli("train.py", "sweep", "--sweep", sweep, "--index", "0", "--arch", "encdec")
    assert f"initialised from {maze_run}" in r.stdout
    ck = load_checkpoint(store, "maze-small-0-step-1")
    assert adam_steps(ck) == {1001.0} and ck["step"] == 1
