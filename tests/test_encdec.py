"""The encoder-decoder (`--arch encdec`): the reference's architecture exactly (its own logits and greedy
rollouts on the fixture in tests/reference_ckpt/), and its fast paths against slow references."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import batches
import dataset
import decode
import model
from checkpoint_store import load_checkpoint
from conftest import ROOT, make_toy_dataset, run_cli
from dataset import BOS, EOS
from encdec import NEVER_EMITTED, REFERENCE_NAMES, SIZES, EncDecConfig, EncoderDecoder, ffn_width, from_reference, reference_keys

FIXTURE = ROOT / "tests" / "reference_ckpt" / "maze-enc-s-dec-s.json"


def reference_state(fixture):
    """The reference's state dict (without `module.model.`), rebuilt by the fixture's recipe."""
    state, i = {}, 0
    for key, shape, kind in fixture["model_keys"]:
        if kind == "recipe":
            g = torch.Generator().manual_seed(i)
            i += 1
            state[key] = (1 + 0.1 * torch.randn(shape, generator=g) if len(shape) == 1
                          else torch.randn(shape, generator=g) * shape[1] ** -0.5)
    return state


@pytest.fixture(scope="module")
def reference():
    """The fixture's model with its token rows at our ids (our specials, then the reference's tokens
    after its bos and eos), as an import places them; the cases in our ids."""
    fixture = json.loads(FIXTURE.read_text())
    tokens = fixture["reference_token_ids"]
    ours = {"bos": BOS, "eos": EOS, **{t: len(dataset.SPECIALS) + i for i, t in enumerate(tokens[2:])}}
    where = torch.tensor([ours[t] for t in tokens])  # (59,) our id of each reference id
    cfg = EncDecConfig.from_size("s", len(dataset.SPECIALS) + len(tokens) - 2)
    state = from_reference(reference_state(fixture), EncDecConfig.from_size("s", len(tokens)))
    for k in ("encoder.embed.weight", "decoder.embed.weight", "decoder.head.weight"):
        state[k] = state[k].new_zeros(cfg.vocab_size, state[k].shape[1]).index_copy(0, where, state[k])  # (V, C)
    net = EncoderDecoder(cfg).eval()
    net.load_state_dict(state)
    cases = [(torch.tensor([BOS, *(ours[t] for t in c["prompt"]), EOS]), torch.tensor([ours[t] for t in c["response"]]),
              torch.tensor(c["logits"]), [ours[t] for t in c["greedy_rollout_48"]]) for c in fixture["cases"]]
    return net, fixture, cases, where


def test_reference_key_mapping_covers_every_weight(reference):
    net, fixture, *_ = reference
    theirs = [k for k, _, kind in fixture["model_keys"] if kind == "recipe"]
    mapped = [k for ks in reference_keys(net.cfg).values() for k in ks]
    assert sorted(mapped) == sorted(theirs)  # each reference weight used once, none left out
    assert sorted(reference_keys(net.cfg)) == sorted(net.state_dict())
    assert all(kind == "rope" for k, _, kind in fixture["model_keys"] if "rope" in k)


def test_logits_match_the_reference(reference):
    """The reference's logits at its tokens' ids here, and its log-probabilities: our two tokens it has
    not (<pad>, <sep>: encdec.NEVER_EMITTED) take no probability."""
    net, _, cases, where = reference
    assert [dataset.SPECIALS[i] for i in NEVER_EMITTED] == ["<pad>", "<sep>"]
    with torch.no_grad():
        for src, response, logits, _ in cases:
            ours = net(response[None], src[None], torch.ones(1, len(src), dtype=torch.bool))[0]  # (T, V)
            assert (ours[:, where] - logits).abs().max() < 1e-4
            lp = torch.log_softmax(ours, -1)[:, where] - torch.log_softmax(logits, -1)  # (T, 59)
            assert lp.abs().max() < 1e-4


def test_greedy_rollouts_match_the_reference(reference):
    """The sampling engine's greedy rollouts (its cached path) are the reference's, token for token:
    bos, then 47 tokens (the reference's 48 steps; its random weights never give `eos`)."""
    net, _, cases, _ = reference
    got = {i: ids for i, ids, _ in decode.generate(net, [torch.tensor([BOS]).numpy()] * len(cases),
                                                  list(range(len(cases))), 47,
                                                  sources=[src.numpy() for src, *_ in cases])}
    assert [[BOS, *got[i].tolist()] for i in range(len(cases))] == [rollout for *_, rollout in cases]


def small_encdec(eos_shift=0.0, vocab=9):
    torch.manual_seed(2)  # a seed whose greedy rows both end and run to the limit (test_cached_sampling...)
    cfg = EncDecConfig(vocab_size=vocab, d_model=32, n_head=2, n_layer=2, enc_d_model=24, enc_n_head=2, enc_n_layer=2)
    net = EncoderDecoder(cfg).double().eval()
    with torch.no_grad():
        net.head.weight[EOS] += eos_shift  # < 0: rarer <eos>, so some rows run to the limit
    return net


def test_batched_padded_logits_equal_one_sequence_at_a_time():
    """Prompts and responses of different lengths, right-padded in one batch (the encoder and the
    cross-attention masked): each row's logits are those of the row alone, unpadded."""
    net = small_encdec()
    g = torch.Generator().manual_seed(0)
    srcs = [torch.randint(3, 9, (n,), generator=g) for n in (5, 11, 2, 8)]
    outs = [torch.randint(3, 9, (n,), generator=g) for n in (7, 3, 9, 1)]
    src, idx = torch.zeros(4, 11, dtype=torch.long), torch.zeros(4, 9, dtype=torch.long)
    for i, (s, o) in enumerate(zip(srcs, outs)):
        src[i, :len(s)], idx[i, :len(o)] = s, o
    with torch.no_grad():
        batched = net(idx, src, src != 0)  # (B, T, V)
        for i, (s, o) in enumerate(zip(srcs, outs)):
            alone = net(o[None], s[None], torch.ones(1, len(s), dtype=torch.bool))[0]
            torch.testing.assert_close(batched[i, :len(o)], alone, rtol=1e-10, atol=1e-10)


def naive_greedy(net, source, start, max_tokens):
    """Greedy decoding the slow way: the encoder and every decoder position, cross-attention keys and
    values included, recomputed at every step."""
    seq, out, src = list(start), [], torch.as_tensor(source)[None]
    for _ in range(max_tokens):
        t = int(net(torch.tensor([seq]), src, torch.ones_like(src, dtype=torch.bool))[0, -1].argmax())
        if t == EOS:
            return out, True
        out.append(t)
        seq.append(t)
    return out, False


def cases(n_prompts):
    g = torch.Generator().manual_seed(1)
    sources = [torch.randint(3, 9, (n,), generator=g).numpy() for n in (3, 7, 11, 5, 8, 4, 9)[:n_prompts]]
    starts = [np.array([BOS, *range(3, 3 + k)]) for k in (0, 2, 0, 4, 1, 0, 3)[:n_prompts]]  # decoder prefixes
    return sources, starts


@pytest.mark.parametrize("n_prompts,batch_size,every,memory", [(2, 1, 1, None), (2, 3, 5, None), (7, 64, 16, None),
                                                               (7, 3, 2, 1), (3, 64, 3, 1)])
def test_cached_sampling_equals_recomputing_every_step(monkeypatch, n_prompts, batch_size, every, memory):
    """Several rows per prompt, prompts and decoder prefixes of different lengths, rows that join,
    leave, move up a lane or wait (memory=1 byte), few prompts (read in one product) and many (each
    layer gathered): the engine's greedy tokens are those of recomputing everything at every step."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    net = small_encdec(eos_shift=-0.3)
    sources, starts = cases(n_prompts)
    src = [i % n_prompts for i in range(2 * n_prompts + 1)]
    ref = [naive_greedy(net, sources[s], starts[s], 40) for s in src]
    assert 0 < sum(e for _, e in ref) < len(src) and max(len(o) for o, _ in ref) == 40  # rows of both kinds
    got = {i: (ids.tolist(), e) for i, ids, e in decode.generate(net, starts, src, 40, batch_size=batch_size,
                                                                 every=every, memory=memory, sources=sources)}
    assert [got[i] for i in range(len(src))] == ref


def test_a_prompts_keys_and_values_are_kept_once_and_freed_with_its_last_row(monkeypatch):
    """64 samples of one prompt hold one copy of its cross-attention keys and values (not one per
    sample), counted in the memory the lanes may take; the slot is free once its rows finished."""
    net = small_encdec(eos_shift=-0.3)
    sources, starts = cases(1)
    seen = []
    real = decode.Engine.collect

    def collect(self):
        finished = real(self)
        seen.append((self.cross.kv.valid.size(0), self.cross.nbytes(), self.held(), len(self.cross.slot)))
        return finished
    monkeypatch.setattr(decode.Engine, "collect", collect)
    list(decode.generate(net, starts, [0] * 64, 20, temperature=1.0, batch_size=64, sources=sources))
    seen = seen[1:]  # the first collection comes before any row joined
    assert {n for n, *_ in seen} == {1}  # one slot of keys and values
    assert all(held > cross > 0 for _, cross, held, _ in seen)  # counted in what the lanes hold
    assert seen[0][3] == 1 and seen[-1][3] == 0


def test_samples_do_not_depend_on_batching():
    net = small_encdec()
    sources, starts = cases(3)
    src = [0, 1, 2] * 4
    draw = lambda **kw: sorted((i, ids.tolist(), e) for i, ids, e in decode.generate(  # noqa: E731
        net, starts, src, 30, temperature=1.0, seed=3, sources=sources, **kw))
    assert draw(batch_size=64) == draw(batch_size=2, every=3)


def test_sizes_follow_the_reference():
    """The reference's named sizes (HyperParams.from_name), FFN width from multiple_of=256."""
    want = {"s": (192, 6, 3), "m": (384, 8, 4), "l": (768, 9, 4), "xl": (1152, 16, 12)}
    for size, (d, n, h) in want.items():
        cfg = EncDecConfig.from_size(size, 50)
        assert (cfg.d_model, cfg.n_layer, cfg.n_head) == (cfg.enc_d_model, cfg.enc_n_layer, cfg.enc_n_head) == (d, n, h)
    assert [ffn_width(d) for d in (192, 384, 768, 1152)] == [512, 1024, 2048, 3072]
    assert set(SIZES) == set(model.SIZES)


# --- training, resuming, sampling a run end to end ----------------------------------------------

FAST = ["--train-name", "toy.copy", "--arch", "encdec", "--model-size", "tiny", "--warmup-steps", "5", "--lr", "1e-3",
        "--log-interval", "5", "--eval-interval", "20", "--checkpoint-interval", "10", "--num-test-sequences", "16"]


def test_collate_gives_the_reference_layout_and_the_same_loss_tokens():
    """An encoder-decoder's batch: the prompt `<bos> prompt <eos>`, the response `<bos> trace plan`
    predicting `trace plan <eos>`: the tokens the decoder-only layout takes a loss on, in order."""
    data = type("Split", (), {})()
    g = np.random.default_rng(0)
    parts = {p: [g.integers(4, 20, n).astype(np.uint16) for n in ns] for p, ns in
             (("prompt", (3, 6)), ("trace", (5, 2)), ("plan", (2, 4)))}
    data.flat = {p: np.concatenate(v) for p, v in parts.items()}
    data.lens = {p: np.array([len(a) for a in v]) for p, v in parts.items()}
    data.offsets = lambda p: np.concatenate([[0], np.cumsum(data.lens[p])[:-1]])
    dec, enc = (batches.Sequences.build(data, [0, 1], False, arch) for arch in ("decoder", "encdec"))
    x, y, plan = dec.collate([0, 1])
    (ex, src, mask), ey, eplan = enc.collate([0, 1])
    for i in range(2):
        p = parts["prompt"][i]
        assert src[i][mask[i]].tolist() == [BOS, *p.tolist(), EOS]
        assert ey[i][ey[i] >= 0].tolist() == y[i][y[i] >= 0].tolist()
        assert eplan[i][ey[i] >= 0].tolist() == plan[i][y[i] >= 0].tolist()
        assert ex[i][ey[i] >= 0].tolist() == [BOS, *ey[i][ey[i] >= 0][:-1].tolist()]  # teacher forcing
    assert enc.bucket_lengths.sum(1).tolist() == dec.lengths.tolist()


def test_token_budget_counts_prompt_and_response_padding():
    """Two parts padded each on its own: a share's padded tokens are rows x (longest prompt + longest
    response), within the budget, even where the longest sum is smaller."""
    g = np.random.default_rng(1)
    parts = np.stack([g.integers(2, 40, 500), g.integers(2, 40, 500)], 1)
    for budget in (60, 200):
        for batch in batches.epoch_batches(parts, 0, 0, 1, 2, budget):
            for share in (batch[0::2], batch[1::2]):
                assert len(share) == 1 or len(share) * parts[share].max(0).sum() <= budget


def weights(store, run_id):
    return load_checkpoint(store, run_id)["model"]


def test_kill_and_resume_equals_uninterrupted(store, pauses):
    """An encoder-decoder run with a token budget and model selection, killed after its step-35 log
    (checkpoint at 30) and relaunched, ends bit-exact with an uninterrupted one."""
    make_toy_dataset(store.db)
    args = [*FAST, "--train-steps", "40", "--seed", "3", "--batch-tokens", "120", "--patience", "3", "--eval-tasks", "4",
            "--eval-interval", "10"]
    r = run_cli("train.py", "single", "--run-id", "straight", *args)
    assert "model tiny encdec" in r.stdout and "best step" in r.stdout
    proc = subprocess.Popen([sys.executable, "train.py", "single", "--run-id", "killed", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, env={**os.environ, **pauses.env("step-35")})
    pauses.wait("step-35", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.get_run("killed")["checkpoint"]["step"] == 30
    store.runs.update_one({"_id": "killed"}, {"$set": {"lease.expires": 0}})  # as if its lease had run out
    r = run_cli("train.py", "single", "--run-id", "killed", *args)
    assert "resuming killed from step 30" in r.stdout
    a, b = weights(store, "straight"), weights(store, "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "encoder.blocks.0.attn.qkv.weight" in a
    logs = lambda run: [(x["split"], x["step"], x["loss"]) for x in store.get_logs(run)]  # noqa: E731
    assert logs("straight") == logs("killed")


def test_arch_is_refused_on_continuing_a_run_of_the_other(store):
    make_toy_dataset(store.db)
    dec = [a for a in FAST if a not in ("--arch", "encdec")]
    run_cli("train.py", "single", "--run-id", "dec", *dec, "--train-steps", "5")
    r = run_cli("train.py", "single", "--run-id", "dec", "--arch", "encdec", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "'dec' is a decoder run" in r.stderr and "--arch encdec" in r.stderr
    assert store.get_run("dec")["config"]["arch"] == "decoder"
    out = run_cli("admin.py", "show", "--run-id", "dec").stdout
    assert any(line.split() == ["arch", "decoder"] for line in out.splitlines())


def test_two_processes_equal_one_and_start_from(store):
    """DDP under torchrun equals one process on the same global batch; a run starts from another's
    checkpoint, and a decoder-only run cannot start from an encoder-decoder's."""
    make_toy_dataset(store.db)
    common = [*FAST, "--train-steps", "10", "--seed", "1"]
    run_cli("train.py", "single", "--run-id", "e1", *common, "--batch-size", "8")
    run_cli("train.py", "single", "--run-id", "e2", *common, "--batch-size", "4", nproc=2)
    a, b = weights(store, "e1"), weights(store, "e2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    run_cli("train.py", "single", "--run-id", "e3", *common, "--start-checkpoint", "e1", "--train-steps", "5")
    assert store.get_run("e3")["status"] == "finished"
    dec = [x for x in common if x not in ("--arch", "encdec")]
    r = run_cli("train.py", "single", "--run-id", "d1", *dec, "--start-checkpoint", "e1", check=False)
    assert r.returncode == 1 and "another model" in r.stderr and store.get_run("d1") is None


def test_eval_samples_scores_and_bootstraps_an_encdec_run_on_tiny_mazes(store):
    maze = "maze.10-by-10-deterministic.simple"
    run_cli("data.py", "maze", "--size", "10", "--num-train", "24", "--num-test", "8", "--chunk", "2", "--workers", "1")
    r = run_cli("train.py", "single", "--run-id", "ed", "--train-name", maze, "--arch", "encdec", "--model-size", "tiny",
                "--warmup-steps", "2", "--lr", "1e-3", "--log-interval", "5", "--eval-interval", "5",
                "--checkpoint-interval", "5", "--num-test-sequences", "8", "--batch-size", "4", "--train-steps", "5",
                "--eval-tasks", "3", "--patience", "2")
    assert "of 3 tasks" in r.stdout and store.get_logs("ed", "test")[-1]["rollout_tasks"] == 3
    args = ["eval.py", "--run-id", "ed", "--num-tasks", "3", "--samples", "2", "--max-tokens", "60"]
    out = run_cli(*args, "--scoring", "reference").stdout
    assert "0 stored, 6 to generate" in out and "optimal %" in out and "(reference scoring)" in out
    assert "6 stored, 0 to generate" in run_cli(*args, "--checkpoint", "latest").stdout
    assert "0 stored, 6 to generate" in run_cli(*args, "--checkpoint", "best").stdout
    out = run_cli("eval.py", "--run-id", "ed", "--num-tasks", "3", "--samples", "1", "--temperature", "0",
                  "--max-tokens", "60", "--prefix-len", "7").stdout
    assert "starting after 7 trace tokens" in out
    test = dataset.load_split(store.db, maze, "test")
    for d in store.responses.find({"run_id": "ed", "pkey": {"$regex": "prefix_len"}}):
        row = int(np.flatnonzero(test.ids == d["task"])[0])
        assert np.array_equal(np.frombuffer(d["tokens"], dataset.DTYPE)[:7], test.get(row, "trace")[:7])
    r = run_cli("eval.py", "bootstrap", "--run-id", "ed", "--num-tasks", "6", "--samples", "1", "--max-tokens", "60")
    assert "6 train sequences" in r.stdout and len(dataset.load_split(store.db, "bootstrap.ed", "train").ids) == 6


@pytest.mark.parametrize("name,enc", [("small", (192, 3, 6)), ("medium", (384, 4, 8)), ("large", (768, 4, 9))])
def test_a_reference_sweep_entry_trains_at_the_sizes_it_names(name, enc):
    """`train.py sweep --arch encdec` on a reference sweep file: the encoder and decoder it names."""
    path = ROOT / f"config/sweep/maze_sweep_rep_det_{name}.json"
    entry = json.loads(path.read_text())[0]
    r = run_cli("train.py", "sweep", "--sweep", path, "--index", "0", "--arch", "encdec", "--dry-run")
    cfg = json.loads(r.stdout)
    assert cfg["arch"] == "encdec" and REFERENCE_NAMES[cfg["model_size"]] == (entry["encoder"], entry["decoder"])
    assert SIZES[cfg["model_size"]] == (enc, enc)
    assert json.loads(run_cli("train.py", "sweep", "--sweep", path, "--index", "0", "--dry-run").stdout)["arch"] == "decoder"
