"""Sweep files: a JSON list of hyper-parameter dicts; `load(path, index)` gives one entry's TrainConfig,
`run_id(path, index)` the id its run gets when the command line names none.

Keys are TrainConfig's field names, which follow the reference's spelling; the reference's
`encoder` / `decoder` model names (e.g. `enc-m-s`, `dec-m-s`) map to our `model_size`: with arch
encdec exactly those sizes (encdec.REFERENCE_NAMES), decoder-only of about their parameters.
Missing keys take TrainConfig's defaults.
"""
import json
from pathlib import Path

from errors import ConfigError, Error
from hparams import TrainConfig, shown

# reference encoder/decoder names -> model_size (encdec: the same sizes; decoder: about the same parameters)
MODEL_NAMES = {"enc-s": "s", "dec-s": "s", "enc-m-s": "m", "dec-m-s": "m", "enc-l": "l", "dec-l": "l",
               "enc-xl-2": "xl", "dec-xl-2": "xl"}


def read(path):
    """The list of entries; raises ConfigError naming the file on any problem."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read sweep file ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed JSON (nested too deeply)") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{path}: a sweep file must be a JSON list of objects")
    return entries


def to_config(entry, where, defaults=None):
    """The entry's TrainConfig; keys it leaves out take `defaults` (a dict), then TrainConfig's."""
    entry = dict(entry)
    sizes = set()
    for key in ("encoder", "decoder"):
        if key in entry:
            name = entry.pop(key)
            if not isinstance(name, str) or name not in MODEL_NAMES:
                raise ConfigError(f"{where}: key {key!r}: unknown model {shown(name)} "
                                  f"(known: {', '.join(sorted(MODEL_NAMES))})")
            sizes.add(MODEL_NAMES[name])
    if len(sizes) > 1:
        raise ConfigError(f"{where}: encoder and decoder name different sizes {sorted(sizes)}")
    if sizes:
        if "model_size" in entry and entry["model_size"] != next(iter(sizes)):
            raise ConfigError(f"{where}: key 'model_size' disagrees with encoder/decoder")
        entry["model_size"] = sizes.pop()
    try:
        return TrainConfig.from_dict({**(defaults or {}), **entry})
    except (ValueError, TypeError, Error) as e:
        raise ConfigError(f"{where}: {e}") from None


def load(path, index, defaults=None):
    entries = read(path)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(entries):
        have = f"0..{len(entries) - 1}" if entries else "none"
        raise ConfigError(f"{path}: index {shown(index)} out of range (the file's entries: {have})")
    return to_config(entries[index], f"{path}[{index}]", defaults)


def run_id(path, index):
    """The default run id of entry `index`: `<file stem>-<index>` (the reference's naming), except that a
    Searchformer step file `<base>-step-<k>.json` names `<base>-<index>-step-<k>`: the ids its next
    step's start_checkpoint and the bootstrap dataset names (`bootstrap.<run id>`) assume."""
    stem = Path(path).stem
    base, sep, k = stem.rpartition("-step-")
    return f"{base}-{index}-step-{k}" if sep and k.isdigit() else f"{stem}-{index}"
