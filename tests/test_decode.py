"""The decoding engine against naive uncached decoding, and its sampling."""
import numpy as np
import pytest
import torch

import decode
from dataset import EOS
from model import ModelConfig, Transformer


def naive_greedy(model, prompt, max_tokens):
    """Greedy decoding the slow way: the whole sequence through the model at every step."""
    seq, out = list(prompt), []
    for _ in range(max_tokens):
        t = int(model(torch.tensor([seq]))[0, -1].argmax())
        if t == EOS:
            return out, True
        out.append(t)
        seq.append(t)
    return out, False


def small_model(eos_shift=0.0):
    torch.manual_seed(1)
    model = Transformer(ModelConfig(vocab_size=9, d_model=32, n_head=2, d_ff=64, n_layer=2)).double().eval()
    with torch.no_grad():
        model.head.weight[EOS] += eos_shift  # < 0: rarer <eos>, so some rows run to the limit
    return model


def prompts_and_rows():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 9, (n,), generator=g).numpy() for n in (3, 7, 11, 5, 8, 4)]
    return prompts, [0, 1, 2, 3, 4, 5, 1, 2, 0]


def run(model, prompts, src, max_tokens, **kw):
    got = {i: (list(ids), e) for i, ids, e in decode.generate(model, prompts, src, max_tokens, **kw)}
    assert sorted(got) == list(range(len(src)))
    return [got[i] for i in range(len(src))]


@pytest.mark.parametrize("batch_size,every,memory", [(1, 1, None), (3, 5, None), (64, 16, None), (3, 2, 1), (64, 3, 1)])
def test_greedy_equals_naive_uncached_decoding(monkeypatch, batch_size, every, memory):
    """Right-padded shared prefills, rows that finish and leave, rows that join a running batch,
    rows that fill their lane and move up (first lane of 16 positions), rows that wait for room
    above (memory=1 byte), rows that move down to fill a finished row's slot, lanes that grow: the
    tokens are those of plain greedy decoding."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    model = small_model(eos_shift=-0.3)
    prompts, src = prompts_and_rows()
    ref = [naive_greedy(model, prompts[s], 70) for s in src]
    assert 0 < sum(e for _, e in ref) < len(src) and max(len(o) for o, _ in ref) == 70  # rows of both kinds
    assert run(model, prompts, src, 70, batch_size=batch_size, every=every, memory=memory) == ref


def test_uncleared_cache_memory_is_never_read(monkeypatch):
    """Lane caches are not cleared when allocated (or reused): a row's slot is written or zeroed
    when it enters. Poison fresh cache memory with NaN: greedy tokens still equal naive decoding."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    monkeypatch.setattr(decode, "new_storage", lambda n, dtype, device: torch.full((n,), float("nan"), dtype=dtype))
    model = small_model(eos_shift=-0.3)
    prompts, src = prompts_and_rows()
    ref = [naive_greedy(model, prompts[s], 70) for s in src]
    assert run(model, prompts, src, 70, batch_size=3, every=2) == ref


def test_greedy_with_early_eos_and_limit_one():
    model = small_model()
    prompts, src = prompts_and_rows()
    for limit in (1, 40):
        assert run(model, prompts, src, limit, batch_size=4) == [naive_greedy(model, prompts[s], limit) for s in src]


def test_rows_that_join_and_leave_do_not_change_each_others_samples(monkeypatch):
    """A row's samples depend on the seed and its key only: not on the batch size, on when rows
    are collected, on which rows share its batch or on which lane it is in."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    model = small_model(eos_shift=-0.3)
    prompts, src = prompts_and_rows()
    a = run(model, prompts, src, 60, temperature=1.0, seed=3, batch_size=2, every=2)
    assert a == run(model, prompts, src, 60, temperature=1.0, seed=3, batch_size=64, every=7)  # reproducible
    alone = run(model, prompts, [src[4]], 60, temperature=1.0, seed=3, keys=[4], batch_size=1)
    assert alone == [a[4]]
    assert a != run(model, prompts, src, 60, temperature=1.0, seed=4, batch_size=64)
    assert len({tuple(o) for o, _ in a}) > 3  # samples differ


def test_sampled_rows_stop_at_eos_or_the_limit():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=9, d_model=32, n_head=2, d_ff=64, n_layer=2)).eval()
    got = list(decode.generate(model, [np.array([1, 5, 6, 3])], [0] * 16, 12, temperature=1.0, batch_size=5))
    assert sorted(i for i, _, _ in got) == list(range(16))
    assert all(len(o) == 12 for _, o, e in got if not e)
    assert all(EOS not in o.tolist() and len(o) < 12 for _, o, e in got if e)


def test_gumbel_max_samples_follow_the_softmax():
    """The hashed Gumbel noise picks token v with probability softmax(logits)[v]."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    n = 200_000
    noise = decode.gumbel(torch.arange(n), torch.full((n,), 7), 4)  # (n, 4)
    freq = torch.bincount((logits + noise).argmax(-1), minlength=4).double() / n
    torch.testing.assert_close(freq, logits.softmax(-1), atol=4e-3, rtol=0)


def test_auto_batch_size_follows_the_memory_budget():
    cfg = ModelConfig.from_size("xs", 121)
    cpu = torch.device("cpu")
    assert decode.auto_batch_size(cfg, 120, cpu, memory=64 << 30) == 256
    per_row = decode.bytes_per_token(cfg, torch.float32) * (decode.first_capacity(120) + 1)
    assert decode.auto_batch_size(cfg, 120, cpu, memory=4 * 10 * per_row) == 10
    assert decode.auto_batch_size(cfg, 120, cpu, memory=1) == 1
