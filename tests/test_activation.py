"""Socket activation: listeners passed by systemd (LISTEN_PID, LISTEN_FDS,
LISTEN_FDNAMES), driven by Debian's systemd-socket-activate, for one
process and for a worker pool behind one activated socket."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, get

from uringserve.server import activated


def test_variables_meant_for_another_process_are_ignored_and_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert activated(env) == [] and env == {"OTHER": "x"}
    assert activated({}) == []
    with pytest.raises(OSError, match="are not numbers"):
        activated({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"})


def activate(tool: str, uds: str, argv: list[str]) -> tuple[subprocess.Popen, int]:
    """systemd-socket-activate listening on a TCP port (fd 3, "web") and the
    Unix socket `uds` (fd 4, "admin"), running `argv` on the first
    connection; the port. The tool takes no port 0: a port the kernel just
    had free is a candidate, and it is ours once the tool says it listens on
    it (it holds the socket); a taken one is tried again.

    `argv` gets this process's environment, as every server the tests start
    does: the tool passes on only TERM, PATH, USER and HOME, and without
    PYTHONPATH the workers (`python -P`, no working directory on sys.path)
    would import the editable install's checkout, not the code under test
    (under `make mutate`: the live checkout beside the mutants the
    supervisor runs, and no MUTANT_UNDER_TEST)."""
    setenv = [f"--setenv={name}" for name in os.environ if not name.startswith("LISTEN_")]
    for _ in range(10):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        p = subprocess.Popen(
            [tool, "-l", f"127.0.0.1:{port}", "-l", uds, "--fdname=web:admin", *setenv, *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert p.stderr is not None
        said = p.stderr.readline()  # at once: "Listening on ..." or why not
        if said.startswith(f"Listening on 127.0.0.1:{port} as 3"):
            said = p.stderr.readline()
            assert said.startswith(f"Listening on {uds} as 4"), said
            return p, port
        p.communicate(timeout=10)
        assert "Address already in use" in said, said
    pytest.fail("ten ports taken in a row")


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def get_unix(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    return body


@pytest.mark.parametrize("workers", [1, 2])
def test_systemd_socket_activate(workers: int, tmp_path) -> None:
    """Two activated sockets, a TCP one and a Unix one, each with its name:
    uringserve serves both (itself, or through the workers it starts)."""
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.fail("systemd-socket-activate is missing: `make test` installs Debian's systemd package")
    uds = str(tmp_path / "admin.sock")
    argv = [sys.executable, "-m", "uringserve", "run", "tests.worker_app:app", "--workers", str(workers)]
    p, port = activate(tool, uds, [*argv, "--log-level", "warning"])
    try:
        # the tool's socket; the first connection starts uringserve, which serves it
        first = get(port, timeout=30)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith(f"uringserve on 127.0.0.1:{port} (fd 3, web), unix:{uds!r} (fd 4, admin) "), line
        pids = {int(first)} | {int(get(port)) for _ in range(100)} | {int(get_unix(uds)) for _ in range(20)}
        if workers == 1:
            assert pids == {p.pid}  # it exec'd uringserve: the same process serves
        else:
            # the supervisor does not serve; its workers do, on the socket they inherited
            assert 1 <= len(pids) <= 2 and all(parent_of(pid) == p.pid for pid in pids), (p.pid, pids)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
