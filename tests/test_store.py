"""Store guarantees: log replacement, leases."""


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
    import time
    store.runs.update_one({"_id": "l"}, {"$set": {"lease.expires": time.time() - 1}})  # "a" died 10 minutes ago
    assert store.acquire_lease("l", "b", 600)
    assert not store.acquire_lease("l", "a", 600)
