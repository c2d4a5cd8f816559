"""Rollouts of a model on a dataset's tasks."""
import numpy as np
import torch

import dataset
import rollouts
from model import ModelConfig, Transformer
from test_decode import naive_greedy


def test_rollouts_from_a_trace_prefix_continue_prompt_and_prefix():
    """--prefix-len K: the model continues `<bos> prompt <sep>` and the first K trace tokens; the
    response holds the prefix, then what was generated."""
    torch.manual_seed(2)
    model = Transformer(ModelConfig(vocab_size=12, d_model=32, n_head=2, d_ff=64, n_layer=2)).double().eval()
    rng = np.random.default_rng(0)
    lens = {"prompt": np.array([4, 6, 3]), "trace": np.array([9, 2, 7]), "plan": np.array([3, 3, 3])}
    flat = {p: rng.integers(4, 12, int(v.sum())).astype(dataset.DTYPE) for p, v in lens.items()}
    split = dataset.Split(np.arange(3), lens, flat, {})
    for k in (0, 5):
        opts = rollouts.Opts(0.0, 12, 0, prefix_len=k)
        got = {p: (list(i), e) for p, i, e in rollouts.rollouts(model, split, [(0, 0), (1, 0), (2, 0)], opts, 4,
                                                           torch.device("cpu"))}
        for r in range(3):
            prefix = split.get(r, "trace")[:k]  # row 1's trace is shorter than 5: all of it
            assert np.array_equal(rollouts.prompt_ids(split, r, k), np.concatenate([[dataset.BOS], split.get(r, "prompt"),
                                                                               [dataset.SEP], prefix]))
            out, eos = naive_greedy(model, rollouts.prompt_ids(split, r, k), 12)
            assert got[(r, 0)] == ([*prefix.tolist(), *out], eos)
