"""eval.py prompt (prompting.py) on both architectures: log-probabilities against the model's forward
on the training layout, greedy responses against an argmax rollout by full recompute, seeded samples,
the JSON shapes, and its refusals."""
import json
import uuid

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import batches
import dataset
import eval as ev
import rollouts
from conftest import FAST, call, make_toy_dataset, run_cli

ARCHS = [("dec", "decoder"), ("ed", "encdec")]


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory):
    """A database of its own with the toy dataset and a decoder-only and an encoder-decoder run trained a
    few steps, shared by this file's tests (they only read it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MONGODB_URI", f"mongodb://127.0.0.1:{server}/t{uuid.uuid4().hex[:10]}")
    mp.setenv("SEARCHFORMER_CACHE_DIR", str(tmp_path_factory.mktemp("prompt") / "cache"))
    mp.setenv("OMP_NUM_THREADS", "1")
    from store import connect
    store = connect()
    make_toy_dataset(store.db)
    for run_id, arch in ARCHS:
        run_cli("train.py", "single", "--run-id", run_id, *FAST, "--arch", arch, "--train-steps", "10")
    yield store
    mp.undo()


def prompt(*argv):
    code, out, err = call(ev.main, "prompt", *argv)
    assert code == 0, err
    return out


def task(store, row):
    """(prompt tokens, response tokens) of a test sequence of the toy dataset, as strings."""
    vocab = dataset.get_dataset(store.db, "toy.copy")["vocabulary"]
    split = dataset.load_split(store.db, "toy.copy", "test")
    words = lambda ids: [vocab[i] for i in ids]  # noqa: E731
    return words(split.get(row, "prompt")), words(np.concatenate([split.get(row, "trace"), split.get(row, "plan")]))


@pytest.mark.parametrize("run_id,arch", ARCHS)
def test_logprobs_equal_the_forward_on_the_training_sequence(runs, run_id, arch):
    """--response scores the sequence a trainer would see (batches.Sequences: markers added, <eos> last):
    each token's log-probability equals the model's log_softmax at that training target."""
    split = dataset.load_split(runs.db, "toy.copy", "test")
    model, ck = rollouts.load_model(runs, run_id, torch.device("cpu"))
    for row in (0, 5):
        p, r = task(runs, row)
        got = json.loads(prompt("--run-id", run_id, "--prompt", " ".join(p), "--response", " ".join(r), "--json"))
        assert got["response"] == r + ["<eos>"]
        x, y, _ = batches.Sequences.build(split, [row], False, arch).collate([0])
        with torch.no_grad():
            if arch == "encdec":
                (x, src, mask) = x
                logits = model(torch.as_tensor(x), src=torch.as_tensor(src), src_mask=torch.as_tensor(mask))
            else:
                logits = model(torch.as_tensor(x))  # (1, T, V)
        y = torch.as_tensor(y[0])
        want = F.log_softmax(logits[0], -1)[y >= 0].gather(1, y[y >= 0, None]).squeeze(1)
        assert [ck["vocabulary"][i] for i in y[y >= 0]] == got["response"]
        torch.testing.assert_close(torch.tensor(got["logprobs"], dtype=torch.float64), want.double(), rtol=0, atol=1e-5)
        lines = prompt("--run-id", run_id, "--prompt", " ".join(p), "--response", " ".join(r)).splitlines()
        assert [line.split()[0] for line in lines] == got["response"]
        assert np.allclose([float(line.split()[1]) for line in lines], got["logprobs"], atol=1e-6)


@pytest.mark.parametrize("run_id,arch", ARCHS)
def test_greedy_equals_an_argmax_rollout_by_full_recompute(runs, run_id, arch):
    model, ck = rollouts.load_model(runs, run_id, torch.device("cpu"))
    vocab = ck["vocabulary"]
    for row in (1, 2):
        p, _ = task(runs, row)
        got = json.loads(prompt("--run-id", run_id, "--prompt", " ".join(p), "--greedy", "--max-tokens", "30", "--json"))
        ids = [vocab.index(t) for t in p]
        src = torch.tensor([[dataset.BOS, *ids, dataset.EOS]])
        seq = [dataset.BOS] if arch == "encdec" else [dataset.BOS, *ids, dataset.SEP]
        want = []
        with torch.no_grad():
            while len(want) < 30 and (not want or want[-1] != dataset.EOS):
                x = torch.tensor([seq + want])
                logits = model(x, src=src, src_mask=torch.ones_like(src, dtype=torch.bool)) if arch == "encdec" \
                    else model(x)
                want.append(int(logits[0, -1].argmax()))
        assert got == {"responses": [[vocab[i] for i in want]]}


@pytest.mark.parametrize("run_id,arch", ARCHS)
def test_seeded_samples_repeat_and_their_shapes(runs, run_id, arch):
    """The same seed gives the same samples, sample i the same however many are drawn, another seed
    others; a response ends at <eos> (kept) or at the limit; the text output matches the JSON."""
    p = "t3 t1 t4 t1 t5"
    args = ["--run-id", run_id, "--prompt", p, "--max-tokens", "25", "--temperature", "1.0"]
    first = json.loads(prompt(*args, "--samples", "4", "--seed", "5", "--json"))["responses"]
    assert len(first) == 4 and all(isinstance(t, str) for r in first for t in r)
    assert json.loads(prompt(*args, "--samples", "4", "--seed", "5", "--json"))["responses"] == first
    assert json.loads(prompt(*args, "--samples", "2", "--seed", "5", "--json"))["responses"] == first[:2]
    assert json.loads(prompt(*args, "--samples", "4", "--seed", "6", "--json"))["responses"] != first
    for r in first:
        assert "<eos>" not in r[:-1] and (r[-1] == "<eos>" and len(r) <= 25 or len(r) == 25)
    text = prompt(*args, "--samples", "4", "--seed", "5").splitlines()
    assert text == [" ".join(r) for r in first]


@pytest.mark.parametrize("flags,msg", [
    (["--prompt", "t1 zz t2"], "--prompt holds token 'zz', not in the vocabulary of run 'dec'"),
    (["--prompt", "t1", "--response", "t2 qq"], "--response holds token 'qq'"),
    (["--prompt", "<bos> t1"], "--prompt holds <bos>: give it without the markers"),
    (["--prompt", "t1", "--response", "t2 <eos>"], "--response holds <eos>"),
    (["--prompt", " "], "--prompt holds no token"),
    (["--prompt", "t1", "--greedy", "--samples", "2"], "--greedy gives one response at temperature 0: drop --samples"),
    (["--prompt", "t1", "--response", "t2", "--seed", "1"], "--response scores the given tokens: drop --seed"),
    (["--prompt", "t1", "--temperature", "0", "--samples", "3"], "use --samples 1"),
    (["--prompt", "t1", "--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--prompt", "t1", "--checkpoint", "best"], "run 'dec' has no best checkpoint"),
])
def test_bad_input_gives_one_line_errors(runs, flags, msg):
    code, out, err = call(ev.main, "prompt", "--run-id", "dec", *flags)
    assert code == 1 and out == "" and msg in err and len(err.strip().splitlines()) == 1, err


def test_unknown_run_and_run_without_checkpoint_give_one_line_errors(runs):
    runs.runs.insert_one({"_id": "fresh", "config": {}, "status": "running", "step": 0, "lease": None, "error": None})
    for run_id, msg in (("nope", "no run with id 'nope'"), ("fresh", "run 'fresh' has no checkpoint yet")):
        code, out, err = call(ev.main, "prompt", "--run-id", run_id, "--prompt", "t1")
        assert code == 1 and out == "" and msg in err and len(err.strip().splitlines()) == 1, err
