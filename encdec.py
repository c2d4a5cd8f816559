"""The reference's encoder-decoder (`--arch encdec`), the architecture of every model in the paper.

Encoder: embedding, pre-norm blocks of bidirectional self-attention and SwiGLU, RMSNorm, then a
linear map to the decoder's width (the features). Decoder: embedding, pre-norm blocks of causal
self-attention, cross-attention to the features (no RoPE there, the features are not normalised
again) and SwiGLU, RMSNorm, output layer. As the reference: interleaved RoPE (pairs x[..., 0::2],
x[..., 1::2]), RMSNorm eps 1e-5, FFN width 2/3 of 4 x width rounded up to a multiple of 256, no
biases, PyTorch's default initialisation. Two differences, neither changing a result on unpadded
prompts: the encoder masks the padding of shorter prompts in a batch (the reference's did not, so
its padded prompts saw padding), and q/k/v and the FFN's two input maps are fused (reference_keys
says which weights they concatenate). Our vocabulary has two tokens the reference's has not, <pad>
and <sep>; no response holds either, and their logits are -inf, so that the softmax is over the
reference's tokens alone and an imported model's distribution is exactly the reference's.

Decoding reads the cross-attention keys and values from a CrossKV: computed once per prompt, kept
once per prompt, and read by every row (sample) of that prompt through its index.
"""
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model import FeedForward, KVCache

# (width, heads, layers) of the encoder and of the decoder; s ... xl are the reference's enc-/dec- names
SIZES = {
    "tiny": ((64, 2, 1), (64, 2, 1)),  # tests and smoke runs, not in the paper
    "xs": ((128, 4, 3), (128, 4, 3)),  # CPU runs, not in the paper
    "s": ((192, 3, 6), (192, 3, 6)),  # enc-s / dec-s
    "m": ((384, 4, 8), (384, 4, 8)),  # enc-m-s / dec-m-s
    "l": ((768, 4, 9), (768, 4, 9)),  # enc-l / dec-l
    "xl": ((1152, 12, 16), (1152, 12, 16)),  # enc-xl-2 / dec-xl-2
}
NEVER_EMITTED = (0, 3)  # <pad>, <sep> (dataset.SPECIALS; tests/test_encdec.py checks): no response holds them
REFERENCE_NAMES = {"s": ("enc-s", "dec-s"), "m": ("enc-m-s", "dec-m-s"), "l": ("enc-l", "dec-l"),
                   "xl": ("enc-xl-2", "dec-xl-2")}


