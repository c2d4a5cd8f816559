"""A training process's life around the training: the launcher it dies with (torchrun), the signals
that stop it (SIGINT and SIGTERM: at once while it starts, else at a step boundary), the one line a
stopped or failed trainer leaves (on its output and in torchrun's error file), and its exit status
(0 finished, 1 an error, 130 interrupted).

Imports nothing heavy: train.py asks the kernel to kill it with its launcher before importing torch."""
import ctypes
import os
import signal
import sys
import threading

import errors

INTERRUPTED = 130  # the exit status of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as a shell reports it)


def die_with_parent(launcher):
    """torchrun starts each worker in a session of its own: have the kernel kill a worker when its
    launcher dies, so that killing torchrun (or its process group) leaves no orphan trainer behind.
    launcher: the parent's pid as the process found it on starting. Called before the slow imports; a
    worker whose parent changed since (the launcher died before the kernel was asked) exits at once. A
    parent of PID 1 is no sign of a lost launcher: torchrun is PID 1 as a container's entrypoint."""
    if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != launcher:  # reparented: the launcher is already gone, no signal will come
            os._exit(1)


class Interrupted(BaseException):
    """Leaves the training of a run stopped by a signal (a BaseException: no `except Error` catches it):
    at a step boundary (step, and saved: the step of the run's checkpoint, None without one), or
    anywhere on a second signal (both None)."""

    def __init__(self, step=None, saved=None):
        super().__init__(step, saved)
        self.step, self.saved = step, saved

    def line(self, command):
        """The one line a stopped trainer prints: where it stopped and how to continue."""
        where = "" if self.step is None else f" at step {self.step}"
        if self.step is not None and self.saved != self.step:
            where += f" (its checkpoint is at step {self.saved})" if self.saved is not None else " (no checkpoint yet)"
        return f"interrupted{where}; continue with: {command}"


class Signals:
    """SIGINT and SIGTERM alike. In training, the first asks it to stop at the next step boundary
    (requested), a second one stops it at once (Interrupted). While the process starts (before its
    first step boundary: `starting` is set), one stops it at once: `starting()` runs from a thread of
    its own, since the main thread may wait in a collective for a rank that failed, where no Python
    signal handler runs (under NCCL, until the process group's timeout)."""
    requested, starting, installed = False, None, False

    @classmethod
    def install(cls, starting):
        """starting: what a signal does while the process starts (it ends the process)."""
        cls.starting = starting
        if cls.installed:
            return
        cls.installed = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, cls.handle)
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)  # the C-level handler writes each signal's number here, whatever the main thread does
        threading.Thread(target=cls.watch, args=(r,), daemon=True).start()

    @classmethod
    def watch(cls, fd):
        while True:
            got = os.read(fd, 64)
            starting = cls.starting
            if starting is not None and {signal.SIGINT, signal.SIGTERM} & set(got):
                starting()

    @classmethod
    def began(cls):
        """The first step boundary: signals now stop the run there (a missed one is `requested`)."""
        cls.starting = None

    @classmethod
    def handle(cls, *_):
        if cls.requested and cls.starting is None:
            raise Interrupted()
        cls.requested = True


def command(run_id, world):
    """The launch that continues a run."""
    launcher = f"torchrun --nproc-per-node {world}" if world > 1 else "python"
    return f"{launcher} train.py single --run-id {run_id}"


def tell(line, file=None):
    """A trainer's last line: in every rank's torchrun error file (whichever torchrun reports), printed
    by rank 0 alone."""
    errors.tell_launcher(line)
    if int(os.environ.get("RANK", 0)) == 0:
        print(line, file=file or sys.stdout, flush=True)


def failed(e):
    """A failure the user can act on (errors.REPORTED, a database error too): its one line, on stderr
    and in torchrun's error file; exit status 1."""
    tell(f"error: {errors.one_line(e)}", sys.stderr)
    return 1


def interrupted(e, run_id, world, barrier=None):
    """A run stopped by a signal (Interrupted): its one line; exit status 130. Stopped at a step boundary,
    every rank then waits at barrier (the ranks agreed on the stop: none exits, and has torchrun stop
    the rest, before rank 0 is done)."""
    tell(e.line(command(run_id, world)))
    if e.step is not None and barrier is not None:
        barrier()
    return INTERRUPTED


def on_signal_while_starting(run_id, world, guard=None):
    """What a signal does from now until the first step boundary (Signals' thread, whatever the main
    thread waits for): say so, record the run (guard.abandon: a run this launch created is dropped)
    and exit 130 at once."""
    def stop():
        tell(Interrupted().line(command(run_id, world)))
        if guard is not None:
            guard.abandon()
        os._exit(INTERRUPTED)
    if Signals.installed:
        Signals.starting = stop
    else:
        Signals.install(stop)
