"""The reference's checkpoints (facebookresearch/searchformer's `.ckpt` files, the paper's published
models): read and checked, imported as a run of this project (`admin.py import-checkpoint`,
`bulk-import-checkpoint`), and an encoder-decoder run of ours written in their format
(`admin.py export-checkpoint --format reference`).

A reference file is torch.save of {checkpoint_id, step, config, model, optimizer}: `model` the state
dict of DDP(loss(EncoderDecoder)) (keys `module.model.` + the reference's names, its RoPE tables
included), `optimizer` AdamW's state over its parameters() order (the tables have none), `config` its
TrainConfig.to_dict(). Token ids: the reference's are its dataset's sorted stored vocabulary with
`bos`, `eos` in front; ours are the dataset's vocabulary here, four specials in front (<pad> <bos>
<eos> <sep>). An import moves every embedding and output row, and its AdamW state rows, to our id of
the same token. <pad> and <sep> have no row there and get zero rows: the encoder-decoder never reads
<sep>, masks <pad>, and gives both the logit -inf (encdec.NEVER_EMITTED), so its softmax is the
reference's. The RoPE tables are checked against encdec's and dropped; an export recomputes them.

Large files: both ways load with mmap and write streaming (GridFS on import, a file on export); the
only tensors made are the fused weights (q/k/v, cross k/v, w1/w3) with their AdamW moments and the
moved embedding and output rows, one copy of the model at most.
"""
import json
import os
import re
from pathlib import Path

import gridfs
import torch

import encdec
import errors
from checkpoint import build, check_exported, load_file, model_config
from checkpoint_store import FIELDS, put_checkpoint
from dataset import BOS, EOS, SPECIALS, get_dataset
from errors import CheckpointError, ConfigError, DataError, StoreError
from hparams import TrainConfig
from loss import STATS
from store import check_name, restored
from sweep import MODEL_NAMES

PREFIX = "module.model."  # DDP(NextTokenPredictionLoss(model)): every model key starts with it
FILE_KEYS = {"checkpoint_id", "step", "config", "model", "optimizer"}
ROPE_LEN = 2**16  # the reference's max_seq_len: rows of its RoPE tables
ALL = 2**31 - 1  # num_test_sequences of a reference config whose None means all of them
ROW_KEYS = ("encoder.embed.weight", "decoder.embed.weight", "decoder.head.weight")  # one row per token id
ID_RULE = re.compile(r"[A-Za-z0-9_-]+")  # what the reference's Checkpoint accepts as checkpoint_id
GROUP = {"amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
         "fused": None}  # the rest of the reference's AdamW group (its torch's defaults)


def read(path):
    """("reference", dict) for a reference .ckpt, ("own", dict) for a file of `admin.py export-checkpoint`;
    loaded without running code (weights_only) and mmapped. CheckpointError on anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    ck = load_file(path)
    if isinstance(ck, dict) and FILE_KEYS <= set(ck) and "model_config" not in ck:
        check_file(ck, path)
        return "reference", ck
    return "own", check_exported(ck, path)


def check_file(ck, path):
    """The parts of a reference file every step reads, with their types; CheckpointError names the first bad one."""
    c = ck["config"]
    ok = {"checkpoint_id": isinstance(ck["checkpoint_id"], str), "step": type(ck["step"]) is int and ck["step"] >= 0,
          "model": isinstance(ck["model"], dict) and all(isinstance(k, str) and k.startswith(PREFIX) and
                                                        torch.is_tensor(v) for k, v in ck["model"].items()),
          "optimizer": isinstance(ck["optimizer"], dict) and isinstance(ck["optimizer"].get("state"), dict) and
          isinstance(ck["optimizer"].get("param_groups"), list) and len(ck["optimizer"]["param_groups"]) >= 1,
          "config": isinstance(c, dict) and isinstance(c.get("data"), dict) and isinstance(c.get("optimizer"), dict)}
    bad = next((k for k, good in ok.items() if not good), None)
    if bad:
        raise CheckpointError(f"{path}: not a reference checkpoint: malformed {bad!r}")


def size_of(ref_config, path):
    """Our model_size of the reference's encoder/decoder names; CheckpointError for names it has no size of."""
    names = (ref_config.get("encoder"), ref_config.get("decoder"))
    size = MODEL_NAMES.get(names[0]) if isinstance(names[0], str) else None
    if size is None or encdec.REFERENCE_NAMES[size] != names:
        known = ", ".join("/".join(n) for n in encdec.REFERENCE_NAMES.values())
        raise CheckpointError(f"{path}: unknown model size names {names[0]!r}/{names[1]!r} (known: {known})")
    return size


