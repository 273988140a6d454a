"""The bugs issue 15 planted by hand, planted again: each must fail at least
one of the tests named for it. Run by `make mutate` (and alone:
`python tests/mutation/planted.py`); the source is restored after each.

A bug is (name, file, the exact text it replaces, the replacement, the
pytest selection that must fail)."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

PLANTED = [
    (
        "keepalive_requests: one request too many (respond_prepared)",
        "uringserve/http/protocol.py",
        "if self.keep_alive and self.body_in.done and conn._served < conn._last_keepalive",
        "if self.keep_alive and self.body_in.done and conn._served <= conn._last_keepalive",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "keepalive_requests: one request too many (the one-frame path)",
        "uringserve/http/protocol.py",
        "result._close or self._served >= self._last_keepalive",
        "result._close or self._served > self._last_keepalive",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "keepalive_requests: one request too many (the rule, keeps_alive(): start() and 500s)",
        "uringserve/http/protocol.py",
        "and not self._draining and self._served < self._last_keepalive\n",
        "and not self._draining and self._served <= self._last_keepalive\n",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "max_pipelined: the pause never taken",
        "uringserve/http/protocol.py",
        "        elif len(queue) > self._max_pipelined:\n            self._pause()",
        "        elif len(queue) > self._max_pipelined:\n            pass",
        ["tests/test_http_server.py", "-k", "pipelin"],
    ),
    (
        "abort() flushes queued data instead of discarding it",
        "uringserve/transport.py",
        "    def abort(self) -> None:\n        self._force_close(None)",
        "    def abort(self) -> None:\n        self.close()",
        ["tests/test_transport.py", "-k", "abort"],
    ),
    (
        "keep-alive kept after a response with its request body unread (the rule, keeps_alive())",
        "uringserve/http/protocol.py",
        "        return ex.keep_alive and ex.body_in.done and not self._draining",
        "        return ex.keep_alive and not self._draining",
        ["tests/test_http_server.py", "tests/test_http_asgi.py", "-k", "unread or before_the_body"],
    ),
    (
        "body_buffer_bytes: the pause never taken",
        "uringserve/http/protocol.py",
        "if body.buffered > self._cfg.body_buffer_bytes and not body.hold_all:\n                self._pause()",
        "if body.buffered > self._cfg.body_buffer_bytes and not body.hold_all:\n                pass",
        ["tests/test_http_server.py", "-k", "body_buffer or body_nobody"],
    ),
    (
        "a response a byte short of its Content-Length",
        "uringserve/http/protocol.py",
        '        conn._transport.write(b"".join((head, _DATE[1], tail, b"" if self.method == "HEAD" else body)))',
        '        conn._transport.write(b"".join((head, _DATE[1], tail, b"" if self.method == "HEAD" else body[:-1])))',
        ["tests/test_http_server.py", "-k", "garbage"],
    ),
]


def run(name: str, path: str, old: str, new: str, tests: list[str]) -> bool:
    """True when the planted bug fails a test (as it must)."""
    file = ROOT / path
    source = file.read_text()
    if source.count(old) != 1:
        print(f"STALE  {name}: the text to replace is not in {path} exactly once; update planted.py")
        return False
    file.write_text(source.replace(old, new))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        file.write_text(source)
    caught = proc.returncode == 1
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    print(f"{'caught' if caught else 'MISSED'} {name}: {failed[0] if failed else proc.stdout.strip()[-200:]}")
    return caught


def main() -> int:
    # stopped from outside, still restore the source (run()'s finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = [run(*bug) for bug in PLANTED]
    print(f"{sum(results)} of {len(results)} planted bugs caught")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
