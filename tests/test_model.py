"""The model's fast paths against slow references."""
import math

import pytest
import torch

from model import SIZES, ModelConfig, Transformer, apply_rope, rope


def reference_forward(model, idx):
    """The same network with attention written out: explicit scores, causal mask and softmax."""
    B, T = idx.shape
    cfg = model.cfg
    hd = cfg.d_model // cfg.n_head
    cos, sin = rope(torch.arange(T), hd, cfg.rope_base)
    x = model.embed(idx)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for blk in model.blocks:
        h = blk.attn_norm(x)
        q, k, v = blk.attn.qkv(h).view(B, T, 3, cfg.n_head, hd).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + blk.attn.proj((att @ v).transpose(1, 2).reshape(B, T, cfg.d_model))
        h = blk.ffn_norm(x)
        gate, up = blk.ffn.gate_up(h).chunk(2, -1)
        x = x + blk.ffn.down(torch.nn.functional.silu(gate) * up)
    return model.head(model.norm(x))


def tiny(vocab=37, layers=2):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, d_model=48, n_head=3, d_ff=128, n_layer=layers)).double()


def test_forward_matches_reference_attention():
    model = tiny()
    idx = torch.randint(0, 37, (3, 29))
    torch.testing.assert_close(model(idx), reference_forward(model, idx), rtol=1e-9, atol=1e-9)


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny()
    idx = torch.randint(0, 37, (2, 20))
    other = idx.clone()
    other[:, 12:] = torch.randint(0, 37, (2, 8))
    torch.testing.assert_close(model(idx)[:, :12], model(other)[:, :12])


def test_rope_is_a_rotation_that_depends_on_relative_position():
    q, k = torch.randn(1, 1, 1, 64, dtype=torch.float64), torch.randn(1, 1, 1, 64, dtype=torch.float64)
    def score(i, j):
        ci, si = rope(torch.tensor([i]), 64, 10000.0)
        cj, sj = rope(torch.tensor([j]), 64, 10000.0)
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum()
    assert torch.isclose(score(3, 1), score(10, 8))
    c, s = rope(torch.tensor([5]), 64, 10000.0)
    assert torch.isclose(apply_rope(q, c, s).norm(), q.norm())


def test_kv_cache_decoding_equals_full_forward():
    model = tiny()
    idx = torch.randint(0, 37, (2, 15))
    full = model(idx)
    cache = model.new_cache(2, 32)
    steps = [model(idx[:, :6], cache=cache)]
    for t in range(6, 15):
        steps.append(model(idx[:, t:t + 1], pos=torch.tensor([t]), cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_kv_cache_rows_at_their_own_positions_equal_full_forward():
    """Rows decode at different positions in one static cache; stale keys past a row's position
    (padding of a shorter prompt) are never attended to."""
    model = tiny()
    a, b = torch.randint(1, 37, (1, 12)), torch.randint(1, 37, (1, 7))
    cache = model.new_cache(2, 16)
    prompt = torch.cat([a[:, :5], torch.cat([b[:, :3], torch.zeros(1, 2, dtype=torch.long)], 1)])  # b right-padded
    model(prompt, cache=cache)
    pos = torch.tensor([[5], [3]])
    out = {0: [], 1: []}
    for _ in range(4):  # one token per row per step, each at its own position
        logits = model(torch.stack([a[0, pos[0]], b[0, pos[1]]]), pos=pos, cache=cache)
        out[0].append(logits[0])
        out[1].append(logits[1])
        pos = pos + 1
    torch.testing.assert_close(torch.cat(out[0]), model(a)[0, 5:9], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat(out[1]), model(b)[0, 3:7], rtol=1e-9, atol=1e-9)


def test_left_padded_rows_with_positions_and_mask_match_unpadded():
    model = tiny()
    a = torch.randint(1, 37, (1, 9))
    b = torch.randint(1, 37, (1, 5))
    idx = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])  # b left-padded by 4
    pos = torch.stack([torch.arange(9), (torch.arange(9) - 4).clamp(min=0)])
    keep = torch.tensor([[True] * 9, [False] * 4 + [True] * 5])
    mask = (torch.ones(9, 9, dtype=torch.bool).tril() & keep[:, None, :])[:, None]  # (B, 1, T, T)
    mask |= torch.eye(9, dtype=torch.bool)  # pad rows attend to themselves: no empty softmax
    out = model(idx, pos=pos, mask=mask)
    torch.testing.assert_close(out[0], model(a)[0])
    torch.testing.assert_close(out[1, 4:], model(b)[0])


def test_activation_checkpointing_gives_same_gradients():
    model = tiny()
    idx = torch.randint(0, 37, (2, 12))
    model(idx).sum().backward()
    g1 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing = True
    model(idx).sum().backward()
    for a, p in zip(g1, model.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("size,millions", [("s", 6.2), ("m", 33.6), ("l", 148.6), ("xl", 589.1)])
def test_named_sizes_match_reference_budget(size, millions):
    # non-embedding parameters of the reference encoder + decoder, within 5%
    with torch.device("meta"):
        model = Transformer(ModelConfig.from_size(size, vocab_size=100))
    assert abs(model.num_params(embeddings=False) / 1e6 - millions) / millions < 0.05
    assert SIZES[size]["d_model"] % SIZES[size]["n_head"] == 0


def test_unknown_size_is_rejected():
    with pytest.raises(ValueError, match="unknown model size"):
        ModelConfig.from_size("huge", 10)