def translate_config(ref, path, dataset=None):
    """Our TrainConfig of a reference config: encdec of its size names, its datasets (--dataset NAME
    replaces the test dataset, and the training one where they were the same), schedule and batch."""
    d, o = ref["data"], ref["optimizer"]
    if o.get("cycle_length", 1.0) != 1.0 or o.get("cosine_theta", 1.0) != 1.0:
        raise CheckpointError(f"{path}: its LR schedule (cycle_length {o.get('cycle_length')}, cosine_theta "
                              f"{o.get('cosine_theta')}) has no equivalent here (1.0 and 1.0)")
    train, test = d.get("train_name"), d.get("test_name")
    if dataset:
        train, test = (dataset if train == test else train), dataset
    try:
        return TrainConfig.from_dict({
            "train_name": train, "test_name": test, "arch": "encdec", "model_size": size_of(ref, path),
            "plan_only": d.get("plan_only"), "batch_size": d.get("batch_size"), "lr": o.get("lr"),
            "lr_schedule": o.get("lr_schedule"), "warmup_steps": o.get("warmup"), "min_lr_ratio": o.get("lr_min_ratio"),
            "beta1": o.get("beta_0"), "beta2": o.get("beta_1"), "train_steps": o.get("train_steps"),
            "log_interval": ref.get("log_interval"), "eval_interval": ref.get("eval_interval"),
            "checkpoint_interval": ref.get("eval_interval"),  # the reference checkpoints at each evaluation
            "num_train_sequences": d.get("num_train_sequences") or 0,  # None: all
            "num_test_sequences": ALL if d.get("num_test_sequences") is None else d["num_test_sequences"],
            "min_reasoning_len": d.get("min_reasoning_len") or 0, "max_reasoning_len": d.get("max_reasoning_len") or 0,
            "start_checkpoint": ref.get("start_checkpoint") or "", "start_optimizer": True,
            "loss_norm": "sequence", "decay_params": "all", "grad_clip": 0.0})  # the reference's training
    except (ValueError, TypeError, errors.Error) as e:
        raise CheckpointError(f"{path}: its config does not translate ({e})") from None


def reference_config(cfg, run_id, original=None):
    """A reference config dict of our TrainConfig; what ours does not hold (loader settings, the cosine's
    shape) comes from the original config of an imported run, else the reference's defaults."""
    od, oo = (original or {}).get("data", {}), (original or {}).get("optimizer", {})
    data = {"train_name": cfg.train_name, "test_name": cfg.test_name or cfg.train_name, "batch_size": cfg.batch_size,
            "plan_only": cfg.plan_only, "num_train_sequences": cfg.num_train_sequences or None,
            "num_test_sequences": None if cfg.num_test_sequences == ALL else cfg.num_test_sequences,
            "load_batch_size": od.get("load_batch_size", 10000), "num_workers": od.get("num_workers", 2)}
    for key in ("min_reasoning_len", "max_reasoning_len"):
        if key in od or getattr(cfg, key):
            data[key] = getattr(cfg, key)
    out = {"_id": run_id, "data": data, "encoder": encdec.REFERENCE_NAMES[cfg.model_size][0],
           "decoder": encdec.REFERENCE_NAMES[cfg.model_size][1],
           "optimizer": {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "train_steps": cfg.train_steps,
                         "warmup": cfg.warmup_steps, "beta_0": cfg.beta1, "beta_1": cfg.beta2,
                         "cycle_length": oo.get("cycle_length", 1.0), "cosine_theta": oo.get("cosine_theta", 1.0),
                         "lr_min_ratio": cfg.min_lr_ratio},
           "log_interval": cfg.log_interval, "eval_interval": cfg.eval_interval}
    if cfg.start_checkpoint:
        out["start_checkpoint"] = cfg.start_checkpoint
    return out


