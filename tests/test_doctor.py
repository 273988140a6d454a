"""`python -m uringserve doctor` and the errors raised when io_uring is unusable."""

from __future__ import annotations

import dataclasses
import errno
import json
import subprocess
import sys

import pytest
from conftest import uringserve

from uringserve import diagnose, host


def test_doctor_text_names_every_feature() -> None:
    out = uringserve("doctor")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "io_uring: usable" in text
    for name in (
        "ACCEPT",
        "SEND_ZC",
        "FIXED_FD_INSTALL",
        "DEFER_TASKRUN",
        "SINGLE_ISSUER",
        "registered ring fd",
        "provided buffer ring",
        "registered send arena",
        "recv bundles",
        "openat2 RESOLVE_BENEATH",
    ):
        assert name in text
    assert "RLIMIT_MEMLOCK" in text


def test_doctor_json() -> None:
    out = uringserve("doctor", "--json")
    rep = json.loads(out.stdout)
    assert rep["usable"] is True
    names = {c["name"]: c for c in rep["checks"]}
    assert names["op SEND_ZC"]["needs"] == "6.0"
    # what the report says is what a ring set up here gets
    from uringserve.ring import Ring, RingConfig

    ring = Ring(RingConfig(files=64, reserved_slots=8, buf_count=8, arena_bytes=65536, sq_entries=8, cq_entries=16))
    try:
        ring.wait(0)
        flags = ring.stats()["setup_flags"]
    finally:
        ring.close()
    for name, (bit, _) in diagnose.SETUP_FLAGS.items():
        assert names[f"setup {name}"]["ok"] is bool(flags & bit), name
    assert all({"name", "ok", "needs", "where"} <= set(c) for c in rep["checks"])


@pytest.mark.parametrize(
    "files, err, words",
    [
        ({"io_uring_disabled": "2"}, errno.EPERM, "kernel.io_uring_disabled=2"),
        ({"io_uring_disabled": "1", "io_uring_group": "1234"}, errno.EPERM, "io_uring_group=1234"),
        ({"io_uring_disabled": "0", "seccomp": 2}, errno.EPERM, "seccomp"),
        ({"io_uring_disabled": None, "seccomp": 0}, errno.ENOSYS, "Linux 6.1"),
        ({"io_uring_disabled": "0", "seccomp": 0}, errno.ENOMEM, "RLIMIT_MEMLOCK"),
    ],
)
def test_unavailable_reasons(monkeypatch, files, err, words) -> None:
    def fake_read(path: str):
        key = path.rsplit("/", 1)[1]
        return files.get(key)

    monkeypatch.setattr(host, "_read", fake_read)
    monkeypatch.setattr(host, "seccomp_mode", lambda: files.get("seccomp"))
    exc = host.unavailable_error(err)
    assert isinstance(exc, OSError) and exc.errno == err
    assert words in str(exc)
    assert "python -m uringserve doctor" in str(exc)


def test_seccomp_blocked_io_uring_fails_at_start_with_the_reason() -> None:
    """A real seccomp filter (as container runtimes install) blocks io_uring_setup."""
    script = r"""
import ctypes, errno, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# BPF: if nr == io_uring_setup (425) return ERRNO(EPERM) else ALLOW
def stmt(code, k): return struct.pack("HBBI", code, 0, 0, k)
def jump(code, k, jt, jf): return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([stmt(0x20, 0), jump(0x15, 425, 0, 1), stmt(0x06, 0x00050000 | errno.EPERM), stmt(0x06, 0x7fff0000)])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(4, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
import uringserve
try:
    uringserve.new_event_loop()
except uringserve.UringUnavailable as exc:
    print(exc)
    sys.exit(3)
"""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the filter uses x86_64 syscall numbers")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 3, out.stderr
    assert "seccomp" in out.stdout and "io_uring_setup" in out.stdout


def test_doctor_reports_a_setup_flag_the_kernel_refused(monkeypatch) -> None:
    """A flag the ring had to fall back without is reported missing, with why."""
    from uringserve import ring as ring_mod

    bit = diagnose.SETUP_FLAGS["DEFER_TASKRUN"][0]
    real = ring_mod.Ring

    def refusing(cfg):  # as if the kernel had refused it
        return real(dataclasses.replace(cfg, setup_flags_off=cfg.setup_flags_off | bit))

    monkeypatch.setattr(ring_mod, "Ring", refusing)
    rep = diagnose.report()
    check = {c["name"]: c for c in rep["checks"]}["setup DEFER_TASKRUN"]
    assert check["ok"] is False and "refused" in check["detail"]
    assert {c["name"]: c for c in rep["checks"]}["setup SINGLE_ISSUER"]["ok"] is True


def test_doctor_probes_every_opcode_the_core_submits() -> None:
    """The probe list is the core's own table: each opcode the core can
    submit has its row (named, with its kernel), so a kernel without one is
    said, and a new operation in the core is probed without a change here."""
    from uringserve._native import ffi, lib

    n = ffi.new("int *")
    table = lib.us_ops(n)
    submitted = {ffi.string(e.name).decode(): e.op for e in table[0 : n[0]]}
    assert {"SENDMSG", "READ_FIXED", "FILES_UPDATE", "SOCKET", "CONNECT", "WRITE_FIXED", "READ"} <= set(submitted)
    rep = diagnose.report()
    rows = {c["name"]: c for c in rep["checks"] if c["name"].startswith("op ")}
    assert set(rows) == {f"op {name}" for name in submitted}
    probed = ffi.new("int[]", 128)
    lib.us_probe_all(probed, 128)
    for name, op in submitted.items():
        assert rows[f"op {name}"]["ok"] is bool(probed[op]), name
        assert rows[f"op {name}"]["where"], name
        assert rows[f"op {name}"]["needs"].count(".") == 1, name
