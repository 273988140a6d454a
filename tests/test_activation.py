"""Socket activation: listeners passed by systemd (LISTEN_PID, LISTEN_FDS,
LISTEN_FDNAMES), driven by Debian's systemd-socket-activate, for one
process and for a worker pool behind one activated socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port
from test_workers import get

from uringserve.server import activated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_variables_meant_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert activated(env) == [] and env == {"OTHER": "x"}
    assert activated({}) == []
    with pytest.raises(OSError, match="are not numbers"):
        activated({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"})


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_socket_activate(workers: int) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is missing: `make test` installs Debian's systemd package")
    port = free_port()
    p = subprocess.Popen(
        [
            tool,
            "-l",
            f"127.0.0.1:{port}",
            "--fdname=web",
            sys.executable,
            "-m",
            "uringserve",
            "run",
            "tests.worker_app:app",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # systemd-socket-activate's socket; the first connection starts uringserve
            try:
                socket.create_connection(("127.0.0.1", port), timeout=20).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                time.sleep(0.05)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert re.match(rf"uringserve on 127\.0\.0\.1:{port} \(fd 3, web\)", line), line
        pids = {int(get(port)) for _ in range(100)}
        assert pids and os.getpid() not in pids
        if workers == 1:
            assert pids == {p.pid}  # it exec'd uringserve: the same process serves
        else:
            assert p.pid not in pids  # the supervisor does not serve; its workers do
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