def read_vocabulary(path):
    """The stored vocabulary in a JSON file: a list of tokens, or the reference's `vocabulary` document
    ({_id, vocabulary: [...]}, as mongoexport writes it)."""
    try:
        v = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the vocabulary file ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed JSON ({e})") from None
    v = v.get("vocabulary") if isinstance(v, dict) else v
    if not isinstance(v, list) or not v or not all(isinstance(t, str) for t in v) or len(set(v)) != len(v):
        raise ConfigError(f"{path}: a vocabulary file holds a JSON list of distinct token strings "
                          f"(or {{\"vocabulary\": [...]}})")
    return v


def reference_tokens(stored):
    """The reference's tokens by id (DictTokenizer): its stored vocabulary sorted, `bos` and `eos` in front."""
    return ["bos", "eos", *sorted(set(stored) - {"bos", "eos"})]


def vocabularies(store, cfg, dataset=None, file_tokens=None):
    """(the reference's tokens by id, our vocabulary, where they came from): the dataset --dataset names or
    else the config's test dataset when it is here, else the stored vocabulary of --vocabulary; with both
    a file and a dataset, the file's tokens are the reference's and the dataset must hold exactly them."""
    doc = get_dataset(store.db, dataset) if dataset else \
        store.db.datasets.find_one({"_id": cfg.test_name, "uid": {"$ne": None}})  # a dataset still being built: none
    if doc is None and file_tokens is None:
        raise ConfigError(f"no vocabulary for the checkpoint's token ids: dataset {cfg.test_name!r} is not here; "
                          f"import it (`python data.py import`), or give --dataset NAME or --vocabulary FILE.json")
    if doc is None:
        ours = [*SPECIALS, *sorted(set(file_tokens) - {"bos", "eos"} - set(SPECIALS))]  # as data.py import makes it
        return reference_tokens(file_tokens), ours, "the vocabulary file"
    ours, where = doc["vocabulary"], f"dataset {doc['_id']!r}"
    if file_tokens is not None:
        have, want = set(ours[len(SPECIALS):]), set(file_tokens) - {"bos", "eos"}
        for what, diff, file in (("lacks", sorted(want - have), "holds"), ("has", sorted(have - want), "lacks")):
            if diff:
                raise DataError(f"{where} {what} {len(diff)} token(s) the vocabulary file {file} "
                                f"({', '.join(diff[:5])}): every id after one would shift; import the reference's "
                                f"dataset (`python data.py import`) or give another --dataset")
        return reference_tokens(file_tokens), ours, f"{where} and the vocabulary file"
    return reference_tokens(ours[len(SPECIALS):]), ours, where


def token_rows(ref_tokens, ours):
    """(len(ours),) int64: the reference's id of each of our ids' token, -1 where it has none (<pad>, <sep>)."""
    ref = {t: i for i, t in enumerate(ref_tokens)}
    ref[SPECIALS[BOS]], ref[SPECIALS[EOS]] = ref.pop("bos"), ref.pop("eos")
    return torch.tensor([ref.get(t, -1) for t in ours])


def move_rows(t, src):
    """Rows of t (N, ...) at the ids src (M,) names (-1: a zero row)."""
    out = t.new_zeros((len(src), *t.shape[1:]))
    have = src >= 0
    out[have] = t[src[have]]
    return out


def meta_build(cfg, vocab_size):
    """This project's model, optimizer and schedule on the meta device: their layout without their memory."""
    with torch.device("meta"):
        return build(cfg, vocab_size, torch.device("meta"))


def rope_table(cfg, part):
    """The reference's RoPE tables of encoder or decoder: cos, sin (1, ROPE_LEN, 1, head_dim/2)."""
    hd = cfg.enc_d_model // cfg.enc_n_head if part == "encoder" else cfg.d_model // cfg.n_head
    cos, sin = encdec.rope_tables(torch.arange(ROPE_LEN), hd, cfg.rope_base)
    return cos[None, :, None], sin[None, :, None]