def ffn_width(dim, multiple_of=256):
    """The reference's SwiGLU width: 2/3 of 4 x dim, rounded up to a multiple of multiple_of."""
    return -(-int(2 * 4 * dim / 3) // multiple_of) * multiple_of


@dataclass
class EncDecConfig:
    vocab_size: int
    d_model: int = 192  # the decoder's (d_model, n_head, n_layer: the names the sampling engine reads)
    n_head: int = 3
    n_layer: int = 6
    enc_d_model: int = 192
    enc_n_head: int = 3
    enc_n_layer: int = 6
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    multiple_of: int = 256

    @classmethod
    def from_size(cls, size, vocab_size):
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
        (ed, eh, el), (d, h, n) = SIZES[size]
        return cls(vocab_size, d, h, n, ed, eh, el)

    def to_dict(self):
        return asdict(self)


def rope_tables(pos, head_dim, base):
    """The reference's RoPE tables at integer positions pos (..., T): cos, sin (..., T, head_dim/2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim)
    angles = pos.float()[..., None] * inv_freq  # (..., T, hd/2)
    return angles.cos(), angles.sin()


def rope_interleaved(x, cos, sin):
    """Rotate the pairs (x[..., 2i], x[..., 2i+1]) of x (B, H, T, hd) by cos/sin (T, hd/2) or (B, 1, T, hd/2)."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # (B, H, T, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, d, n_head, layer):
        super().__init__()
        self.n_head, self.head_dim, self.layer = n_head, d // n_head, layer
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # [wq; wk; wv]
        self.proj = nn.Linear(d, d, bias=False)  # wo

    def forward(self, x, cos, sin, mask=None, causal=False, cache=None, pos=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd) each
        q, k = rope_interleaved(q, cos, sin), rope_interleaved(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, pos)  # (B, H, S, hd)
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class CrossAttention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head, self.head_dim = n_head, d // n_head
        self.q = nn.Linear(d, d, bias=False)  # wq
        self.kv = nn.Linear(d, 2 * d, bias=False)  # [wk; wv]
        self.proj = nn.Linear(d, d, bias=False)  # wo

    def keys_values(self, feats):
        """feats (B, S, C) -> k, v (B, H, S, hd)."""
        B, S, _ = feats.shape
        k, v = self.kv(feats).view(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x, kv, layer):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        return self.proj(kv.attend(q, layer).transpose(1, 2).reshape(B, T, C))


class EncoderBlock(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        d = cfg.enc_d_model
        self.attn_norm, self.ffn_norm = nn.RMSNorm(d, eps=cfg.norm_eps), nn.RMSNorm(d, eps=cfg.norm_eps)
        self.attn = SelfAttention(d, cfg.enc_n_head, layer)
        self.ffn = FeedForward(d, ffn_width(d, cfg.multiple_of))

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.ffn(self.ffn_norm(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        d, eps = cfg.d_model, cfg.norm_eps
        self.attn_norm, self.cross_norm, self.ffn_norm = (nn.RMSNorm(d, eps=eps) for _ in range(3))
        self.attn, self.cross = SelfAttention(d, cfg.n_head, layer), CrossAttention(d, cfg.n_head)
        self.ffn = FeedForward(d, ffn_width(d, cfg.multiple_of))

    def forward(self, x, cos, sin, kv, kv_layer, mask=None, cache=None, pos=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, causal=True, cache=cache, pos=pos)
        x = x + self.cross(self.cross_norm(x), kv, kv_layer)
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.enc_d_model)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.enc_n_layer))
        self.norm = nn.RMSNorm(cfg.enc_d_model, eps=cfg.norm_eps)
        self.out = nn.Linear(cfg.enc_d_model, cfg.d_model, bias=False)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(DecoderBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)


class CrossKV:
    """Cross-attention keys and values: k, v (n_layer, H, U, S, hd) for U prompts of at most S tokens,
    valid (U, S) their real tokens; index (B,) the prompt of each row, or None (row b is prompt b).
    Rows of one prompt read its one copy: with few prompts, one product over all of them (rows as
    queries, other prompts' keys masked); with many, each layer's rows gathered as it is read."""

    DENSE = 4  # up to this many prompts one product over all of them beats a gather

    def __init__(self, k, v, valid, index=None):
        self.k, self.v, self.valid, self.index = k, v, valid, index
        U, S = valid.shape
        self.mask = valid[:, None, None, :] if index is None else None  # (B, 1, 1, S)
        if index is not None and U <= self.DENSE:  # row b reads prompt index[b]'s keys: (1, 1, B, U * S)
            own = index[:, None, None] == torch.arange(U, device=index.device)[None, :, None]  # (B, U, 1)
            self.mask = (own & valid[None]).view(1, 1, -1, U * S)

    def rows(self, index):
        """The same keys and values, read by rows with these prompt indices (B,)."""
        return CrossKV(self.k, self.v, self.valid, index)

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.valid))

    def attend(self, q, layer):
        """q (B, H, T, hd) -> (B, H, T, hd): attention of layer `layer` over each row's prompt."""
        k, v = self.k[layer].type_as(q), self.v[layer].type_as(q)  # (H, U, S, hd)
        H, U, S, hd = k.shape
        if self.index is None:
            return F.scaled_dot_product_attention(q, k.transpose(0, 1), v.transpose(0, 1), attn_mask=self.mask)
        if U <= self.DENSE and q.size(2) == 1:  # the rows are the queries of one product
            y = F.scaled_dot_product_attention(q.transpose(0, 2), k.reshape(1, H, U * S, hd),
                                               v.reshape(1, H, U * S, hd), attn_mask=self.mask)
            return y.transpose(0, 2)  # (B, H, 1, hd)
        kr, vr = (t.index_select(1, self.index).transpose(0, 1) for t in (k, v))  # (B, H, S, hd)
        return F.scaled_dot_product_attention(q, kr, vr, attn_mask=self.valid[self.index][:, None, None, :])


