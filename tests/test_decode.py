"""The decoding engine against naive uncached decoding, and its sampling."""
import weakref

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


class NoEos(Transformer):
    """A model that never gives <eos>."""

    def forward(self, *args, **kw):
        return super().forward(*args, **kw).index_fill(-1, torch.tensor([EOS]), float("-inf"))


def lockstep(monkeypatch):
    """64 samples of one prompt that never end with <eos>: they fill each lane at the same step and
    all want the next lane at once. Returns (model, prompts, src, max_tokens, engine of that call)."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)  # lanes of 16, 32, 48, 80, 105
    torch.manual_seed(1)
    model = NoEos(ModelConfig(vocab_size=9, d_model=32, n_head=2, d_ff=64, n_layer=2)).double().eval()
    prompts, src = [np.array([1, 5, 6, 7, 3])], [0] * 64
    eng = decode.Engine(model, 5, 101, 1.0, 64, None, None, None, False, 8)
    return model, prompts, src, 101, eng


def slot_bytes(model, capacity):
    """One slot of a lane: keys and values (and the scratch position), tokens by position."""
    return decode.bytes_per_token(model.cfg, torch.float64) * (capacity + 1) + 8 * (capacity + 2)


def track_cache_memory(monkeypatch):
    """Patch new_storage to record the peak of the lane caches' live bytes (spares included)."""
    live, peak = [], [0]

    def storage(numel, dtype, device):
        t = torch.empty(numel, dtype=dtype, device=device)
        live[:] = [r for r in live if r() is not None] + [weakref.ref(t)]
        peak[0] = max(peak[0], sum(r().numel() * r().element_size() for r in live))
        return t

    monkeypatch.setattr(decode, "new_storage", storage)
    return peak


def test_lockstep_samples_keep_the_caches_within_the_memory_budget(monkeypatch):
    """Every larger lane is wanted by all 64 rows at once: it opens only as wide as the budget
    allows (a third of the first lane here), the other rows wait, and the samples are those drawn
    with memory to spare."""
    model, prompts, src, limit, eng = lockstep(monkeypatch)
    first = 64 * slot_bytes(model, eng.caps[0])
    budget = first + first // 3 + sum(slot_bytes(model, c) for c in eng.caps[1:])
    free = run(model, prompts, src, limit, temperature=1.0, batch_size=64)
    assert all(len(o) == limit and not e for o, e in free) and len({tuple(o) for o, _ in free}) == 64
    peak = track_cache_memory(monkeypatch)
    assert run(model, prompts, src, limit, temperature=1.0, batch_size=64, memory=budget) == free
    assert first < peak[0] <= budget


def test_emptied_lanes_give_their_memory_to_the_next(monkeypatch):
    """With room for two full-width larger lanes at once, each of the four opens at full width: the
    one the rows left is freed before the next is needed."""
    model, prompts, src, limit, eng = lockstep(monkeypatch)
    widest = max(64 * (slot_bytes(model, a) + slot_bytes(model, b)) for a, b in zip(eng.caps[1:], eng.caps[2:]))
    budget = 64 * slot_bytes(model, eng.caps[0]) + widest + sum(slot_bytes(model, c) for c in eng.caps[1:])
    opened = []
    new_lane = decode.Engine.new_lane
    monkeypatch.setattr(decode.Engine, "new_lane", lambda self, slots, capacity, room=None: (
        opened.append((capacity, slots)), new_lane(self, slots, capacity, room))[1])
    run(model, prompts, src, limit, temperature=1.0, batch_size=64, memory=budget)
    assert opened == [(c, 64) for c in eng.caps]


@pytest.mark.parametrize("trim,all_slots", [(True, False), (False, True)])
@pytest.mark.parametrize("memory", [None, 1, 250_000])
def test_gpu_paths_forced_on_cpu_equal_naive_decoding(monkeypatch, trim, all_slots, memory):
    """What only a GPU runs, forced on CPU: eager steps that attend only up to the furthest running
    row (trim), and steps over every slot of a lane, free ones included, as the compiled step takes
    them. Lane moves and waits for memory (a budget of 1 byte, and one of a few slots), cache memory
    never cleared (NaN here): the tokens are still those of plain greedy decoding."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    monkeypatch.setattr(decode, "new_storage", lambda n, dtype, device: torch.full((n,), float("nan"), dtype=dtype))
    init = decode.Engine.__init__

    def forced(self, *args):
        init(self, *args)
        self.trim, self.compiled = trim, all_slots

    monkeypatch.setattr(decode.Engine, "__init__", forced)
    model = small_model(eos_shift=-0.3)
    prompts, src = prompts_and_rows()
    ref = [naive_greedy(model, prompts[s], 70) for s in src]
    assert run(model, prompts, src, 70, batch_size=3, every=2, memory=memory) == ref


class NeverEnds(torch.nn.Module):
    """A model that never writes <eos>: its rows run to the limit."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cfg, self.head = net, net.cfg, net.head

    def new_cache(self, *a, **kw):
        return self.net.new_cache(*a, **kw)

    def forward(self, idx, **kw):
        return self.net(idx, **kw).index_fill(-1, torch.tensor([EOS]), float("-inf"))


def test_the_tally_follows_rows_that_run_long_without_finishing(monkeypatch):
    """on_collect sees every collection, also while no row finishes: rows that never write <eos> are
    counted running until they reach the limit, the furthest one's tokens come near it, and the
    tokens add up to the responses' lengths (rows moving up lanes included)."""
    monkeypatch.setattr(decode, "first_capacity", lambda prompt_len: 16)
    model = NeverEnds(small_model())
    prompts, src = prompts_and_rows()
    seen = []
    out = list(decode.generate(model, prompts, src, 40, batch_size=4, every=3,
                               on_collect=lambda t: seen.append((t.waiting, t.running, t.longest, t.tokens, t.finished))))
    assert all(len(ids) == 40 and not eos for _, ids, eos in out)
    tail = [s for s in seen if s[0] == 0 and s[1] > 0]  # nothing waits, rows still run: no response comes
    assert len(tail) >= 40 // 3 - 1 and max(s[2] for s in tail) > 40 - 3 and all(s[2] <= 40 for s in tail)
    assert [s[1] for s in tail] == sorted((s[1] for s in tail), reverse=True)  # rows only leave
    assert seen[-1] == (0, 0, 0, 40 * len(src), len(src))
    assert all(s[1] + s[4] == len(src) for s in seen if s[0] == 0)  # running or finished once none waits
    assert all(a[3] <= b[3] for a, b in zip(seen, seen[1:]))
