"""What is decided before any I/O: the ring's settings (ring_settings.py:
their declaration against the core's struct us_config, their rules against
the core's own valid_config, the send arena's default size from
RLIMIT_MEMLOCK), the words of a setup failure, and openat2's errors. The
core is asked about a configuration with a fault that stops its setup at
the buffer ring: nothing large is set up here."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
from typing import Any

import pytest

from uringserve import fs, ring_settings
from uringserve._native import ffi, lib
from uringserve.ring import MiB, Ring, RingConfig
from uringserve.ring_settings import SETTING, SETTINGS, U32, RingConfigError


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
    monkeypatch.setattr(ring_settings, "memlock_budget", lambda: budget)
    got = ring_settings._default_arena(chunk)
    assert got == want and type(got) is int


def test_setup_errors_say_where_and_what_to_change(monkeypatch) -> None:
    cfg = RingConfig(arena_bytes=4 * MiB, files=100)
    monkeypatch.setattr(ring_settings, "memlock_budget", lambda: None)
    e = Ring._setup_error(errno.ENOMEM, 6, cfg)
    assert e.errno == errno.ENOMEM
    assert str(e).endswith(
        "io_uring ring setup failed at registering the send arena (REGISTER_BUFFERS): "
        f"{os.strerror(errno.ENOMEM)} — the send arena is {4 * MiB} bytes and RLIMIT_MEMLOCK "
        "allows unlimited bytes: lower arena_bytes or raise the limit (ulimit -l, "
        "LimitMEMLOCK= in systemd)"
    )
    monkeypatch.setattr(ring_settings, "memlock_budget", lambda: 8 * MiB)
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


# -- the settings' declaration against the core's struct us_config ------------------------
C_RANGES = {"uint32_t": (0, U32), "int32_t": (-(1 << 31), (1 << 31) - 1)}


def test_every_us_config_field_is_declared_once() -> None:
    """A field added to us_config (core.h) without its setting, or a setting
    that names a field the core does not have, fails here."""
    c_fields = [name for name, _ in ffi.typeof("struct us_config").fields]
    declared = [s.c_field for s in SETTINGS if s.c_field is not None]
    assert sorted(declared) == sorted(c_fields)
    assert len(set(declared)) == len(declared), "two settings fill one us_config field"
    assert [f.name for f in dataclasses.fields(RingConfig)] == [s.name for s in SETTINGS]


def test_what_a_setting_allows_fits_its_c_field() -> None:
    """No value the rules let through overflows the field Ring copies it into."""
    types = {name: f.type.cname for name, f in ffi.typeof("struct us_config").fields}
    for s in SETTINGS:
        if s.c_field is None:
            continue
        lo, hi = C_RANGES[types[s.c_field]]
        if s.choices is not None:
            assert all(lo <= v <= hi for v in s.choices.values()), s.name
        elif s.kind is bool:
            assert lo <= 0 and 1 <= hi
        elif s.c_value is None:
            assert s.lo is not None and s.hi is not None and lo <= s.lo and s.hi <= hi, s.name
    # the two converted ones: cq_entries is the larger of two bounded values,
    # arena_chunks is below SEGMENT_NAMES (test_core_rules)
    assert {s.name for s in SETTINGS if s.c_value is not None} == {"cq_entries", "arena_bytes"}


def _outside(s: ring_settings.Setting) -> list[Any]:
    values: list[Any] = []
    if s.lo is not None:
        values.append(s.lo - 1)
    if s.hi is not None:
        values.append(s.hi + 1)
    if s.power_of_two:
        values.append(s.hi - 1)  # type: ignore[operator]
    return values


@pytest.mark.parametrize("s", [s for s in SETTINGS if _outside(s) or s.choices], ids=lambda s: s.name)
def test_a_value_just_outside_a_rule_is_refused_naming_the_setting_and_what_it_allows(s) -> None:
    for value in _outside(s):
        with pytest.raises(RingConfigError) as info:
            RingConfig(**{s.name: value}).validated()
        assert info.value.problems == (f"{s.name}={value}: must be {s.allowed}",)
        assert str(info.value) == f"invalid RingConfig: {s.name}={value}: must be {s.allowed}"
    if s.choices is not None:
        with pytest.raises(ValueError, match=rf"^invalid RingConfig: {s.name} 'nope' is not one of \['"):
            RingConfig(**{s.name: "nope"}).validated()
    with pytest.raises(RingConfigError, match=f"{s.name}=1.5: must be an integer" if s.lo is not None else "one of"):
        RingConfig(**{s.name: 1.5}).validated()


def test_messages_name_a_setting_as_the_caller_says_it() -> None:
    """The command's options in place of field names: no rewriting of messages."""
    config = RingConfig(buf_count=3, files=1)
    with pytest.raises(RingConfigError) as info:
        ring_settings.validate(config, names={"buf_count": "--ring-buf-count"})
    assert info.value.problems == (
        "files=1: must be 2..1048576",
        "--ring-buf-count 3: must be a power of two from 1 to 32768",
    )