def reference_shapes(rcfg):
    """{reference key: shape} of the reference's model of this config (its vocabulary included)."""
    with torch.device("meta"):
        ours = encdec.EncoderDecoder(rcfg).state_dict()
    shapes = {k: (ours[o].shape[0] // len(ks), *ours[o].shape[1:]) for o, ks in encdec.reference_keys(rcfg).items()
              for k in ks}
    for part, d, h in (("encoder", rcfg.enc_d_model, rcfg.enc_n_head), ("decoder", rcfg.d_model, rcfg.n_head)):
        shapes.update({k: (1, ROPE_LEN, 1, d // h // 2) for k in encdec.reference_state_keys(rcfg)
                       if k.startswith(part) and ".rope." in k})
    return shapes


def check_model(theirs, rcfg, path):
    """Every key of the reference's layout at the shape its size names give, no other; its RoPE tables the
    ones encdec computes."""
    want = encdec.reference_state_keys(rcfg)
    if set(theirs) != set(want):
        odd = sorted(set(theirs) ^ set(want))
        raise CheckpointError(f"{path}: its model keys are not those of {'/'.join(size_names(rcfg))} "
                              f"({len(odd)} differ, e.g. {odd[0]!r})")
    shapes = reference_shapes(rcfg)
    for part in ("encoder", "decoder"):
        cos, sin = rope_table(rcfg, part)
        checked = set()
        for k in want:
            if k.startswith(part) and ".rope." in k and tuple(theirs[k].shape) == tuple(cos.shape) and \
                    (theirs[k].data_ptr(), k[-9:]) not in checked:  # a shared table once
                table = cos if k.endswith("cos_param") else sin
                if not torch.allclose(theirs[k].float(), table, rtol=0, atol=1e-5):
                    raise CheckpointError(f"{path}: its RoPE table {k!r} is not the reference's (base "
                                          f"{rcfg.rope_base:g}, interleaved pairs)")
                checked.add((theirs[k].data_ptr(), k[-9:]))
    for k in want:
        if tuple(theirs[k].shape) != tuple(shapes[k]) or theirs[k].dtype != torch.float32:
            raise CheckpointError(f"{path}: {k!r} is {str(theirs[k].dtype)[6:]} {tuple(theirs[k].shape)}, not float32 "
                                  f"{tuple(shapes[k])} as {'/'.join(size_names(rcfg))} has it")


def size_names(rcfg):
    size = next(s for s, shape in encdec.SIZES.items() if shape[1] == (rcfg.d_model, rcfg.n_head, rcfg.n_layer))
    return encdec.REFERENCE_NAMES.get(size, (size, size))


def join(ts):
    return ts[0] if len(ts) == 1 else torch.cat(ts)  # one tensor: no copy (a view of the mmapped file)


def to_ours(ck, path, cfg, ref_tokens, ours, run_id):
    """Our checkpoint dict (as train.py writes one, at the reference's step) of a reference file."""
    theirs = {k[len(PREFIX):]: v for k, v in ck["model"].items()}
    rows = theirs.get("encoder.embedding.weight")
    if rows is not None and rows.dim() == 2 and rows.shape[0] != len(ref_tokens):
        raise DataError(f"{path}: the vocabulary gives {len(ref_tokens)} token ids (`bos`, `eos` and "
                        f"{len(ref_tokens) - 2} stored tokens) but the checkpoint's embeddings have {rows.shape[0]} "
                        f"rows: a token it was trained with is missing, or one is extra; give its dataset's "
                        f"vocabulary (--vocabulary FILE.json, or --dataset NAME imported with `python data.py import`)")
    rcfg = model_config("encdec", cfg.model_size, len(ref_tokens))
    check_model(theirs, rcfg, path)
    src = token_rows(ref_tokens, ours)
    mapping = encdec.reference_keys(rcfg)
    model = {k: join([theirs[t] for t in ks]) for k, ks in mapping.items()}
    for k in ROW_KEYS:
        model[k] = move_rows(model[k], src)
    net, opt, sched = meta_build(cfg, len(ours))
    names = {id(p): n for n, p in net.named_parameters()}
    flat = [names[id(p)] for g in opt.param_groups for p in g["params"]]  # our optimizer's indices
    order = {k: i for i, k in enumerate(encdec.reference_param_order(rcfg))}
    ropt = ck["optimizer"]
    group = ropt["param_groups"][0]
    if sorted(i for g in ropt["param_groups"] for i in g.get("params", [])) != list(range(len(order))):
        raise CheckpointError(f"{path}: its optimizer state is not over the {len(order)} parameters of "
                              f"{'/'.join(size_names(rcfg))}")
    state = {}
    for i, name in enumerate(flat):
        parts = [ropt["state"].get(order[t]) for t in mapping[name]]
        if all(p is None for p in parts):
            continue  # never stepped
        if any(p is None for p in parts) or any(sorted(p) != ["exp_avg", "exp_avg_sq", "step"] for p in parts) or \
                any(float(p["step"]) != float(parts[0]["step"]) for p in parts):
            raise CheckpointError(f"{path}: the AdamW state of {mapping[name][0]!r} and the weights fused with it "
                                  f"is malformed")
        s = {"step": parts[0]["step"].clone() if torch.is_tensor(parts[0]["step"]) else torch.tensor(float(parts[0]["step"])),
             **{m: join([p[m] for p in parts]) for m in ("exp_avg", "exp_avg_sq")}}
        if any(s[m].shape != model[name].shape and name not in ROW_KEYS for m in ("exp_avg", "exp_avg_sq")):
            raise CheckpointError(f"{path}: the AdamW state of {mapping[name][0]!r} does not fit its weight")
        if name in ROW_KEYS:
            s = {**s, **{m: move_rows(s[m], src) for m in ("exp_avg", "exp_avg_sq")}}
        state[i] = s
    osd = opt.state_dict()
    osd["state"] = state
    for g in osd["param_groups"]:
        g.update({"lr": float(group["lr"]), "initial_lr": cfg.lr})
    ssd = sched.state_dict()
    ssd.update({"last_epoch": ck["step"], "_step_count": ck["step"] + 1,
                "_last_lr": [float(group["lr"])] * len(osd["param_groups"])})
    return {"model": model, "optimizer": osd, "scheduler": ssd, "run_id": run_id, "step": ck["step"],
            "data": {"epoch": 0, "index": 0}, "rng": {"cpu": torch.Generator().manual_seed(cfg.seed).get_state()},
            "log_sums": torch.zeros(STATS, dtype=torch.float64), "config": cfg.to_dict(),
            "model_config": model_config("encdec", cfg.model_size, len(ours)).to_dict(), "vocabulary": list(ours)}


def import_file(store, path, ck, run_id=None, dataset=None, file_tokens=None, replace=False):
    """Store a reference file (read) as a run; returns its summary line. Nothing is stored on any error."""
    run_id = check_name(run_id or ck["checkpoint_id"])
    old = store.get_run(run_id)
    if old is not None and old.get("status") != "importing" and not replace:  # before the work: put_checkpoint checks again
        raise StoreError(f"run {run_id!r} exists; pass --replace to overwrite it, or --run-id NEW")
    cfg = translate_config(ck["config"], path, dataset)
    ref_tokens, ours, where = vocabularies(store, cfg, dataset, file_tokens)
    try:
        state = to_ours(ck, path, cfg, ref_tokens, ours, run_id)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a reference checkpoint of the layout its config names "
                              f"({(str(e).splitlines() or [type(e).__name__])[0][:120]})") from None
    extra = {"reference": {"checkpoint_id": ck["checkpoint_id"], "step": ck["step"], "config": ck["config"],
                           "file": Path(path).name, "vocabulary": where}}
    put_checkpoint(store, run_id, cfg.to_dict(), state, ck["step"], replace=replace, extra=extra)
    return (f"imported reference checkpoint {path} as run {run_id} (step {ck['step']}, "
            f"{'/'.join(encdec.REFERENCE_NAMES[cfg.model_size])}, token ids from {where})")


def bulk_import(store, folder, dataset=None, file_tokens=None, replace=False):
    """Every *.ckpt (reference) and *.pt (own) file of a folder, one line each; a failed one is named and
    the others still imported. Returns (files, failed)."""
    files = sorted([*Path(folder).glob("*.ckpt"), *Path(folder).glob("*.pt")])
    failed = 0
    for path in files:
        try:
            kind, ck = read(path)
            if kind == "reference":
                print(import_file(store, path, ck, None, dataset, file_tokens, replace))
            else:
                run_id = check_name(ck.get("run_id") or path.stem)
                put_checkpoint(store, run_id, ck["config"], {**ck, "run_id": run_id}, ck["step"], replace=replace)
                print(f"imported {path} as run {run_id} (step {ck['step']})")
        except errors.Error as e:
            failed += 1
            print(f"{path}: not imported: {e}")
    return len(files), failed


def export_file(store, run_id, out_dir, which="latest"):
    """Write the run's checkpoint as the reference's `<run id>.ckpt` in out_dir (through a temporary
    name: an interrupted export leaves no file that looks whole); returns its path."""
    doc = store.require_run(run_id)
    if doc.get("record"):
        raise restored(run_id)
    cfg = TrainConfig.from_stored(doc["config"])
    if cfg.arch != "encdec" or cfg.model_size not in encdec.REFERENCE_NAMES:
        raise ConfigError(f"run {run_id!r} is {cfg.arch} of size {cfg.model_size!r}: only an encdec run of a reference "
                          f"size ({', '.join(encdec.REFERENCE_NAMES)}) has the reference's format")
    if not ID_RULE.fullmatch(run_id):
        raise ConfigError(f"run id {run_id!r} has characters the reference's checkpoint ids refuse (only letters, "
                          f"digits, '-' and '_'); import the run under another id first")
    info = doc.get(FIELDS[which])
    if not info:
        raise StoreError(f"run {run_id!r} has no {which} checkpoint")
    out_dir = Path(out_dir)
    final, part, tmp = out_dir / f"{run_id}.ckpt", out_dir / f".{run_id}.ckpt.partial-{os.getpid()}", \
        out_dir / f".{run_id}.pt.download-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with store.fs.open_download_stream(info["id"]) as f, open(tmp, "wb") as dst:
            for chunk in iter(lambda: f.read(16 << 20), b""):  # to local disk first: torch.load seeks about
                dst.write(chunk)
        ck = load_file(tmp)  # mmapped
        out = to_reference(ck, cfg, run_id, (doc.get("reference") or {}).get("config"))
        torch.save(out, part)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, final)
    except OSError as e:
        raise ConfigError(f"cannot write {final}: {e.strerror or e}") from None
    except (gridfs.errors.NoFile, gridfs.errors.CorruptGridFile):  # its trainer saved a newer one meanwhile
        raise CheckpointError(f"the {which} checkpoint of run {run_id!r} was replaced while it was read; "
                              f"export again") from None
    finally:
        for p in (tmp, part):
            p.unlink(missing_ok=True)
    return final, info["step"]


