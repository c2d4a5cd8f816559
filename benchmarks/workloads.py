"""The benchmarks' workloads: sequence lengths as presets measured on generated data or as quantile
points, synthetic splits of random tokens with those lengths, or a real dataset's training split."""
import numpy as np

import dataset
import store

# length quantiles (q, total sequence length), prompt share of the tokens, vocabulary size, measured on
# 2,000 to 5,000 generated training sequences of each (deterministic mazes)
PRESETS = {
    "maze10": ([(0, 242), (.1, 306), (.25, 335), (.5, 382), (.75, 456), (.9, 562), (.99, 728), (1, 817)], 0.28, 121),
    "maze20": ([(0, 731), (.1, 929), (.25, 1050), (.5, 1257), (.75, 1578), (.9, 1998), (.99, 2677), (1, 3055)], 0.32, 431),
    "maze30": ([(0, 1451), (.1, 1878), (.25, 2123), (.5, 2523), (.75, 3103), (.9, 3807), (.99, 5179), (1, 6888)],
               0.36, 941),
    "sokoban": ([(0, 201), (.1, 1199), (.25, 2271), (.5, 4371), (.75, 6977), (.9, 8711), (.99, 10011), (1, 10119)],
                0.02, 82),
}


def parse_quantiles(spec):
    """'L:q,...' -> [(q, L), ...] sorted, starting at q = 0 and ending at q = 1."""
    points = sorted((float(q), int(length)) for length, q in (p.split(":") for p in spec.split(",")))
    if points[0][0] > 0:
        points.insert(0, (0.0, points[0][1]))
    if points[-1][0] < 1:
        points.append((1.0, points[-1][1]))
    return points


def synthetic_split(lengths, prompt_share, vocab, rng):
    """A Split of random tokens whose whole training sequences have the given lengths."""
    body = np.maximum(lengths - 3, 3)  # less <bos>, <sep>, <eos>
    prompt = np.maximum(1, np.round(prompt_share * body)).astype(np.int64)
    plan = np.maximum(1, (body - prompt) // 10)
    lens = {"prompt": prompt, "trace": body - prompt - plan, "plan": plan}
    flat = {p: rng.integers(len(dataset.SPECIALS), vocab, int(n.sum())).astype(dataset.DTYPE) for p, n in lens.items()}
    return dataset.Split(np.arange(len(body)), lens, flat, {})


def load_sequences(args, rng):
    """(split, vocabulary size, description) for --dataset or --lengths."""
    if args.dataset:
        db = store.connect().db
        split = dataset.load_split(db, args.dataset, "train")
        return split, len(dataset.get_dataset(db, args.dataset)["vocabulary"]), f"dataset {args.dataset}"
    points, share, vocab = PRESETS.get(args.lengths) or (parse_quantiles(args.lengths), args.prompt_share, 1000)
    q, lengths = zip(*points)
    sampled = np.interp(rng.random(args.num_seqs), q, lengths).round().astype(np.int64)
    return synthetic_split(sampled, share, args.vocab or vocab, rng), args.vocab or vocab, f"lengths {args.lengths}"

