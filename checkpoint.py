"""A run's training state: the model, optimizer and LR schedule built fresh, loaded from a checkpoint
as a resume loads it (every part checked), or started from another run's checkpoint."""
import torch
import torch.nn.functional as F

from batches import Batcher
from errors import CheckpointError
from hparams import TrainConfig, shown
from loss import STATS
from encdec import EncDecConfig, EncoderDecoder
from model import ModelConfig, Transformer

ARCHS = {"decoder": (ModelConfig, Transformer), "encdec": (EncDecConfig, EncoderDecoder)}  # hparams' arch


def model_config(arch, size, vocab_size):
    """The model configuration of an architecture's named size."""
    return ARCHS[arch][0].from_size(size, vocab_size)


def model_from_config(d):
    """A fresh model from a checkpoint's model_config (its keys tell the architecture)."""
    config, net = ARCHS["encdec" if "enc_n_layer" in d else "decoder"]
    return net(config(**d))


def make_optimizer(model, cfg, device):
    """AdamW over two groups, matrices then the rest (norm weights), whatever decays: every checkpoint's
    optimizer state has one layout, so a run can start from any other's state."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    rest_decay = cfg.weight_decay if cfg.decay_params == "all" else 0.0
    return torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": rest_decay}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def start_from(model, opt, init, cfg):
    """Initialise a new run from another run's checkpoint: its weights and, with start_optimizer, its
    AdamW moments and per-parameter step counts (the reference's fine-tuning). Hyper-parameters (lr,
    betas, decay) stay this run's, and its step counter and LR schedule start at 0."""
    why = lambda e: (str(e).splitlines() or [type(e).__name__])[0][:120]
    try:
        model.load_state_dict(init["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"start_checkpoint run {cfg.start_checkpoint!r} has another model ({why(e)})") from None
    if cfg.start_optimizer:
        mine = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        try:
            opt.load_state_dict(init["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"start_checkpoint run {cfg.start_checkpoint!r}: its optimizer state does not fit "
                                  f"({why(e)}); start_optimizer=false takes the weights only") from None
        for g, m in zip(opt.param_groups, mine):
            g.update(m)


def build(cfg, vocab_size, device):
    """A run's model, optimizer and LR schedule, fresh: what a checkpoint's states are loaded into."""
    torch.manual_seed(cfg.seed)
    model = ARCHS[cfg.arch][1](model_config(cfg.arch, cfg.model_size, vocab_size)).to(device)
    opt = make_optimizer(model, cfg, device)
    made = []  # the scheduler once made: its `extension` (an extended run's, kept in its state) bends the LR
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cfg.lr_at(s, made[0].extension if made else None) / cfg.lr)
    sched.extension = None
    made.append(sched)
    return model, opt, sched


def restore(ck, model, opt, sched, batcher, sums):
    """Load a checkpoint's training state into these objects, as a resume does, checking every part
    it reads; ValueError (one line) when one is missing or does not fit. Returns (step, RNG state, log
    sums, model selection state)."""
    try:
        step = ck["step"]
        if type(step) is not int or step < 0:
            raise ValueError(f"step must be a non-negative int, got {shown(step)}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for p, state in opt.state.items():  # load_state_dict checks group sizes, not the tensors' shapes
            for key, t in state.items():
                if key != "step" and (not torch.is_tensor(t) or t.shape != p.shape):
                    raise ValueError(f"optimizer state {key!r} does not fit a parameter of shape {tuple(p.shape)}")
        sc = ck["scheduler"]
        if not isinstance(sc, dict) or sc.get("last_epoch") != step or len(sc.get("base_lrs", ())) != len(opt.param_groups):
            raise ValueError("the LR scheduler state does not match the step and the optimizer")
        ext = sc.get("extension")  # absent: never extended, or from before extensions kept the LR
        if ext is not None and not (isinstance(ext, list) and len(ext) == 2 and type(ext[0]) is int and
                                    0 <= ext[0] <= step and type(ext[1]) is float and 0 <= ext[1] <= 1):
            raise ValueError(f"malformed LR schedule extension {shown(ext)}")
        sched.load_state_dict(sc)
        pos = ck["data"]
        if not isinstance(pos, dict) or sorted(pos) != ["epoch", "index"] or \
                not all(type(v) is int and 0 <= v < 2**62 for v in pos.values()):
            raise ValueError(f"malformed data position {shown(pos)}")
        batcher.load_state_dict(pos)
        rng = ck["rng"]["cpu"]
        torch.Generator().set_state(rng)  # raises on anything that is not a CPU generator state
        log_sums = ck["log_sums"] if "log_sums" in ck else ck["log_acc"]  # log_acc: the key's old name
        if torch.is_tensor(log_sums) and log_sums.shape == (5,):  # from before the exact-sequence counts
            log_sums = F.pad(log_sums, (0, len(sums) - 5))
        if not torch.is_tensor(log_sums) or log_sums.dtype != sums.dtype or log_sums.shape != sums.shape:
            raise ValueError(f"log_sums must be a {sums.dtype} tensor of shape {tuple(sums.shape)}")
        selection = ck.get("selection", {"best": None, "stale": 0})  # absent: from before --patience
        check_selection(selection, step)
    except KeyError as e:
        raise ValueError(f"missing {e}") from None
    except (TypeError, RuntimeError, IndexError) as e:
        raise ValueError((str(e).strip().splitlines() or [type(e).__name__])[0][:200]) from None
    return step, rng, log_sums, selection


# the keys of a best evaluation's record: now (validation tasks alone), and before (the test loss broke ties)
SELECTION_KEYS = (["correct_pct", "optimal_pct", "plan_loss", "step"], ["loss", "optimal_pct", "step"])


def check_selection(sel, step):
    """The model selection state of a checkpoint (train.py --patience): the best evaluation so far
    ({step, optimal_pct, correct_pct (None without rollouts), plan_loss} or None) and the evaluations since."""
    best = sel.get("best") if isinstance(sel, dict) else 0
    number = lambda v: type(v) in (int, float)  # noqa: E731
    if not isinstance(sel, dict) or sorted(sel) != ["best", "stale"] or type(sel["stale"]) is not int or \
            sel["stale"] < 0 or best is not None and not (
                isinstance(best, dict) and sorted(best) in SELECTION_KEYS and
                type(best["step"]) is int and 0 < best["step"] <= step and
                all(number(v) for k, v in best.items() if k in ("loss", "plan_loss")) and
                all(v is None or number(v) for k, v in best.items() if k.endswith("_pct"))):
        raise ValueError(f"malformed selection state {shown(sel)}")


def check_resumable(ck):
    """Raise ValueError (one line) unless a training run can resume from this checkpoint dict."""
    cfg = TrainConfig.from_stored(ck["config"])
    vocab = ck["vocabulary"]
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise ValueError("vocabulary must be a list of token strings")
    model, opt, sched = build(cfg, len(vocab), torch.device("cpu"))
    if ck["model_config"] != model.cfg.to_dict():
        raise ValueError(f"model_config does not match model size {cfg.model_size!r} ({cfg.arch}) with {len(vocab)} tokens")
    if "world_size" in ck and (type(ck["world_size"]) is not int or ck["world_size"] < 1):
        raise ValueError(f"bad world_size {shown(ck['world_size'])}")
    restore(ck, model, opt, sched, Batcher(None, cfg, ck.get("world_size", 1)), torch.zeros(STATS, dtype=torch.float64))


def check_vocabulary(ck, vocab, what, dataset):
    if ck.get("vocabulary") != vocab:
        theirs = ck.get("vocabulary") or []
        diff = next((i for i, (a, b) in enumerate(zip(theirs, vocab)) if a != b), min(len(theirs), len(vocab)))
        raise CheckpointError(f"{what} was trained on another vocabulary than dataset {dataset!r} ({len(theirs)} "
                              f"vs {len(vocab)} tokens, first difference at id {diff}); train on a dataset with its "
                              f"vocabulary")


# the keys of a training checkpoint (an exported file holds the same dict); log_sums, the sums of the logged
# statistics since the last log, is log_acc in checkpoints written before it was renamed
KEYS = {"model", "optimizer", "scheduler", "step", "data", "rng", "log_sums", "config", "model_config", "vocabulary"}


def read_exported(path):
    """Load and check an exported file without running code (weights_only) and without reading it
    all into memory (mmap); raises CheckpointError on anything that is not a whole, valid checkpoint."""
    return check_exported(load_file(path), path)


def load_file(path):
    """A checkpoint file's dict, loaded without running code (weights_only) and without reading it all
    into memory (mmap); CheckpointError when it is no torch.save file of plain data."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # in the project's words: torch's say what its loader met, not what the file is
        unsafe = "weights only load failed" in str(e).lower()  # torch's weights_only refusal
        reason = ("it holds objects other than tensors and plain data, which no checkpoint does (refused "
                  "without loading them)" if unsafe else "not a whole file written by `python admin.py "
                  "export-checkpoint` (empty, cut short, or another format)")
        raise CheckpointError(f"{path}: not a valid checkpoint file: {reason}") from None
    return ck


def check_exported(ck, path):
    """An exported file's dict (load_file), checked as a resume reads it; CheckpointError if it is not one."""
    have = (set(ck) | ({"log_sums"} if "log_acc" in ck else set())) if isinstance(ck, dict) else set()
    if not KEYS <= have:
        raise CheckpointError(f"{path}: not a searchformer checkpoint (missing {sorted(KEYS - have)})")
    try:
        check_resumable(ck)  # everything a resume reads, loaded as a resume loads it
    except Exception as e:
        raise CheckpointError(f"{path}: checkpoint contents are invalid ({str(e).splitlines()[0][:160]})") from None
    return ck