class CrossKVPool:
    """The cross-attention keys and values of the prompts being decoded (an encoder-decoder): the
    encoder runs once per prompt when its first rows join, its keys and values are kept once, in a
    slot that every row of the prompt reads (Lane.mem), and the slot is freed when its last row
    finishes. Slots double when they run out."""

    def __init__(self, model, sources, dtype):
        self.model, self.sources, self.dtype = model, sources, dtype
        self.S = max(len(s) for s in sources)  # the longest prompt
        self.slot, self.refs, self.free = {}, {}, []  # prompt -> slot, prompt -> rows not finished, free slots
        self.kv = self.grown(0)

    def grown(self, n):
        """A CrossKV of n slots holding the current slots' keys and values."""
        cfg, device = self.model.cfg, self.model.head.weight.device
        shape = (cfg.n_layer, cfg.n_head, n, self.S, cfg.d_model // cfg.n_head)
        kv = CrossKV(torch.zeros(shape, dtype=self.dtype, device=device), torch.zeros(shape, dtype=self.dtype, device=device),
                     torch.zeros(n, self.S, dtype=torch.bool, device=device))
        if n and self.kv.valid.size(0):
            old = self.kv.valid.size(0)
            kv.k[:, :, :old], kv.v[:, :, :old], kv.valid[:old] = self.kv.k, self.kv.v, self.kv.valid
        return kv

    def nbytes(self):
        return self.kv.nbytes()

    def add(self, prompts, rows, autocast):
        """Rows join, rows[u] of them for prompts[u]: a prompt with no slot is encoded into one (one
        encoder pass for all of them). Returns the prompts' keys and values as a CrossKV whose row u
        reads prompts[u] (for the prefill)."""
        new = [p for p in prompts if p not in self.slot]
        for p, n in zip(prompts, rows):
            self.refs[p] = self.refs.get(p, 0) + n
        if new:
            self.encode(new, autocast)
        return self.kv.rows(torch.as_tensor([self.slot[p] for p in prompts], device=self.kv.k.device))

    def encode(self, prompts, autocast):
        n = self.kv.valid.size(0)
        if len(self.free) < len(prompts):
            size = max(1, n)
            while size - n + len(self.free) < len(prompts):
                size *= 2
            self.kv, self.free = self.grown(size), self.free + list(range(n, size))
        device = self.kv.k.device
        S = max(len(self.sources[p]) for p in prompts)
        src = torch.zeros(len(prompts), S, dtype=torch.long)  # right-padded, the padding masked
        for u, p in enumerate(prompts):
            src[u, :len(self.sources[p])] = torch.as_tensor(np.asarray(self.sources[p], np.int64))
        valid = (torch.arange(S)[None] < torch.tensor([len(self.sources[p]) for p in prompts])[:, None]).to(device)
        with autocast:
            chunk = self.model.cross_kv(self.model.encode(src.to(device), valid), valid)  # k, v (L, H, u, S, hd)
        for p in prompts:
            self.slot[p] = self.free.pop(0)
        d = torch.as_tensor([self.slot[p] for p in prompts], device=device)
        self.kv.k[:, :, d, :S], self.kv.v[:, :, d, :S] = chunk.k.to(self.dtype), chunk.v.to(self.dtype)
        self.kv.valid[d] = False
        self.kv.valid[d, :S] = valid

    def release(self, prompt):
        """A row of this prompt finished; the last one frees its slot."""
        self.refs[prompt] -= 1
        if not self.refs[prompt]:
            self.free.append(self.slot.pop(prompt))
            del self.refs[prompt]


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.activation_checkpointing = False  # set by the trainer for the largest models

    @property
    def head(self):  # the output layer: the sampling engine reads the device and dtype off it
        return self.decoder.head

    def num_params(self, embeddings=True):
        n = sum(p.numel() for p in self.parameters())
        emb = self.encoder.embed.weight.numel() + self.decoder.embed.weight.numel() + self.head.weight.numel()
        return n if embeddings else n - emb

    def _run(self, block, *args):
        if self.activation_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def encode(self, src, src_mask):
        """src (B, S) token ids, src_mask (B, S) True on real tokens -> features (B, S, d_model)."""
        S = src.size(1)
        cos, sin = rope_tables(torch.arange(S, device=src.device), self.cfg.enc_d_model // self.cfg.enc_n_head,
                               self.cfg.rope_base)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S): padding is no key (the reference attended to it)
        x = self.encoder.embed(src)
        for block in self.encoder.blocks:
            x = self._run(block, x, cos, sin, mask)
        return self.encoder.out(self.encoder.norm(x))

    def cross_kv(self, feats, src_mask):
        """Every decoder layer's cross-attention keys and values of features (B, S, C): a CrossKV whose
        row b is prompt b."""
        kv = [block.cross.keys_values(feats) for block in self.decoder.blocks]  # (B, H, S, hd) pairs
        k = torch.stack([k for k, _ in kv]).transpose(1, 2)  # (L, H, B, S, hd)
        v = torch.stack([v for _, v in kv]).transpose(1, 2)
        return CrossKV(k, v, src_mask)

    def forward(self, idx, src=None, src_mask=None, pos=None, cache=None, keep=None, memory=None):
        """Decoder logits (B, T, V) for response tokens idx (B, T), given the prompt src (B, S) with
        src_mask (B, S) (training), or the cross-attention keys and values `memory` (decoding).

        pos, cache and keep as in model.Transformer.forward: positions (T,) or (B, T); a KVCache of
        the decoder's self-attention written at pos; (N,) flat indices whose logits alone are made."""
        cfg = self.cfg
        feats = self.encode(src, src_mask) if memory is None else None  # (B, S, C)
        if pos is None:
            pos = torch.arange(idx.size(1), device=idx.device)  # (T,)
        cos, sin = rope_tables(pos, cfg.d_model // cfg.n_head, cfg.rope_base)
        if pos.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd/2)
        mask = None
        if cache is not None:  # positions beyond a query's own may hold stale keys: never attend to them
            mask = torch.arange(cache.window, device=idx.device) <= pos[..., None]  # (T, S) or (B, T, S)
            mask = mask[:, None] if mask.dim() == 3 else mask
        x = self.decoder.embed(idx)  # (B, T, C)
        for i, block in enumerate(self.decoder.blocks):
            if memory is None:  # each layer's keys and values made inside it (checkpointed with it)
                x = self._run(self._fresh_block, block, x, cos, sin, feats, src_mask, mask, cache, pos)
            else:
                x = block(x, cos, sin, memory, i, mask, cache, pos)
        if keep is not None:
            x = x.flatten(0, 1).index_select(0, keep)  # (N, C)
        logits = self.decoder.head(self.decoder.norm(x))  # (B, T, V) or (N, V)
        logits[..., list(NEVER_EMITTED)] = float("-inf")  # the reference's softmax: over its own tokens
        return logits

    @staticmethod
    def _fresh_block(block, x, cos, sin, feats, src_mask, mask, cache, pos):
        k, v = block.cross.keys_values(feats)  # (B, H, S, hd)
        kv = CrossKV(k.transpose(0, 1)[None], v.transpose(0, 1)[None], src_mask)
        return block(x, cos, sin, kv, 0, mask, cache, pos)

    def new_cache(self, batch, max_len, dtype=None, storage=None):
        cfg = self.cfg
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len, cfg.d_model // cfg.n_head, self.head.weight.device,
                       dtype or self.head.weight.dtype, storage)


