"""`python -m uringserve doctor`: why io_uring works or does not here
(host.py says why, as the error a failed ring setup raises does), and which
of its features we use. Features are found by probing the running kernel
(IORING_REGISTER_PROBE, setup flags), never by its version number; the
version column only tells a reader which kernel brings a feature.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import asdict, dataclass

from . import ring  # ring.Ring looked up per report: a test stands in one whose kernel refused a flag
from ._native import ffi, lib
from .fs import open_beneath
from .host import has_cap_ipc_lock, seccomp_mode, sysctl, unavailable_reason


def core_ops() -> dict[str, tuple[int, str, tuple[str, ...]]]:
    """Every io_uring opcode the core submits, from its own table (US_OPS,
    listed by us_ops()): name -> (IORING_OP_* number, the kernel that
    brought it, the core's operations that submit it). A new operation in
    the core is probed here without a line in this file."""
    n = ffi.new("int *")
    table = lib.us_ops(n)
    out: dict[str, tuple[int, str, tuple[str, ...]]] = {}
    for e in table[0 : n[0]]:
        name = ffi.string(e.name).decode()
        op, since, tags = out.get(name, (e.op, ffi.string(e.since).decode(), ()))
        out[name] = (op, since, (*tags, ffi.string(e.tag).decode()))
    return out


OPS = core_ops()

SETUP_FLAGS = {  # name: (bit, kernel)
    "SINGLE_ISSUER": (1 << 12, "6.0"),
    "DEFER_TASKRUN": (1 << 13, "6.1"),
    "SUBMIT_ALL": (1 << 7, "5.18"),
    "R_DISABLED": (1 << 6, "5.10"),
    "CQSIZE": (1 << 3, "5.5"),
}

FEAT_RECVSEND_BUNDLE = 1 << 14


@dataclass
class Check:
    name: str
    ok: bool
    needs: str
    where: str
    detail: str = ""


def report() -> dict:
    """Everything doctor prints, as data."""
    out: dict = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "io_uring_disabled_sysctl": sysctl("io_uring_disabled"),
        "seccomp_mode": seccomp_mode(),
        "rlimit_memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
        "cap_ipc_lock": has_cap_ipc_lock(),
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "usable": False,
        "reason": None,
        "checks": [],
    }
    ops = ffi.new("int[]", 128)
    last = lib.us_probe_all(ops, 128)
    if last < 0:
        out["reason"] = unavailable_reason(-last)
        return out
    checks: list[Check] = []
    for name, (op, kver, tags) in OPS.items():
        where = _OP_WHERE.get(name) or "core: " + ", ".join(tags).lower()
        checks.append(Check(f"op {name}", bool(ops[op]), kver, where))
    try:
        probe = ring.Ring(
            ring.RingConfig(files=64, reserved_slots=8, buf_count=8, arena_bytes=2 * 32768, sq_entries=8, cq_entries=16)
        )
    except OSError as exc:
        out["reason"] = str(exc)
        out["checks"] = [asdict(c) for c in checks]
        return out
    probe.wait(0)  # the first enter enables the ring and registers its fd
    st = probe.stats()
    probe.close()
    out["usable"] = True
    for name, (bit, kver) in SETUP_FLAGS.items():
        checks.append(
            Check(
                f"setup {name}",
                bool(st["setup_flags"] & bit),
                kver,
                "ring setup",
                "" if st["setup_flags"] & bit else "refused: fell back without it",
            )
        )
    checks.append(Check("registered ring fd", bool(st["registered_ring"]), "5.18", "ring setup"))
    checks.append(Check("sparse fixed files + alloc range", True, "6.0", "fixed files"))
    checks.append(Check("provided buffer ring", True, "5.19", "recv"))
    checks.append(Check("registered send arena", bool(st["arena_registered"]), "5.13", "send"))
    checks.append(
        Check("recv bundles", bool(st["features"] & FEAT_RECVSEND_BUNDLE), "6.10", "recv (optional, off by default)")
    )
    beneath = openat2_error()
    checks.append(
        Check(
            "openat2 RESOLVE_BENEATH",
            beneath is None,
            "5.6",
            "static files",
            ""
            if beneath is None
            else f"{beneath}: request paths are resolved with realpath() and checked instead, a few system calls more",
        )
    )
    checks.extend(tls_checks())
    out["checks"] = [asdict(c) for c in checks]
    budget = None if has_cap_ipc_lock() else out["rlimit_memlock"]
    cfg = ring.RingConfig().validated()
    out["defaults"] = {
        "files": cfg.files,
        "arena_bytes": cfg.arena_bytes,
        "buf_count": cfg.buf_count,
        "buf_size": cfg.buf_size,
    }
    notes = []
    if budget is not None and budget != resource.RLIM_INFINITY:
        notes.append(
            f"registered memory counts against RLIMIT_MEMLOCK ({budget} bytes) for this "
            f"user: the default send arena is sized to half of it ({cfg.arena_bytes} bytes)"
        )
    if out["rlimit_nofile"] < 4096:
        notes.append(
            f"RLIMIT_NOFILE is {out['rlimit_nofile']}: the fixed-file table (and so the "
            "connection limit) cannot be larger; raise ulimit -n"
        )
    if not ops[OPS["FIXED_FD_INSTALL"][0]]:
        notes.append("no FIXED_FD_INSTALL: transport.get_extra_info('socket') returns None")
    out["notes"] = notes
    return out


def openat2_error() -> str | None:
    """None when openat2(RESOLVE_BENEATH) works here, else why not."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open("/", flags)
    try:
        os.close(open_beneath(fd, b".", flags))
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno is not None else str(exc)
    finally:
        os.close(fd)
    return None


# what each opcode serves, for the reader of the report (an opcode missing
# here is shown with the core's operations that submit it)
_OP_WHERE = {
    "ACCEPT": "server",
    "RECV": "recv",
    "SEND": "send",
    "SEND_ZC": "send",
    "SENDMSG": "send (writes of many pieces, file segments)",
    "CLOSE": "transport",
    "SHUTDOWN": "transport",
    "ASYNC_CANCEL": "transport, selector",
    "POLL_ADD": "selector",
    "FIXED_FD_INSTALL": "transport (optional)",
    "URING_CMD": "kTLS (optional: setsockopt on a fixed file; without it TLS stays in OpenSSL)",
    "FILES_UPDATE": "fixed files (adopted sockets, static files)",
    "READ_FIXED": "static files (read into the send arena)",
    "READ": "static files (arena not registered)",
    "SOCKET": "load generator (connect)",
    "CONNECT": "load generator (connect)",
    "WRITE_FIXED": "load generator (staged requests)",
    "NOP": "fault injection (tests)",
}


KTLS_USED = "--tls-ktls auto: the kernel encrypts what TLS connections send (receiving stays in OpenSSL)"
KTLS_FALLBACK = "--tls-ktls auto: not used, OpenSSL encrypts in user space"


def tls_checks() -> list[Check]:
    """TLS: the core's record layer (the OpenSSL it links) and kTLS: whether
    --tls-ktls auto (the default) hands the send direction to the kernel."""
    from . import ktls, tls

    ok, why = ktls.probe()
    return [
        Check("TLS in the core (--tls-cert)", True, "-", "TLS", tls.openssl_version()),
        Check("kTLS (TCP_ULP tls)", ok, "4.13", KTLS_USED if ok else KTLS_FALLBACK, why),
    ]


def format_report(rep: dict) -> str:
    lines = [f"kernel {rep['kernel']} ({rep['machine']})", f"io_uring: {'usable' if rep['usable'] else 'UNUSABLE'}"]
    if rep["reason"]:
        lines.append(f"  why: {rep['reason']}")
    lines.append(
        f"kernel.io_uring_disabled = {rep['io_uring_disabled_sysctl']}, seccomp mode = "
        f"{rep['seccomp_mode']}, RLIMIT_MEMLOCK = {rep['rlimit_memlock']}, "
        f"CAP_IPC_LOCK = {rep['cap_ipc_lock']}, RLIMIT_NOFILE = {rep['rlimit_nofile']}"
    )
    if rep["checks"]:
        lines.append(f"{'feature':36} {'here':5} {'kernel':7} used in")
        for c in rep["checks"]:
            mark = "yes" if c["ok"] else "NO"
            extra = f"  ({c['detail']})" if c["detail"] else ""
            lines.append(f"{c['name']:36} {mark:5} {c['needs']:7} {c['where']}{extra}")
    if rep.get("defaults"):
        d = rep["defaults"]
        lines.append(
            f"defaults here: {d['files']} fixed files, send arena {d['arena_bytes']} bytes, "
            f"{d['buf_count']} x {d['buf_size']} B provided buffers"
        )
    for n in rep.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)
