"""The benchmarks' C programs still build against the core and work: the
C reference echo server (bench/c_echo.c, linked with the core's sources)
echoes byte for byte, and the file-path comparison (bench/file_paths.c)
compiles. A core change that adds a dependency between its parts (send.c's
TLS file path calling tls.c did) broke `echo_bench.py` without any test
noticing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from conftest import ROOT, Proc

sys.path.insert(0, str(ROOT / "bench"))
import echo_bench  # noqa: E402


def connect(port: int, within: float = 10.0) -> socket.socket:
    """A connection once the server listens (a bound on the wait, not a sleep to pass)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_the_c_reference_echo_server_builds_and_echoes() -> None:
    echo_bench.build()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = Proc([str(echo_bench.BUILD / "c_echo"), str(port)], port=port)  # its banner is block-buffered
    try:
        data = os.urandom(200_000)
        with connect(port) as s:
            s.sendall(data)
            got = b""
            while len(got) < len(data):
                chunk = s.recv(65536)
                assert chunk, f"closed after {len(got)} bytes"
                got += chunk
        assert got == data
    finally:
        srv.stop()
    assert (echo_bench.BUILD / "echo_load").exists()


def test_the_file_path_comparison_compiles(tmp_path) -> None:
    out = tmp_path / "file_paths"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out), "bench/file_paths.c"], cwd=ROOT, check=True)
    assert out.exists()
