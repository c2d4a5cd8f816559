"""The errors a user can act on, one type per kind of failure, and the one place that turns them
into a command's one-line message (exit_message).

Each message says what is wrong and how to fix it; a command prints it as `error: ...` and exits
with status 1, having written nothing or only what a re-run resumes from. A database error met
mid-command (PyMongoError, e.g. the server went away) is reported the same way (REPORTED).
"""
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
    """What a command prints, and exits with, for one of REPORTED."""
    return f"error: {one_line(e)}"
