"""Fault injection for tests: make chosen ring operations fail on purpose.

A plan is a few rules, each "operation=error" with when it fires::

    recv=ENOBUFS:rate=0.3          30 % of receive arms fail with ENOBUFS
    send=short:every=3             every third send goes out half-sent
    accept=EMFILE:nth=1            the first accept fails with EMFILE
    zc_copied:every=1              every zero-copy notification says "copied"
    send=EPIPE:rate=0.01:limit=5   at most five EPIPEs
    setup=arena:ENOMEM             the next ring's send-arena registration fails

Whoever wants faults passes them: `inject(ring, rules)` on a ring that
exists, or a Plan to `Ring(config, faults=plan)` / `UringEventLoop(config,
faults=plan)`, which also fails that ring's setup. Nothing is injected
otherwise: the core checks one pointer per operation.

For tests that run a whole process (a server, a load worker), the plan is
the environment variable URINGSERVE_FAULTS (rules separated by ";"), read
by from_env() at the process's edge only: where a server makes its loop
(uringserve.server.new_loop) and where a load worker makes its ring
(loadtest.run.worker_main). Ring itself never reads it.

Errors are injected where the kernel reports them (see
uringserve/_native/faults.h): the operation is replaced by a NOP that
completes with the error, so the server sees exactly what a failing kernel
operation would show it, and no byte moves.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._native import ffi, lib

if TYPE_CHECKING:
    from .ring import Ring

ENV = "URINGSERVE_FAULTS"

OPS = {
    "accept": lib.US_FAULT_ACCEPT,
    "recv": lib.US_FAULT_RECV,
    "send": lib.US_FAULT_SEND,
    "zc_copied": lib.US_FAULT_ZC_COPIED,
}
SETUP_STAGES = {"buffer-ring": lib.US_SETUP_FAULT_BUF_RING, "arena": lib.US_SETUP_FAULT_ARENA}
_WHEN = ("nth", "every", "rate", "limit", "seed")


@dataclass(frozen=True)
class Fault:
    """One rule: `op` fails with `error` (an errno name; "short" for a short
    send; None for zc_copied) on the `nth` call, every `every`th call and
    with probability `rate`, at most `limit` times (0: no limit)."""

    op: str
    error: str | None = None
    nth: int = 0
    every: int = 0
    rate: float = 0.0
    limit: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"fault: unknown operation {self.op!r}; one of {', '.join(OPS)}")
        if self.op == "zc_copied":
            if self.error is not None:
                raise ValueError("fault: zc_copied takes no error (it marks notifications as copied)")
        elif self.error == "short":
            if self.op != "send":
                raise ValueError(f"fault: 'short' is a send fault, not a {self.op} one")
        elif self.error is None or not isinstance(getattr(errno, self.error, None), int):
            raise ValueError(f"fault: {self.op} needs an errno name such as ECONNRESET, got {self.error!r}")
        if not (self.nth or self.every or self.rate):
            raise ValueError(f"fault: {self.op} never fires: give nth=, every= or rate=")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault: rate must be between 0 and 1, got {self.rate}")
        if min(self.nth, self.every, self.limit, self.seed) < 0:
            raise ValueError("fault: nth, every, limit and seed are counts (>= 0)")

    @property
    def errno(self) -> int:
        if self.error is None or self.error == "short":
            return 0
        return int(getattr(errno, self.error))


@dataclass(frozen=True)
class SetupFault:
    """The next ring's registration of `stage` fails with `error`."""

    stage: str
    error: str

    def __post_init__(self) -> None:
        if self.stage not in SETUP_STAGES:
            raise ValueError(f"fault: setup stage must be one of {', '.join(SETUP_STAGES)}, got {self.stage!r}")
        if not isinstance(getattr(errno, self.error, None), int):
            raise ValueError(f"fault: setup needs an errno name such as ENOMEM, got {self.error!r}")


def parse(plan: str) -> list[Fault | SetupFault]:
    """Rules separated by ";" (see the module's docstring)."""
    rules: list[Fault | SetupFault] = []
    for text in filter(None, (part.strip() for part in plan.split(";"))):
        head, *opts = text.split(":")
        op, _, error = head.partition("=")
        if op == "setup":
            if len(opts) != 1:
                raise ValueError(f"fault: write setup faults as setup=STAGE:ERRNO, got {text!r}")
            rules.append(SetupFault(error, opts[0]))
            continue
        when: dict[str, float] = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key not in _WHEN or not eq:
                raise ValueError(f"fault: {opt!r} in {text!r}: expected one of {', '.join(k + '=' for k in _WHEN)}")
            try:
                when[key] = float(value) if key == "rate" else int(value)
            except ValueError:
                raise ValueError(f"fault: {opt!r} in {text!r} is not a number") from None
        rules.append(Fault(op, error or None, **when))  # type: ignore[arg-type]
    return rules


def inject(ring: Ring, faults: list[Fault]) -> None:
    """Apply `faults` to `ring` (one rule per operation; a later rule for the
    same operation replaces the earlier)."""
    for f in faults:
        spec = ffi.new("struct us_fault_spec *")
        spec.err = f.errno
        spec.nth = f.nth
        spec.every = f.every
        spec.ppm = round(f.rate * 1_000_000)
        spec.limit = f.limit
        spec.seed = f.seed
        ret = lib.us_fault_set(ring.handle, OPS[f.op], spec)
        if ret == -errno.EOPNOTSUPP:
            raise OSError(errno.EOPNOTSUPP, "fault injection needs Linux 6.10 or newer (IORING_NOP_INJECT_RESULT)")
        if ret < 0:
            raise OSError(-ret, f"fault {f}: {os.strerror(-ret)}")


def clear(ring: Ring) -> None:
    for code in OPS.values():
        lib.us_fault_set(ring.handle, code, ffi.NULL)


def fail_next_setup(fault: SetupFault) -> None:
    lib.us_fault_setup_next(SETUP_STAGES[fault.stage], getattr(errno, fault.error))


def counts(ring: Ring) -> dict[str, tuple[int, int]]:
    """{op: (calls seen, faults injected)} since the rule was set."""
    calls = ffi.new("uint64_t[]", len(OPS))
    hits = ffi.new("uint64_t[]", len(OPS))
    lib.us_fault_counts(ring.handle, calls, hits)
    return {name: (int(calls[code]), int(hits[code])) for name, code in OPS.items()}


@dataclass(frozen=True)
class Plan:
    """Rules for one ring and failures of its setup: what Ring(faults=...)
    applies (ring.FaultPlan)."""

    rules: tuple[Fault, ...] = ()
    setup: tuple[SetupFault, ...] = ()

    def before_setup(self) -> None:
        for f in self.setup:
            fail_next_setup(f)

    def apply(self, ring: Ring) -> None:
        if self.rules:
            inject(ring, list(self.rules))


def plan(text: str) -> Plan:
    """A Plan from rules separated by ";" (see the module's docstring)."""
    rules = parse(text)
    return Plan(tuple(r for r in rules if isinstance(r, Fault)), tuple(r for r in rules if isinstance(r, SetupFault)))


def from_env() -> Plan | None:
    """Tests only: the plan in URINGSERVE_FAULTS, or None. The one reader of
    the variable, called at a process's edge (see the module's docstring)."""
    text = os.environ.get(ENV)
    return plan(text) if text else None
