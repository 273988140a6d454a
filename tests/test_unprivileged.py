"""Default sizes work for an unprivileged user under the default 8 MiB
RLIMIT_MEMLOCK: registered buffers count against it for users without
CAP_IPC_LOCK (measured on 6.18: 4 MiB registers, 16 MiB fails)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Proc

ROOT = Path(__file__).resolve().parent.parent
MEMLOCK = 8 << 20


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or not shutil.which("runuser"):
        return False
    return (
        subprocess.run(
            ["runuser", "-u", "nobody", "--", sys.executable, "-c", "import uringserve"], cwd=ROOT, capture_output=True
        ).returncode
        == 0
    )


NOBODY = _nobody_can_run_python()


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` run as `nobody` under RLIMIT_MEMLOCK = 8 MiB (prlimit sets it
    and execs the rest); where this interpreter is out of nobody's reach (a
    pyenv under /root), as root without CAP_IPC_LOCK, which puts registered
    memory under the same RLIMIT_MEMLOCK accounting."""
    limit = ["prlimit", f"--memlock={MEMLOCK}", "--"]
    if NOBODY:
        return [*limit, "runuser", "-u", "nobody", "--", *argv]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("neither runuser as nobody nor setpriv (util-linux) can drop privileges here")
        return [*limit, "setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "--", *argv]
    return [*limit, *argv]


ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", HOME="/tmp")


def as_unprivileged(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(unprivileged(argv), cwd=ROOT, env=ENV, **kw)


def test_echo_server_runs_as_nobody_with_default_sizes() -> None:
    # port 0: the server binds it and its banner says which, and its pid
    # (runuser stays as the parent: the banner names the server itself)
    srv = Proc(unprivileged([sys.executable, "apps/echo.py", "--port", "0"]), env=ENV)
    try:
        pid = int(re.search(r"\bpid (\d+)\)", srv.output()).group(1))  # type: ignore[union-attr]
        payload = os.urandom(2 << 20)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as c:
            c.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                got += c.recv(1 << 20)
        assert bytes(got) == payload
        st = Path(f"/proc/{pid}/status").read_text()
        uid = next(line for line in st.splitlines() if line.startswith("Uid:")).split()[1]
        if NOBODY:
            assert uid == str(65534)  # really ran as nobody
        pinned_kb = int(next(line for line in st.splitlines() if line.startswith("VmPin:")).split()[1])
        assert 0 < pinned_kb * 1024 <= MEMLOCK
    finally:
        srv.stop()


def test_doctor_as_nobody_sizes_the_arena_from_memlock() -> None:
    proc = as_unprivileged(
        [sys.executable, "-m", "uringserve", "doctor", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=30)
    rep = json.loads(out)
    assert rep["usable"], err
    assert rep["cap_ipc_lock"] is False
    assert rep["rlimit_memlock"] == MEMLOCK
    assert rep["defaults"]["arena_bytes"] == MEMLOCK // 2
    assert any("RLIMIT_MEMLOCK" in n for n in rep["notes"])


def test_oversized_arena_as_nobody_is_a_clear_error() -> None:
    code = (
        "import uringserve\n"
        "try:\n"
        "    uringserve.new_event_loop(uringserve.RingConfig(arena_bytes=16 << 20))\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    proc = as_unprivileged([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=30)
    assert "send arena" in out and "RLIMIT_MEMLOCK" in out and "ulimit -l" in out, (out, err)