def to_reference(ck, cfg, run_id, original=None):
    """The reference's checkpoint dict of one of ours (an encdec of a reference size)."""
    vocab = ck["vocabulary"]
    if vocab[:len(SPECIALS)] != SPECIALS:
        raise CheckpointError(f"run {run_id!r}: its vocabulary does not start with {SPECIALS}")
    ref_tokens = reference_tokens(vocab[len(SPECIALS):])
    ours = {t: i for i, t in enumerate(vocab)}
    src = torch.tensor([BOS, EOS, *(ours[t] for t in ref_tokens[2:])])  # our id of each reference id
    rcfg = model_config("encdec", cfg.model_size, len(ref_tokens))
    mapping = encdec.reference_keys(rcfg)
    theirs = {}
    for name, ks in mapping.items():
        t = ck["model"][name].index_select(0, src) if name in ROW_KEYS else ck["model"][name]
        theirs.update(zip(ks, t.chunk(len(ks)) if len(ks) > 1 else [t]))  # views: the file keeps one storage
    for part in ("encoder", "decoder"):
        cos, sin = rope_table(rcfg, part)
        theirs.update({k: cos if k.endswith("cos_param") else sin for k in encdec.reference_state_keys(rcfg)
                       if k.startswith(part) and ".rope." in k})
    model = {PREFIX + k: theirs[k] for k in encdec.reference_state_keys(rcfg)}
    net, opt, _ = meta_build(cfg, len(vocab))
    names = {id(p): n for n, p in net.named_parameters()}
    flat = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    order = {k: i for i, k in enumerate(encdec.reference_param_order(rcfg))}
    state = {}
    for i, s in ck["optimizer"]["state"].items():
        name, ks = flat[i], mapping[flat[i]]
        moments = {m: s[m].index_select(0, src) if name in ROW_KEYS else s[m] for m in ("exp_avg", "exp_avg_sq")}
        for j, k in enumerate(ks):
            state[order[k]] = {"step": s["step"].clone(), **{m: t.chunk(len(ks))[j] for m, t in moments.items()}}
    g = ck["optimizer"]["param_groups"][0]
    group = {"lr": g["lr"], "betas": tuple(g["betas"]), "eps": g["eps"], "weight_decay": g["weight_decay"], **GROUP,
             "initial_lr": g.get("initial_lr", cfg.lr), "params": list(range(len(order)))}
    return {"checkpoint_id": run_id, "step": ck["step"], "config": reference_config(cfg, run_id, original),
            "model": model, "optimizer": {"state": dict(sorted(state.items())), "param_groups": [group]}}