# -- the core's valid_config (ring.c) against the Python rules ------------------------------
# A small ring (doctor's probe) that each case moves to one edge of one check.
BASE = dict(files=64, reserved_slots=8, buf_count=8, buf_size=1024, chunk_size=4096, arena_bytes=65536)
BASE.update(sq_entries=8, cq_entries=16)
ARENA_EDGE = 64 * ((1 << 20) - 4096)  # 64-byte chunks that with 4096 segments fill the 20-bit names

# Each check of valid_config: settings just inside it (accepted by Python and
# by the core), the change that takes them just outside (refused by Python,
# in these words, and by the core when handed to it without Python's check).
CORE_RULES = {
    "buf_count not 0": ({"buf_count": 1}, {"buf_count": 0}, "buf_count=0: must be a power of two"),
    "buf_count a power of two": ({"buf_count": 4}, {"buf_count": 6}, "buf_count=6: must be a power of two"),
    "buf_count <= 32768": ({"buf_count": 32768, "buf_size": 64}, {"buf_count": 65536}, "buf_count=65536: must be"),
    "files >= 2": ({"files": 2, "reserved_slots": 1}, {"files": 1}, "files=1: must be 2..1048576"),
    "files <= 1 << 20": ({"files": 1 << 20}, {"files": (1 << 20) + 1}, "files=1048577: must be 2..1048576"),
    "reserved_slots >= 1": ({"reserved_slots": 1}, {"reserved_slots": 0}, "reserved_slots=0: must be 1.."),
    "arena_chunks >= 1": ({"arena_bytes": 4096}, {"arena_bytes": 4095}, "arena_bytes=4095 is smaller than one chunk"),
    "chunk_size >= 64": ({"chunk_size": 64}, {"chunk_size": 63}, "chunk_size=63: must be 64.."),
    "buf_size >= 64": ({"buf_size": 64}, {"buf_size": 63}, "buf_size=63: must be 64.."),
    "arena_chunks + ext_segments < 1 << 20": (
        {"chunk_size": 64, "arena_bytes": ARENA_EDGE - 64, "ext_segments": 4096},
        {"arena_bytes": ARENA_EDGE},
        "arena_bytes=66846720: 1044480 chunks of 64 bytes and ext_segments=4096 must be fewer than 1048576 in all",
    ),
    "accept_depth >= 1": ({"accept_depth": 1}, {"accept_depth": 0}, "accept_depth=0: must be 1..64"),
    "accept_depth <= 64": ({"accept_depth": 64}, {"accept_depth": 65}, "accept_depth=65: must be 1..64"),
    "sq_entries >= 8": ({"sq_entries": 8}, {"sq_entries": 7}, "sq_entries=7: must be 8.."),
    "region < 4 GiB": (
        {"buf_count": 32768, "buf_size": (1 << 17) - 1},
        {"buf_size": 1 << 17},
        "received-data region of 4294967296 bytes exceeds 4 GiB: lower buf_size or files",
    ),
    "region < 4 GiB, plain recv (a buffer per slot too)": (
        {"recv_mode": "plain", "buf_count": 32768, "buf_size": 130816},  # (32768 + 64) * 130816 < 4 GiB
        {"buf_size": 130817},
        "received-data region of 4294983744 bytes exceeds 4 GiB",
    ),
}


