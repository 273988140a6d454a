"""The RESP demo's keyspace with a clock the test moves: expiry on access
(lazy), the sweep (active) and its time budget, SCAN's bucket walk, and
Redis's glob patterns."""

from __future__ import annotations

from collections import deque

from uringserve.resp.keyspace import SCAN_BUCKETS, Keyspace, glob


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.step = 0.0  # added on every read: a sweep that reads the clock sees time pass

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_a_key_past_its_deadline_is_gone_when_touched() -> None:
    clock = Clock()
    ks = Keyspace(clock)
    ks.set(b"k", b"v")
    ks.set_deadline(b"k", ks.now_ms() + 100)
    clock.t += 0.099
    assert ks.get(b"k") == b"v" and ks.ttl_ms(b"k") is not None
    clock.t += 0.002
    assert len(ks) == 1  # still stored: nothing touched it
    assert ks.get(b"k") is None and len(ks) == 0 and ks.expired == 1
    assert ks.expires == {} and ks.keys() == []


def test_setting_a_value_clears_its_deadline_unless_kept() -> None:
    ks = Keyspace(Clock())
    ks.set(b"k", b"v")
    ks.set_deadline(b"k", ks.now_ms() + 100)
    ks.set(b"k", b"w", keep_ttl=True)
    assert ks.ttl_ms(b"k") == 100
    ks.set(b"k", b"x")
    assert ks.ttl_ms(b"k") is None and ks.persist(b"k") is False
    ks.set_deadline(b"k", ks.now_ms() - 1)  # a deadline in the past deletes
    assert ks.get(b"k") is None


def test_the_sweep_removes_expired_keys_and_keeps_live_ones() -> None:
    clock = Clock()
    ks = Keyspace(clock)
    for i in range(500):
        ks.set(b"old%d" % i, b"v")
        ks.set_deadline(b"old%d" % i, ks.now_ms() + 10)
        ks.set(b"new%d" % i, b"v")
        ks.set_deadline(b"new%d" % i, ks.now_ms() + 10_000)
    clock.t += 1
    removed = sweeps = 0
    # sampling stops when a sample is mostly live; the rest goes over later
    # ticks (the last old key is met by a 20-key sample of 501 with p = 0.04:
    # 10,000 ticks miss it with p = 1e-177)
    while removed < 500 and sweeps < 10_000:
        removed += ks.sweep(budget_s=1.0)
        sweeps += 1
    assert removed == ks.expired == 500
    assert sweeps > 1  # one tick did not do it all: the cycle stops on a mostly live sample
    # gone from what is stored, not only from what keys() shows (which hides expired keys itself)
    new = {b"new%d" % i for i in range(500)}
    assert set(ks.data) == new and set(ks.expires) == new
    assert sorted(ks._volatile) == sorted(new) and all(ks._volatile[i] == k for k, i in ks._volatile_at.items())
    assert sum(len(b) for b in ks._buckets) == 500  # SCAN will not find the removed keys either


def test_the_sweep_stops_at_its_time_budget() -> None:
    clock = Clock()
    ks = Keyspace(clock)
    for i in range(100_000):
        ks.set(b"k%d" % i, b"v")
        ks.set_deadline(b"k%d" % i, ks.now_ms() + 1)
    clock.t += 1
    clock.step = 0.0001  # every clock read costs 0.1 ms
    removed = ks.sweep(budget_s=0.001)
    assert 0 < removed < 1000  # a few samples, not the 100,000 expired keys
    clock.step = 0
    while ks.sweep(budget_s=10):
        pass
    assert len(ks) == 0 and ks.expired == 100_000


def test_a_sweep_round_samples_20_keys_as_redis() -> None:
    """Redis's active expiry takes 20 keys with a deadline per round
    (ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP): with every key expired and no time
    left after one round, one round removes exactly 20."""
    clock = Clock()
    ks = Keyspace(clock)
    for i in range(100):
        ks.set(b"k%d" % i, b"v")
        ks.set_deadline(b"k%d" % i, ks.now_ms() + 1)
    clock.t += 1
    assert ks.sweep(budget_s=0) == 20 and len(ks.data) == 80


def test_scan_walks_every_bucket_once() -> None:
    ks = Keyspace(Clock())
    keys = {b"k%d" % i for i in range(10_000)}
    for k in keys:
        ks.set(k, b"v")
    ks.set(b"list", deque([b"a"]))
    seen: list[bytes] = []
    cursor, calls = 0, 0
    while True:
        cursor, found = ks.scan(cursor, 100)
        seen += found
        calls += 1
        if cursor == 0:
            break
    assert sorted(seen) == sorted(keys | {b"list"})
    assert calls < SCAN_BUCKETS  # COUNT 100 takes whole buckets at a time
    ks.delete(b"k1")
    ks.flush()
    assert ks.scan(0, 10_000) == (0, [])


def test_glob_is_redis_stringmatch() -> None:
    cases = [
        (b"*", b"anything", True),
        (b"h?llo", b"hello", True),
        (b"h?llo", b"hllo", False),
        (b"h[ae]llo", b"hallo", True),
        (b"h[^e]llo", b"hello", False),
        (b"h[^e]llo", b"hallo", True),
        (b"h[a-b]llo", b"hbllo", True),
        (b"h[b-a]llo", b"hallo", True),  # a reversed range, as Redis allows
        (b"h\\*llo", b"h*llo", True),
        (b"h\\*llo", b"hello", False),
        (b"a.b", b"axb", False),  # regex characters are literal
        (b"k*", b"k\nv", True),  # * crosses newlines
    ]
    for pattern, key, expected in cases:
        assert bool(glob(pattern)(key)) is expected, (pattern, key)
