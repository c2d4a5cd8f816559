"""Prompting a run's model by hand (`eval.py prompt`): its responses to a prompt typed as tokens, or
the log-probability of each token of a given response.

The prompt and response are typed without their markers; they are laid out as training sequences
are (batches.Sequences): decoder-only `<bos> prompt <sep> response <eos>`, an encoder-decoder's
prompt `<bos> prompt <eos>` with the response `<bos> response <eos>`. Token ids are the run's
checkpoint's vocabulary (its dataset's). Responses are sampled by the sampling engine (decode.py) in
fp32, sample i from the noise keyed by (seed, i): the same seed gives the same responses, and
sample i does not depend on how many are drawn. A response leaves out the start marker and ends with
`<eos>` when the model wrote it."""
import json

import numpy as np
import torch
import torch.nn.functional as F

import decode
import devices
from dataset import BOS, EOS, SEP, SPECIALS
from encdec import EncoderDecoder
from errors import ConfigError
from rollouts import load_model, max_tokens_flag, reference_limit


def add_flags(p):
    p.add_argument("--run-id", required=True)
    p.add_argument("--checkpoint", default="latest", metavar="{latest,best}",
                   help="latest (default): the run's current checkpoint; best: its best (train.py --patience)")
    p.add_argument("--prompt", required=True, help="the prompt's tokens separated by spaces, without <bos>/<eos>")
    p.add_argument("--response", help="score these response tokens (without <eos>: it is added and scored last) "
                                      "instead of sampling: the log-probability of each given the ones before it")
    p.add_argument("--greedy", action="store_true", help="one response, the most likely token at each step")
    p.add_argument("--samples", type=int, help="responses drawn (default 1)")
    p.add_argument("--temperature", type=float, help="softmax(logits / T) (default 1.0; 0 = greedy)")
    p.add_argument("--seed", type=int, help="the noise the samples are drawn from (default 0)")
    p.add_argument("--max-tokens", type=max_tokens_flag, default="reference", metavar="{N,reference}",
                   help="generated tokens per response, <eos> included (default reference: the reference's limit "
                        "for the run's task)")
    p.add_argument("--json", action="store_true",
                   help='print {"responses": [[token, ...], ...]}, or with --response {"response": [...], '
                        '"logprobs": [...]}')
    devices.add_flags(p)
    p.set_defaults(fn=cmd_prompt)


def check_flags(args):
    """The sampling flags: --greedy alone, or --samples/--temperature/--seed; --response samples nothing.
    Fills in their defaults (eval.py's parse_args calls it once)."""
    given = [f for f, v in (("--samples", args.samples), ("--temperature", args.temperature), ("--seed", args.seed))
             if v is not None]
    if args.response is not None and (given or args.greedy):
        raise ConfigError(f"--response scores the given tokens: drop {(given + ['--greedy'])[0]}")
    if args.greedy and given:
        raise ConfigError(f"--greedy gives one response at temperature 0: drop {given[0]}")
    args.samples = 1 if args.samples is None else args.samples
    args.temperature = 0.0 if args.greedy else 1.0 if args.temperature is None else args.temperature
    args.seed = 0 if args.seed is None else args.seed
    for flag, value, least in (("--samples", args.samples, 1), ("--temperature", args.temperature, 0),
                               ("--max-tokens", args.max_tokens, 1)):
        if value != "reference" and not value >= least:  # a NaN temperature too
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if args.temperature == 0 and args.samples > 1:
        raise ConfigError("greedy decoding (--temperature 0) gives identical samples: use --samples 1")


def encode_tokens(text, vocabulary, what, run_id):
    """Token ids (int64) of space-separated tokens; ConfigError naming the first unknown or marker token."""
    index, markers = {t: i for i, t in enumerate(vocabulary)}, vocabulary[:len(SPECIALS)]
    tokens = text.split()
    if what == "--prompt" and not tokens:
        raise ConfigError("--prompt holds no token: give the prompt's tokens separated by spaces")
    for t in tokens:
        if t in markers:
            raise ConfigError(f"{what} holds {t}: give it without the markers ({', '.join(markers)}): they are added")
        if t not in index:
            raise ConfigError(f"{what} holds token {t!r}, not in the vocabulary of run {run_id!r}")
    return np.array([index[t] for t in tokens], np.int64)


