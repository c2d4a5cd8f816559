"""Search dynamics bootstrapping: choosing, among a task's sampled responses, the one that replaces its
training sequence, and writing the new dataset (`eval.py bootstrap`)."""
import numpy as np

from dataset import PARTS, SPECIALS, DatasetWriter, copy_split, extras, load_split, sequence_key


def shortest_optimal(verdicts, trace_len, only_shorter=False):
    """Index of the response that replaces the sequence: the fewest trace tokens among the correct and
    optimal ones (the first on ties), even when longer than trace_len (the sequence's own), as the
    reference did; with only_shorter, only when shorter. None: keep the sequence."""
    best = None
    for i, v in enumerate(verdicts):
        if v.kind == "optimal" and (not only_shorter or v.trace_len < trace_len) and \
                (best is None or v.trace_len < verdicts[best].trace_len):
            best = i
    return best


def write_bootstrap(db, name, src_doc, test_name, train, rows, chosen, info, overwrite, token=None):
    """Write the bootstrapped dataset: row r of train becomes chosen[r] = (response ids, trace
    length) where there is one. Returns (replaced, mean trace length before, after).

    token (one per command, the same on every retry through Store.call) is recorded with the commit:
    a retry whose earlier try's commit landed (its answer lost) finds its own dataset and writes nothing."""
    before = [int(train.lens["trace"][r]) for r in rows]
    after = [chosen[r][1] if r in chosen else n for r, n in zip(rows, before)]
    stats = len(chosen), float(np.mean(before)) if before else 0.0, float(np.mean(after)) if after else 0.0
    done = db.datasets.find_one({"_id": name}) or {}
    if token is not None and done.get("uid") and done.get("written_by") == token:
        return stats
    writer = DatasetWriter(db, name, src_doc["task"], {**src_doc["params"], "bootstrap": info},
                           src_doc["vocabulary"][len(SPECIALS):], overwrite)
    for r in rows:
        prompt, trace, plan = (train.get(r, p) for p in PARTS)
        if r in chosen:
            ids, cut = chosen[r]
            trace, plan = ids[:cut], ids[cut:]
        writer.add("train", prompt, trace, plan, sequence_key("train", train, r), source_id=int(train.ids[r]),
                   **extras(train, r))
    copy_split(writer, "test", load_split(db, test_name, "test"))
    writer.commit(**({"written_by": token} if token is not None else {}))
    return stats
