"""The RESP server's data: one in-memory database of strings and lists, with
expiry both lazy (a key is checked when it is touched) and active (sweep():
Redis's sampling cycle, bounded in time so it cannot stall the loop)."""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from typing import Any

Value = Any  # bytes (a string) or deque[bytes] (a list)

# SCAN walks the keyspace bucket by bucket; a key's bucket is fixed by its
# hash, so a key present for the whole scan is returned exactly once
SCAN_BUCKETS = 4096
_BUCKET_MASK = SCAN_BUCKETS - 1


class Keyspace:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.data: dict[bytes, Value] = {}
        self.expires: dict[bytes, float] = {}  # key -> deadline, ms on `clock`
        # the keys with a deadline, for sampling in O(1): list plus positions
        self._volatile: list[bytes] = []
        self._volatile_at: dict[bytes, int] = {}
        self._buckets: list[set[bytes]] = [set() for _ in range(SCAN_BUCKETS)]
        self.expired = 0  # keys removed because their time passed

    def now_ms(self) -> float:
        return self._clock() * 1000.0

    # -- access ---------------------------------------------------------------
    def get(self, key: bytes) -> Value | None:
        value = self.data.get(key)
        if value is not None and self.expires and key in self.expires and self.expires[key] <= self.now_ms():
            self._expire(key)
            return None
        return value

    def __contains__(self, key: bytes) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return len(self.data)

    def set(self, key: bytes, value: Value, keep_ttl: bool = False) -> None:
        data = self.data
        if key not in data:
            self._buckets[hash(key) & _BUCKET_MASK].add(key)
        elif not keep_ttl and self.expires:
            self.persist(key)
        data[key] = value

    def delete(self, key: bytes) -> bool:
        if self.get(key) is None:
            return False
        self._remove(key)
        return True

    def _remove(self, key: bytes) -> None:
        del self.data[key]
        self._buckets[hash(key) & _BUCKET_MASK].discard(key)
        if key in self.expires:
            self._forget_deadline(key)

    def _expire(self, key: bytes) -> None:
        self._remove(key)
        self.expired += 1

    def flush(self) -> None:
        self.data.clear()
        self.expires.clear()
        self._volatile.clear()
        self._volatile_at.clear()
        for b in self._buckets:
            b.clear()

    # -- deadlines ---------------------------------------------------------------
    def set_deadline(self, key: bytes, deadline_ms: float) -> None:
        """The key (which exists) expires at `deadline_ms`; one in the past deletes it now."""
        if deadline_ms <= self.now_ms():
            self._remove(key)
            return
        if key not in self.expires:
            self._volatile_at[key] = len(self._volatile)
            self._volatile.append(key)
        self.expires[key] = deadline_ms

    def ttl_ms(self, key: bytes) -> float | None:
        """Milliseconds left, None for a key without a deadline (the key exists)."""
        deadline = self.expires.get(key)
        return None if deadline is None else max(0.0, deadline - self.now_ms())

    def persist(self, key: bytes) -> bool:
        if key not in self.expires:
            return False
        self._forget_deadline(key)
        return True

    def _forget_deadline(self, key: bytes) -> None:
        del self.expires[key]
        i = self._volatile_at.pop(key)
        last = self._volatile.pop()
        if last is not key and i < len(self._volatile):
            self._volatile[i] = last
            self._volatile_at[last] = i

    def sweep(self, budget_s: float = 0.001, sample: int = 20) -> int:
        """Active expiry, as Redis's cycle: sample keys with a deadline, remove
        the expired ones, go on while more than a quarter of a sample had
        expired, stop when `budget_s` is spent. Returns the keys removed."""
        removed = 0
        start = self._clock()
        while self._volatile:
            now = self.now_ms()
            hits = 0
            n = min(sample, len(self._volatile))
            for _ in range(n):
                if not self._volatile:
                    break
                key = self._volatile[random.randrange(len(self._volatile))]
                if self.expires[key] <= now:
                    self._expire(key)
                    hits += 1
            removed += hits
            if hits * 4 <= n or self._clock() - start >= budget_s:
                break
        return removed

    # -- iteration ---------------------------------------------------------------
    def scan(self, cursor: int, count: int) -> tuple[int, list[bytes]]:
        """Keys from bucket `cursor` on, at least `count` if there are that many
        left (whole buckets); the next cursor, 0 when the walk is done."""
        out: list[bytes] = []
        b = cursor
        while b < SCAN_BUCKETS and len(out) < count:
            out.extend(self._buckets[b])
            b += 1
        now = self.now_ms()
        out = [k for k in out if k not in self.expires or self.expires[k] > now]
        return (b if b < SCAN_BUCKETS else 0), out

    def keys(self) -> list[bytes]:
        now = self.now_ms()
        return [k for k in self.data if k not in self.expires or self.expires[k] > now]


@lru_cache(maxsize=256)
def glob(pattern: bytes) -> Callable[[bytes], Any]:
    """Redis's stringmatch: * ? [abc] [^a-z] and \\ escapes, as a compiled match."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif c == b"[":
            j = i + 1
            negate = j < n and pattern[j : j + 1] == b"^"
            if negate:
                j += 1
            items = []
            while j < n and pattern[j : j + 1] != b"]":
                if pattern[j : j + 1] == b"\\" and j + 1 < n:
                    items.append(re.escape(pattern[j + 1 : j + 2]))
                    j += 2
                elif j + 2 < n and pattern[j + 1 : j + 2] == b"-" and pattern[j + 2 : j + 3] != b"]":
                    lo, hi = sorted((pattern[j : j + 1], pattern[j + 2 : j + 3]))
                    items.append(re.escape(lo) + b"-" + re.escape(hi))
                    j += 3
                else:
                    items.append(re.escape(pattern[j : j + 1]))
                    j += 1
            # an unclosed [ matches to the pattern's end, as Redis's does
            if items:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(items) + b"]")
            else:  # [] matches nothing, [^] any one byte
                out.append(b"." if negate else b"(?!)")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out), re.DOTALL).fullmatch


def type_name(value: Value) -> bytes:
    return b"string" if type(value) is bytes else b"list" if type(value) is deque else b"none"
