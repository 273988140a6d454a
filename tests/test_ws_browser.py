"""A real browser against the demo: headless Chromium (Debian's `chromium`,
which `make deps` installs) loads /static/chat.html?selftest=1 from
`uringserve run apps.http:app` (native and ASGI, both loops). The page
opens /ws, checks a text, a 1 KiB binary and a 100 KiB text message come
back byte-exact, checks a /ws/chat message reaches two sockets, and writes
'PASS deflate=<ws.extensions>' or 'FAIL: <what>' into its title. The test
reads the title over the DevTools protocol (--remote-debugging-pipe: NUL-
separated JSON on fds 3 and 4; Target.getTargets carries each page's
title), so nothing but the page's own result decides; skipped with the
reason where Chromium is missing."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import die_with_parent
from ws_servers import KINDS, WSServer

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium; `make deps` does)"),
]

TARGETS = [(k, "native") for k in KINDS] + [(k, "asgi") for k in KINDS if k != "uvicorn"]


class Browser:
    """Chromium with the DevTools protocol on a pipe; `title_of(url)`."""

    def __init__(self, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # above 4, so that moving them to 3 and 4 in the child cannot close one another
        to_chrome_r, from_chrome_w = (self._high(fd) for fd in (to_chrome_r, from_chrome_w))
        args = [
            CHROMIUM,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
        # the protocol's fds must be 3 (commands in) and 4 (answers out): bash (fds > 9) puts them there
        shell = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.p = subprocess.Popen(
            ["bash", "-c", shell, "bash", *args],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: every process it forks is ended with it
            preexec_fn=die_with_parent,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0

    @staticmethod
    def _high(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def call(self, method: str, timeout: float = 30.0, **params: object) -> dict:
        self._id += 1
        msg_id = self._id
        os.write(self._to_chrome, json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, _, self._buf = self._buf.partition(b"\0")
                msg = json.loads(raw)
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer {method}")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited: {self.stderr()}")
                self._buf += chunk

    def title_of(self, url: str, done: tuple[str, ...], timeout: float = 90.0) -> str:
        """Open `url` in a new tab; its title once it starts with one of `done` (or the last seen at `timeout`)."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        deadline = time.monotonic() + timeout
        title = ""
        while time.monotonic() < deadline:
            infos = self.call("Target.getTargets")["targetInfos"]
            title = next((t["title"] for t in infos if t["targetId"] == target), "")
            if title.startswith(done):
                return title
            time.sleep(0.1)  # the title changes without an event this client listens to
        return title

    def stderr(self) -> str:
        self.stop()
        assert self.p.stderr
        return self.p.stderr.read().decode(errors="replace")[-3000:] if not self.p.stderr.closed else ""

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
                self.p.wait(10)
            except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        try:  # helpers of its group that outlived it (a zygote)
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self._to_chrome = self._from_chrome = -1


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        b.call("Browser.getVersion", timeout=60)
        yield b
    finally:
        b.stop()
        assert b.p.stderr
        b.p.stderr.close()


@pytest.mark.parametrize(("kind", "app"), TARGETS, ids=[f"{k}-{a}" for k, a in TARGETS])
def test_chromium_selftest_passes_with_deflate(browser: Browser, kind: str, app: str) -> None:
    srv = WSServer(kind, app=app)
    try:
        title = browser.title_of(f"http://127.0.0.1:{srv.port}/static/chat.html?selftest=1", ("PASS", "FAIL"))
    finally:
        srv.stop()
    assert title.startswith("PASS"), f"the page says {title!r}; server printed:\n{srv.output()[-3000:]}"
    # Chromium offers permessage-deflate (with client_max_window_bits): the server agreed to it
    assert title.startswith("PASS deflate=permessage-deflate"), title


def test_chromium_selftest_without_deflate(browser: Browser) -> None:
    """--ws-per-message-deflate false: the same exchange passes, nothing agreed."""
    srv = WSServer(KINDS[0], "--ws-per-message-deflate", "false")
    try:
        title = browser.title_of(f"http://127.0.0.1:{srv.port}/static/chat.html?selftest=1", ("PASS", "FAIL"))
    finally:
        srv.stop()
    assert title == "PASS deflate=none", title


def test_chromium_selftest_reports_a_failure(browser: Browser) -> None:
    """The page can fail: served where /ws does not exist (an HTTP server
    without WebSockets: python's http.server on the static folder), it says FAIL."""
    static = Path(__file__).resolve().parent.parent / "apps"
    p = subprocess.Popen(
        [
            "python3",
            "-u",
            "-c",
            "import http.server,functools,sys;"
            "h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[1]);"
            "s=http.server.ThreadingHTTPServer(('127.0.0.1',0),h);print(s.server_address[1],flush=True);"
            "s.serve_forever()",
            str(static),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert p.stdout
        port = int(p.stdout.readline())
        title = browser.title_of(f"http://127.0.0.1:{port}/static/chat.html?selftest=1", ("PASS", "FAIL"))
    finally:
        p.kill()
        p.wait()
        assert p.stdout
        p.stdout.close()
    assert title.startswith("FAIL: "), title
