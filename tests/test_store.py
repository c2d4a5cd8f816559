"""Store guarantees: log replacement, leases, following a moved embedded server."""
import time

import pytest
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, InvalidOperation

import server


def test_log_rewrite_replaces_and_truncate_drops_later_steps(store):
    for step in (10, 20, 30):
        store.log("r", step, "train", {"loss": float(step)})
    store.log("r", 20, "train", {"loss": -1.0})
    store.truncate_logs("r", 20)
    assert [(x["step"], x["loss"]) for x in store.get_logs("r")] == [(10, 10.0), (20, -1.0)]


def test_lease_is_exclusive_until_it_expires(store):
    store.runs.insert_one({"_id": "l", "config": {}, "lease": None})
    assert store.acquire_lease("l", "a", 600)
    assert not store.acquire_lease("l", "b", 600)
    assert store.acquire_lease("l", "a", 600)  # the holder renews
    store.runs.update_one({"_id": "l"}, {"$set": {"lease.expires": time.time() - 1}})  # "a" died 10 minutes ago
    assert store.acquire_lease("l", "b", 600)
    assert not store.acquire_lease("l", "a", 600)


def test_a_host_whose_clock_runs_ahead_cannot_take_a_live_lease(store, monkeypatch):
    """Leases are written and compared on the database server's clock, never a host's."""
    store.runs.insert_one({"_id": "l", "config": {}, "lease": None})
    assert store.acquire_lease("l", "a", 60)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this host's clock an hour ahead
    assert store.live_holder("l") == "a"
    assert not store.acquire_lease("l", "b", 60)
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # or an hour behind: a's own lease is renewed as usual
    assert store.acquire_lease("l", "a", 60) and store.live_holder("l") == "a"


def test_a_launch_whose_answers_are_lost_still_knows_whether_it_created_the_run(store, monkeypatch):
    """start_run is retried whole: when a new run's insert was written and its answer lost, the retry
    still reports the run as new (so a launch failing before step 1 drops it, runguard.RunGuard), and a
    re-open whose answer is lost still reports an existing run."""
    store.retry_s = 30
    lose = {"insert_one": 1, "update_one": 1}

    def then_lose(name):
        def written_then_lost(self, *args, _real=getattr(Collection, name), **kwargs):
            r = _real(self, *args, **kwargs)
            if lose[name]:
                lose[name] -= 1
                raise AutoReconnect("connection reset by peer")
            return r
        return written_then_lost

    monkeypatch.setattr(Collection, "insert_one", then_lose("insert_one"))
    assert store.start_run("n", {"a": 1}, "me", 60, 1, "h") is None and not lose["insert_one"]
    store.release_lease("n", "me")
    monkeypatch.setattr(Collection, "update_one", then_lose("update_one"))
    assert store.start_run("n", {"a": 1}, "other", 60, 1, "h")["_id"] == "n" and not lose["update_one"]


def test_following_a_moved_server_closes_the_old_client_and_is_retried(store, env, monkeypatch):
    """A lost connection to the embedded server, which came back at another address: every store
    sharing the connection (with_retry copies too) rebinds to it, the old client (its threads and
    sockets) is closed, and nothing on the way is left unretried."""
    store.runs.insert_one({"_id": "r", "config": {}, "lease": None})
    store.folder, store.retry_s = env["tmp"], 30
    copy, old = store.with_retry(0), store.db.client
    # "localhost" instead of 127.0.0.1: the same server under another address
    monkeypatch.setattr(server, "server_info", lambda folder: {"up": True, "host": "localhost", "port": env["port"]})
    failing = {"update_one": 1, "create_index": 1}  # the first write finds the connection gone, and so does the
    for name in failing:                            # first index creation, as the server may not be up yet

        def flaky(self, *args, _name=name, _real=getattr(Collection, name), **kwargs):
            if failing[_name]:
                failing[_name] -= 1
                raise AutoReconnect("connection reset by peer")
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(Collection, name, flaky)
    store.log("r", 1, "train", {"loss": 1.0})
    assert store.address.startswith("mongodb://localhost:") and copy.address == store.address
    assert store.get_run("r")["step"] == 1 and copy.get_run("r")["step"] == 1
    with pytest.raises(InvalidOperation):  # closed
        old.admin.command("ping")
