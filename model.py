"""A decoder-only Transformer: pre-norm RMSNorm, RoPE, SwiGLU FFN, no biases, causal SDPA.

The reference was an encoder-decoder; here the prompt is a prefix that carries no loss. Depths are
chosen so that each named size has about the parameters of the reference's encoder plus decoder.
"""
import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# width, heads and FFN hidden size as in the reference; depth ~ reference encoder + decoder budget
SIZES = {
    "tiny": dict(d_model=64, n_head=2, d_ff=256, n_layer=2),  # tests and smoke runs, not in the paper
    "xs": dict(d_model=128, n_head=4, d_ff=512, n_layer=6),  # the CPU quick-start planner, not in the paper
    "s": dict(d_model=192, n_head=3, d_ff=512, n_layer=14),
    "m": dict(d_model=384, n_head=4, d_ff=1024, n_layer=19),
    "l": dict(d_model=768, n_head=4, d_ff=2048, n_layer=21),
    "xl": dict(d_model=1152, n_head=12, d_ff=3072, n_layer=37),
}


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 192
    n_head: int = 3
    d_ff: int = 512
    n_layer: int = 14
    rope_base: float = 10000.0

    @classmethod
    def from_size(cls, size, vocab_size):
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
        return cls(vocab_size=vocab_size, **SIZES[size])

    def to_dict(self):
        return asdict(self)


def rope(pos, head_dim, base):
    """cos and sin tables for integer positions pos (..., T) -> (..., T, head_dim/2) each."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq  # (..., T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x (B, H, T, hd); cos/sin (T, hd/2) or (B, 1, T, hd/2); rotate (first half, second half) pairs
    x1, x2 = x.to(torch.promote_types(x.dtype, torch.float32)).chunk(2, dim=-1)  # bf16 -> fp32, fp64 stays
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Preallocated keys and values, written at positions: (n_layer, B, H, max_len, hd). Each row
    has its own positions, so rows of different lengths share one static buffer. A plain object,
    not a module: torch.compile treats module buffers as fixed shapes, these are dynamic.
    storage: a 1-D tensor of at least 2 * numel elements to hold both, as it is (the caller makes
    sure that every position attention reads holds finite numbers); default new zeros."""

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device, dtype, storage=None):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        n = n_layer * batch * n_head * max_len * head_dim
        self.storage = storage
        if storage is None:
            self.k = torch.zeros(shape, device=device, dtype=dtype)
            self.v = torch.zeros(shape, device=device, dtype=dtype)
        else:
            self.k, self.v = storage[:n].view(shape), storage[n:2 * n].view(shape)
        self.window = max_len  # positions attention reads: the first `window` (no query is beyond them)

    def rows(self, n):
        """The first n rows: a cache on the same buffers (each layer's slice stays contiguous)."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        return view

    def update(self, layer, k, v, pos):
        """Write k, v (B, H, T, hd) at positions pos (T,) or (B, T); return the layer's buffers up to
        the window."""
        kc, vc = self.k[layer], self.v[layer]  # (B, H, S, hd)
        if pos.dim() == 1:  # the same positions for every row (a prefill)
            kc[:, :, pos] = k.to(kc.dtype)
            vc[:, :, pos] = v.to(vc.dtype)
        else:
            rows = torch.arange(k.size(0), device=k.device)[:, None]  # (B, 1)
            kc[rows, :, pos] = k.transpose(1, 2).to(kc.dtype)  # (B, T, H, hd) into (B, T) row/position pairs
            vc[rows, :, pos] = v.transpose(1, 2).to(vc.dtype)
        return kc[:, :, :self.window], vc[:, :, :self.window]


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.n_head, self.head_dim, self.layer = cfg.n_head, cfg.d_model // cfg.n_head, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask=None, cache=None, pos=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v, pos)  # (B, H, S, hd), S the cache's length
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1 and x.device.type == "cpu":
            # one query per row (decoding): two batched matrix-vector products, which read the cache
            # at memory speed when it is contiguous; SDPA's CPU kernels are slower here
            att = (q * self.head_dim ** -0.5) @ k.transpose(-1, -2).to(q.dtype)  # (B, H, 1, S)
            att = att.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else att.add_(mask)
            y = att.softmax(-1) @ v.to(q.dtype)  # (B, H, 1, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), gate and up as one matrix. encdec.py's blocks use it too."""

    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)  # [gate; up]
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)

    def forward(self, x, cos, sin, mask=None, cache=None, pos=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, pos)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=1e-6)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False  # set by the trainer for the largest models
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):  # residual outputs scaled by depth
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layer) ** 0.5)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self, embeddings=True):
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.embed.weight.numel() - self.head.weight.numel()

    def forward(self, idx, pos=None, mask=None, cache=None, keep=None):
        """idx (B, T) token ids -> logits (B, T, V).

        pos: positions (T,) or (B, T) when rows are offset; default 0..T-1. mask: boolean (B, 1, T, S)
        attention mask, True = attend; default causal. cache: a KVCache written at pos; then the
        default mask lets each query see the cached positions up to its own.
        keep: (N,) indices into the flattened B*T positions: logits (N, V) of those only (training
        needs them where a loss is taken, not on the prompt or the padding)."""
        B, T = idx.shape
        if pos is None:
            pos = torch.arange(T, device=idx.device)  # (T,)
        cos, sin = rope(pos, self.cfg.d_model // self.cfg.n_head, self.cfg.rope_base)
        if pos.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd/2) broadcasts over heads
        if cache is not None and mask is None:
            # positions beyond a query's own may hold stale or padding keys: never attend to them
            mask = torch.arange(cache.window, device=idx.device) <= pos[..., None]  # (T, S) or (B, T, S)
            mask = mask[:, None] if mask.dim() == 3 else mask  # (B, 1, T, S) or (T, S)
            if T == 1 and idx.device.type == "cpu":  # decoding on CPU adds it to the scores: build it once
                mask = torch.zeros(mask.shape, device=idx.device).masked_fill_(~mask, float("-inf"))
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                x = checkpoint(block, x, cos, sin, mask, cache, pos, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache, pos)
        if keep is not None:
            x = x.flatten(0, 1).index_select(0, keep)  # (N, C)
        return self.head(self.norm(x))  # (B, T, V) or (N, V)

    def new_cache(self, batch, max_len, dtype=None, storage=None):
        cfg = self.cfg
        dtype = dtype or self.head.weight.dtype
        head_dim = cfg.d_model // cfg.n_head
        return KVCache(cfg.n_layer, batch, cfg.n_head, max_len, head_dim, self.head.weight.device, dtype, storage)