def reference_keys(cfg):
    """The one mapping from the reference's state-dict keys (without `module.model.`) to this module's:
    {our key: [their keys]}, concatenated along dim 0 in that order (q/k/v and the FFN's w1/w3 are
    fused here). The reference's RoPE tables (`*.rope.cos_param`, `*.rope.sin_param`) have no key
    here: they are computed (rope_tables)."""
    keys = {"encoder.embed.weight": ["encoder.embedding.weight"], "encoder.norm.weight": ["encoder.output.0.weight"],
            "encoder.out.weight": ["encoder.output.1.weight"], "decoder.embed.weight": ["decoder.embedding.weight"],
            "decoder.norm.weight": ["decoder.output.0.weight"], "decoder.head.weight": ["decoder.output.1.weight"]}
    for part, n in (("encoder", cfg.enc_n_layer), ("decoder", cfg.n_layer)):
        for i in range(n):
            ours, theirs = f"{part}.blocks.{i}.", f"{part}.layers.{i}."
            keys.update({ours + "attn_norm.weight": [theirs + "attention_norm.weight"],
                         ours + "attn.qkv.weight": [theirs + f"attention.w{x}.weight" for x in "qkv"],
                         ours + "attn.proj.weight": [theirs + "attention.wo.weight"],
                         ours + "ffn_norm.weight": [theirs + "ffn_norm.weight"],
                         ours + "ffn.gate_up.weight": [theirs + "feed_forward.w1.weight", theirs + "feed_forward.w3.weight"],
                         ours + "ffn.down.weight": [theirs + "feed_forward.w2.weight"]})
            if part == "decoder":
                keys.update({ours + "cross_norm.weight": [theirs + "attention_feat_norm.weight"],
                             ours + "cross.q.weight": [theirs + "attention_feat.wq.weight"],
                             ours + "cross.kv.weight": [theirs + f"attention_feat.w{x}.weight" for x in "kv"],
                             ours + "cross.proj.weight": [theirs + "attention_feat.wo.weight"]})
    return keys