def core_stage(config: RingConfig) -> int:
    """Where the core's us_ring_new stopped for `config`, copied into
    us_config as Ring copies it but not validated by Python: 0 is a refusal
    by valid_config; any other stage is past it (a fault ends the setup at
    the buffer ring, before the arena is mapped and pinned)."""
    c = ffi.new("struct us_config *")
    for name, value in ring_settings.c_values(config):
        setattr(c, name, value)
    err, stage = ffi.new("int *"), ffi.new("int *")
    lib.us_fault_setup_next(lib.US_SETUP_FAULT_BUF_RING, errno.ENOMEM)
    try:
        ptr = lib.us_ring_new(c, err, stage)
    finally:
        lib.us_fault_setup_next(0, 0)  # not taken when the setup stopped earlier: the next ring must not meet it
    assert ptr == ffi.NULL  # the fault, or an earlier stop
    assert stage[0] or err[0] == errno.EINVAL
    return stage[0]


@pytest.mark.parametrize("rule", CORE_RULES)
def test_each_check_of_the_core_is_a_python_rule_at_the_same_edge(rule: str) -> None:
    inside, outside, words = CORE_RULES[rule]
    accepted = RingConfig(**{**BASE, **inside}).validated()
    assert core_stage(accepted) != 0, f"{rule}: the core refuses what Python accepts"
    beyond = RingConfig(**{**BASE, **inside, **outside})
    with pytest.raises(RingConfigError) as info:
        beyond.validated()
    assert len(info.value.problems) == 1 and words in info.value.problems[0]
    assert core_stage(beyond) == 0, f"{rule}: the core takes it (a Python rule with no check behind it in C)"


def test_the_core_takes_each_setting_at_both_ends_of_its_python_range() -> None:
    """A check added to the core that Python does not make fails here (or
    in the table above) unless it is made in Python too."""
    refused = []
    for s in SETTINGS:
        if s.c_field is None or s.kind is not int or s.c_value is not None:
            continue
        for value in (s.lo, s.hi):
            config = RingConfig(**{**BASE, s.name: value})
            try:
                config = config.validated()
            except RingConfigError:  # another rule (the received-data region, the arena) stops it first
                refused.append((s.name, value))
                continue
            assert core_stage(config) != 0, f"{s.name}={value}: the core refuses what Python accepts"
    assert refused == [("buf_size", U32), ("chunk_size", U32)]


def test_what_the_core_would_refuse_python_derives_instead() -> None:
    """valid_config's two other checks, reserved_slots < files and
    cq_entries >= sq_entries, are never met: validated() keeps
    reserved_slots to half the table and Ring passes the larger queue."""
    raw = RingConfig(**{**BASE, "files": 4, "reserved_slots": 4, "sq_entries": 64, "cq_entries": 8})
    assert core_stage(raw) == 0
    config = raw.validated()
    assert config.reserved_slots == 2
    assert dict(ring_settings.c_values(config))["cq_entries"] == 64
    assert core_stage(config) != 0


def test_a_ring_at_the_edges_is_made() -> None:
    edges = dict(files=2, reserved_slots=1, buf_count=32768, buf_size=64, accept_depth=64, ext_segments=0)
    r = Ring(RingConfig(**{**BASE, **edges, "chunk_size": 64, "arena_bytes": 64}))
    try:
        st = r.stats()
        assert (st["slots_total"], st["bufs_total"], st["arena_chunks"]) == (1, 32768, 1)
    finally:
        r.close()


def test_ring_copies_every_declared_field_into_the_core() -> None:
    config = RingConfig(**{**BASE, "send_mode": "zc", "recv_mode": "plain", "fixed_files": False}).validated()
    values = dict(ring_settings.c_values(config))
    assert values["arena_chunks"] == 16 and values["fixed_files"] == 0
    assert values["send_mode"] == lib.US_SEND_ZC and values["recv_mode"] == lib.US_RECV_PLAIN
    assert values["stage_send"] == lib.US_STAGE_WRITE_FIXED
    assert SETTING["inplace_min"].c_field is None and SETTING["max_events"].c_field is None