def inputs(model, prompt):
    """(decoder start, encoder prompt or None): where a response starts, as in training."""
    if isinstance(model, EncoderDecoder):
        return np.array([BOS], np.int64), np.concatenate([[BOS], prompt, [EOS]]).astype(np.int64)
    return np.concatenate([[BOS], prompt, [SEP]]).astype(np.int64), None


@torch.no_grad()
def sample(model, prompt, samples, temperature, seed, max_tokens):
    """[(ids, eos)] of `samples` responses to prompt ids, in sample order (decode.generate, fp32)."""
    start, source = inputs(model, prompt)
    out = decode.generate(model, [start], [0] * samples, max_tokens, temperature, seed, keys=list(range(samples)),
                          batch_size=min(samples, 64), sources=None if source is None else [source])
    return [(ids, eos) for _, ids, eos in sorted(out, key=lambda r: r[0])]


@torch.no_grad()
def logprobs(model, prompt, response):
    """The log-probability of each response id and of the <eos> after it, given the prompt and the ones
    before it: (len(response) + 1,) float64, teacher forced in one forward pass."""
    device = model.head.weight.device
    start, source = inputs(model, prompt)
    seq = torch.as_tensor(np.concatenate([start, response, [EOS]]), device=device)[None]  # (1, T)
    if source is None:
        logits = model(seq[:, :-1])  # (1, T - 1, V)
    else:
        src = torch.as_tensor(source, device=device)[None]  # (1, S)
        logits = model(seq[:, :-1], src=src, src_mask=torch.ones_like(src, dtype=torch.bool))  # (1, T - 1, V)
    n = len(response) + 1  # the last n positions predict the response and its <eos>
    lp = F.log_softmax(logits[0, -n:].float(), -1)  # (n, V)
    return lp.gather(1, seq[0, -n:, None]).squeeze(1).double().cpu().numpy()


def default_limit(store, cfg):
    """The reference's rollout limit for the run's task (its dataset's kind; 10,000 tokens when unknown)."""
    name = cfg.get("test_name") or cfg.get("train_name")
    doc = store.call(lambda db: db.datasets.find_one({"_id": name}, {"task": 1})) if name else None
    return reference_limit((doc or {}).get("task"), bool(cfg.get("plan_only")))


def cmd_prompt(store, args, rank, world, device):
    """eval.py prompt, its flags checked by check_flags."""
    if rank != 0:  # one process answers (under torchrun the others have nothing to do)
        return
    model, ck = load_model(store, args.run_id, device, args.checkpoint)
    vocabulary = ck["vocabulary"]
    prompt = encode_tokens(args.prompt, vocabulary, "--prompt", args.run_id)
    if args.response is not None:
        response = encode_tokens(args.response, vocabulary, "--response", args.run_id)
        tokens = [vocabulary[i] for i in response] + [vocabulary[EOS]]
        lp = logprobs(model, prompt, response)
        if args.json:
            print(json.dumps({"response": tokens, "logprobs": lp.tolist()}))
        else:
            width = max(map(len, tokens))
            print("\n".join(f"{t:<{width}} {v:.6f}" for t, v in zip(tokens, lp)))
        return
    limit = default_limit(store, ck["config"]) if args.max_tokens == "reference" else args.max_tokens
    responses = [[vocabulary[i] for i in ids] + [vocabulary[EOS]] * eos
                 for ids, eos in sample(model, prompt, args.samples, args.temperature, args.seed, limit)]
    if args.json:
        print(json.dumps({"responses": responses}))
    else:
        print("\n".join(" ".join(r) for r in responses))