def from_reference(state, cfg):
    """A state dict of ours from the reference's (keys without `module.model.`); KeyError names a
    missing key."""
    return {ours: torch.cat([state[k] for k in theirs]) for ours, theirs in reference_keys(cfg).items()}


def reference_state_keys(cfg):
    """The reference's state-dict keys (without `module.model.`) in its order, RoPE tables included: each
    of encoder and decoder has one table pair (`rope.cos_param`, `rope.sin_param`), repeated under every
    layer's `attention.rope.` key."""
    keys = []
    for part, n in (("encoder", cfg.enc_n_layer), ("decoder", cfg.n_layer)):
        keys += [f"{part}.embedding.weight", f"{part}.rope.cos_param", f"{part}.rope.sin_param"]
        attns, norms = (("attention", "attention_feat"), ("attention_norm", "attention_feat_norm", "ffn_norm")) \
            if part == "decoder" else (("attention",), ("attention_norm", "ffn_norm"))
        for i in range(n):
            layer = f"{part}.layers.{i}."
            keys += [layer + "attention.rope.cos_param", layer + "attention.rope.sin_param"]
            keys += [f"{layer}{a}.w{x}.weight" for a in attns for x in "qkvo"]
            keys += [f"{layer}feed_forward.w{x}.weight" for x in "123"] + [f"{layer}{m}.weight" for m in norms]
        keys += [f"{part}.output.0.weight", f"{part}.output.1.weight"]
    return keys


def reference_param_order(cfg):
    """The reference's parameters in `parameters()` order (its optimizer's indices): the state-dict keys,
    each shared RoPE table once, where it is first registered (`<part>.rope.`)."""
    return [k for k in reference_state_keys(cfg) if ".layers." not in k or ".rope." not in k]
