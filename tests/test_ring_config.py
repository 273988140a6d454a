"""What the ring module decides before any I/O: the send arena's default
size from RLIMIT_MEMLOCK, the words of a setup failure, and openat2's
errors. Plain functions, tested directly: no ring is set up here."""

from __future__ import annotations

import errno
import os
import resource

import pytest

from uringserve import fs, ring
from uringserve.ring import MiB, Ring, RingConfig


@pytest.mark.parametrize(
    "budget, chunk, want",
    [
        (None, 32768, 8 * MiB),  # no limit (root, CAP_IPC_LOCK): 8 MiB
        (64 * MiB, 32768, 8 * MiB),  # a large limit: still 8 MiB
        (8 * MiB, 32768, 4 * MiB),  # Debian's default 8 MiB: half of it
        (1 * MiB + 1000, 32768, 16 * 32768),  # half, rounded down to whole chunks
        (65536, 32768, 2 * 32768),  # a tiny limit: never fewer than two chunks
        (0, 4096, 2 * 4096),
    ],
)
def test_default_arena_is_half_the_memlock_budget_in_whole_chunks(monkeypatch, budget, chunk, want) -> None:
    monkeypatch.setattr(ring, "_memlock_budget", lambda: budget)
    got = ring._default_arena(chunk)
    assert got == want and type(got) is int


def test_setup_errors_say_where_and_what_to_change(monkeypatch) -> None:
    cfg = RingConfig(arena_bytes=4 * MiB, files=100)
    monkeypatch.setattr(ring, "_memlock_budget", lambda: None)
    e = Ring._setup_error(errno.ENOMEM, 6, cfg)
    assert e.errno == errno.ENOMEM
    assert str(e).endswith(
        "io_uring ring setup failed at registering the send arena (REGISTER_BUFFERS): "
        f"{os.strerror(errno.ENOMEM)} — the send arena is {4 * MiB} bytes and RLIMIT_MEMLOCK "
        "allows unlimited bytes: lower arena_bytes or raise the limit (ulimit -l, "
        "LimitMEMLOCK= in systemd)"
    )
    monkeypatch.setattr(ring, "_memlock_budget", lambda: 8 * MiB)
    assert f"RLIMIT_MEMLOCK allows {8 * MiB} bytes" in str(Ring._setup_error(errno.EPERM, 5, cfg))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert str(Ring._setup_error(errno.EMFILE, 3, cfg)).endswith(
        f"registering the fixed-file table: {os.strerror(errno.EMFILE)} — files=100 exceeds RLIMIT_NOFILE "
        f"{nofile}: lower files or raise ulimit -n"
    )
    # no hint where none applies, and a stage the core did not name
    assert str(Ring._setup_error(errno.EINVAL, 4, cfg)).endswith(f"fixed-file alloc range: {os.strerror(errno.EINVAL)}")
    assert "at validating the configuration:" in str(Ring._setup_error(errno.EINVAL, 0, cfg))


def test_open_beneath_names_the_path_it_could_not_open(tmp_path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileNotFoundError) as info:
            fs.open_beneath(fd, b"missing.txt", os.O_RDONLY)
        assert info.value.filename == "missing.txt"
        with pytest.raises(OSError) as info:
            fs.open_beneath(fd, b"../escape", os.O_RDONLY)
        assert info.value.errno == errno.EXDEV and info.value.filename == "../escape"
    finally:
        os.close(fd)
