"""The errors a user can act on, one type per kind of failure, and the one place that turns them
into a command's one-line message (exit_message).

Each message says what is wrong and how to fix it; a command prints it as `error: ...` and exits
with status 1, having written nothing or only what a re-run resumes from. A database error met
mid-command (PyMongoError, e.g. the server went away) is reported the same way (REPORTED).
"""
import contextlib
import json
import os
import time

from pymongo.errors import PyMongoError


class Error(Exception):
    """A failure the user can fix; its message is one line that says how."""


class ConfigError(Error):
    """Bad input: a flag, a hyper-parameter, a sweep file, a run id or dataset name."""


class DataError(Error):
    """A dataset that is missing, still being built, in the way, or unfit for what was asked."""


class CheckpointError(Error):
    """A checkpoint (stored or exported) that cannot be used as asked: unreadable, or of another
    model, vocabulary or world size."""


class StoreError(Error):
    """The database and the runs in it: unreachable, a run that is missing, exists, or is held by
    another process."""


REPORTED = (Error, PyMongoError)  # what a command turns into its one-line message


def shown(value):
    """repr(value), cut short: error messages stay one short line whatever the input."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def one_line(e):
    """The message of one of REPORTED."""
    if isinstance(e, PyMongoError):
        return f"database error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return str(e)


def exit_message(e):
    """What a command prints, and exits with, for one of REPORTED; under torchrun also the worker's
    error file (tell_launcher)."""
    line = f"error: {one_line(e)}"
    tell_launcher(line)
    return line


def tell_launcher(line):
    """Under torchrun, write line to this worker's error file (TORCHELASTIC_ERROR_FILE, the documented
    mechanism of torch.distributed.elastic): torchrun's closing summary then shows it as the failure's
    reason instead of "To enable traceback see ...". The JSON is the one torch's ErrorHandler writes,
    less the traceback (the summary shows extraInfo.py_callstack when there is one, else message)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump({"message": {"message": line, "extraInfo": {"timestamp": str(int(time.time()))}}}, f)
