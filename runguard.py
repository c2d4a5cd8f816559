"""Rank 0's hold on a training run: the lease that keeps a second trainer off the run id (renewed in a
thread, so a crashed holder's lease simply expires), the owner token that fences this process's
writes (a trainer that lost the lease can change nothing), the step boundary's stop check, and the
run's final status (finished, interrupted, failed, or dropped: a launch that never reached step 1)."""
import contextlib
import os
import socket
import threading
import uuid

from errors import StoreError
from lifecycle import Interrupted, Signals
from store import bounded


class Lease(threading.Thread):
    """Renews rank 0's hold on the run id; a crashed holder's lease simply expires."""

    def __init__(self, store, run_id, owner, seconds):
        super().__init__(daemon=True)
        self.store, self.run_id, self.owner, self.seconds = store, run_id, owner, seconds
        self.stopped, self.lost = threading.Event(), False

    def run(self):
        while not self.stopped.wait(self.seconds / 3):
            try:
                if not self.store.acquire_lease(self.run_id, self.owner, self.seconds):
                    self.lost = True
                    return
            except Exception:
                pass  # database away: keep training, retry on the next beat

    def stop(self):
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.store.release_lease(self.run_id, self.owner)


class RunGuard:
    """Used as `with guard:` around the training of a run that rank 0 has claimed (claim()): rank 0's
    lease is renewed meanwhile, and on the way out the run is recorded as finished (finished()),
    interrupted (Interrupted: a signal) or failed (any other exception), and the lease released. A
    run this launch created that fails or is stopped before its first step (before check() is first
    called) is dropped instead: a failed launch leaves nothing in the way of the corrected one. `owner` fences
    rank 0's writes (None on the other ranks, which write nothing)."""

    def __init__(self, store, run_id, lease_s, rank):
        self.store, self.run_id, self.lease_s, self.rank = store, run_id, lease_s, rank
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.owner = token if rank == 0 else None
        self.lease, self.created, self.began = None, False, False

    def claim(self, config, world):
        """Create the run, or re-open it for a resume (rank 0); StoreError while another holds it."""
        self.created = self.store.start_run(self.run_id, config, self.owner, self.lease_s, world,
                                            socket.gethostname()) is None

    def __enter__(self):
        if self.rank == 0:
            self.lease = Lease(self.store, self.run_id, self.owner, self.lease_s)
            self.lease.start()
        return self

    def check(self):
        """At every step boundary: raise once another process has taken the run over; returns whether a
        signal asked this process to stop (the ranks then agree on it)."""
        if not self.began:
            Signals.began()
        self.began = True
        if self.lease is not None and self.lease.lost:
            raise StoreError(f"lost the lease on run {self.run_id!r} to another process")
        return Signals.requested

    def abandon(self):
        """A signal while starting (from Signals' thread): record the run as `with guard:` would on
        Interrupted, then release the lease; the process then exits."""
        self.__exit__(Interrupted, Interrupted(), None)

    def finished(self):
        if self.rank == 0:
            self.store.set_status(self.run_id, "finished", owner=self.owner)

    def __exit__(self, kind, error, tb):
        try:
            if error is not None and self.rank == 0:
                with contextlib.suppress(Exception), bounded(3):  # one short try: the database may be gone
                    store = self.store.with_retry(0)
                    if self.created and not self.began:
                        store.drop_run(self.run_id, force=True)  # nothing of it to keep; we hold its lease
                    elif kind is Interrupted:
                        store.set_status(self.run_id, "interrupted", owner=self.owner)
                    else:
                        store.set_status(self.run_id, "failed", f"{kind.__name__}: {error}"[:2000], owner=self.owner)
        finally:
            if self.lease is not None:
                with bounded(3):
                    self.lease.stop()
        return False
