"""A ring's settings (RingConfig), each declared once, on its field: type
and default, the rule a value must meet, a one-line help, the `uringserve`
option that sets it (if any) and the field of the core's `struct us_config`
it fills (core.h), as itself or converted.

Read from the declaration: RingConfig.validated() (the rules users meet,
and the values derived from others), Ring (the copy into us_config:
c_values()), the command's ring options (uringserve.cli) and the test that
every us_config field is declared here once. The core's valid_config()
(ring.c) keeps its own checks only as a guard behind these.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, get_type_hints

from ._native import lib
from .host import has_cap_ipc_lock

MiB = 1 << 20
U32 = (1 << 32) - 1
# RECV events carry a 32-bit offset into the received-data region
REGION_LIMIT = 1 << 32
# arena chunks and in-place segments are named in a 20-bit field of a completion's user_data
SEGMENT_NAMES = 1 << 20

SEND_MODES = {
    "auto": lib.US_SEND_AUTO,
    "plain": lib.US_SEND_PLAIN,
    "zc": lib.US_SEND_ZC,
    "zc_fixed": lib.US_SEND_ZC_FIXED,
}
RECV_MODES = {"pbuf": lib.US_RECV_PBUF, "plain": lib.US_RECV_PLAIN}
# how the ring sends from its stage (RingConfig.stage_send): a ring setting,
# though only the load generator (loadtest/engine.py) fills the stage
STAGE_SENDS = {
    "write_fixed": lib.US_STAGE_WRITE_FIXED,
    "send_zc_fixed": lib.US_STAGE_SEND_ZC_FIXED,
    "send": lib.US_STAGE_SEND,
}


def memlock_budget() -> int | None:
    """Bytes of pinned memory we may use, or None when there is no limit."""
    if has_cap_ipc_lock():
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return None if soft == resource.RLIM_INFINITY else soft


def _default_files() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # the kernel caps the fixed-file table at RLIMIT_NOFILE
    return max(64, min(soft if soft != resource.RLIM_INFINITY else 65536, 65536))


def _default_arena(chunk: int) -> int:
    budget = memlock_budget()
    want = 8 * MiB
    if budget is not None:
        # half the limit: the rest stays for other users of locked memory
        want = min(want, budget // 2)
    return max(2 * chunk, want - want % chunk)


_KEY = "uringserve.ring_setting"


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    lo: int | None = None,
    hi: int | None = None,
    power_of_two: bool = False,
    choices: Mapping[str, int] | None = None,
    option: str | None = None,
    option_lo: int | None = None,
    c: str | None = "",
    c_value: Callable[[Any], int] | None = None,
) -> Any:
    """A RingConfig field and its declaration (see Setting). `c`: the
    us_config field, "" for the setting's own name, None for none."""
    spec = {
        "help": help,
        "lo": lo,
        "hi": hi,
        "power_of_two": power_of_two,
        "choices": choices,
        "option": option,
        "option_lo": option_lo,
        "c": c,
        "c_value": c_value,
    }
    if factory is not None:
        return field(default_factory=factory, metadata={_KEY: spec})
    return field(default=default, metadata={_KEY: spec})


@dataclass(frozen=True)
class RingConfig:
    """Sizes and switches of one ring. Defaults fit an unprivileged user.

    Each field is one setting, declared by setting() (uringserve.ring_settings)."""

    sq_entries: int = setting(1024, "submission queue entries (the kernel rounds up to a power of two)", lo=8, hi=U32)
    cq_entries: int = setting(
        8192,
        "completion queue entries (never fewer than sq_entries)",
        lo=0,
        hi=U32,
        c_value=lambda cfg: max(cfg.cq_entries, cfg.sq_entries),  # the core refuses fewer than sq_entries
    )
    # --ring-files asks for 128 at least: the 64 reserved slots and as many connections
    files: int = setting(
        factory=_default_files, help="fixed-file table slots", lo=2, hi=1 << 20, option="--ring-files", option_lo=128
    )
    reserved_slots: int = setting(
        64, "low slots for listeners and sockets installed by hand (at most half the table)", lo=1, hi=U32
    )
    buf_count: int = setting(
        512, "provided receive buffers (power of 2)", lo=1, hi=32768, power_of_two=True, option="--ring-buf-count"
    )
    buf_size: int = setting(16384, "bytes per provided buffer", lo=64, hi=U32, option="--ring-buf-size")
    chunk_size: int = setting(32768, "bytes per send-arena chunk", lo=64, hi=U32)
    # None: from RLIMIT_MEMLOCK (_default_arena); --ring-arena-bytes asks for two default chunks at least
    arena_bytes: int | None = setting(
        None,
        "send arena bytes (default: from RLIMIT_MEMLOCK)",
        option="--ring-arena-bytes",
        option_lo=65536,
        c="arena_chunks",
        c_value=lambda cfg: cfg.arena_bytes // cfg.chunk_size,
    )
    zc_threshold: int = setting(32768, "send_mode auto: send_zc at or above this many bytes", lo=0, hi=U32)
    inplace_min: int = setting(16 * 1024, "bytes writes this large are sent in place, not copied", c=None)
    ext_segments: int = setting(
        4096, "in-place writes and file ranges in flight at once (beyond: copied)", lo=0, hi=(1 << 19) - 1
    )
    accept_depth: int = setting(4, "single-shot accepts in flight per listener", lo=1, hi=64)
    send_mode: str = setting("auto", "how the ring sends (auto: send_zc from zc_threshold up)", choices=SEND_MODES)
    recv_mode: str = setting(
        "pbuf", "pbuf: multishot recv from the buffer ring; plain: a buffer per connection", choices=RECV_MODES
    )
    fixed_files: bool = setting(True, "connections in the fixed-file table (False: regular fds, an ablation)")
    recv_bundle: bool = setting(False, "recv bundles (IORING_RECVSEND_BUNDLE, 6.10+) on multishot recv")
    setup_flags_off: int = setting(0, "io_uring setup flags never to try (tests force the fallbacks)", lo=0, hi=U32)
    max_events: int = setting(512, "events reaped per wait", lo=16, c=None)
    stage_bytes: int = setting(
        0, "registered memory for bytes sent many times (the load generator's requests)", lo=0, hi=(1 << 31) - 1
    )
    stage_send: str = setting("write_fixed", "how the stage is sent", choices=STAGE_SENDS)
    # 16 connections' 256 KiB reads; memory the kernel writes into is parked only while a bulk receive is armed
    bulk_bytes: int = setting(
        4 * MiB,
        "caller memory bulk receives may hold armed at once (0: every read through the buffer ring)",
        lo=0,
        hi=U32,
        option="--ring-bulk-bytes",
    )

    def validated(self) -> RingConfig:
        """This config with its derived values (reserved_slots at most half
        the table, arena_bytes sized and whole chunks); ValueError
        (RingConfigError) naming every setting that breaks its rule."""
        return validate(self)


class _Words:
    """How messages name a setting: its field name, or the command's option."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names

    def name(self, setting: str) -> str:
        return self.names.get(setting, setting)

    def value(self, s: Setting, value: Any) -> str:
        if s.name in self.names:
            return f"{self.names[s.name]} {value}"
        return f"{s.name} {value!r}" if isinstance(value, str) else f"{s.name}={value}"


@dataclass(frozen=True)
class Setting:
    """One ring setting, as declared on its RingConfig field."""

    name: str
    kind: type  # int, str or bool, from the field's annotation
    default: Any  # None: decided when the ring is made (a factory, or derived)
    optional: bool  # None is a value (derived in validate())
    help: str
    lo: int | None = None  # an integer setting with a rule has a least value, and may have a greatest
    hi: int | None = None
    power_of_two: bool = False
    choices: Mapping[str, int] | None = None  # the accepted names and the core's constant for each
    option: str | None = None  # the `uringserve` option that sets it
    option_lo: int | None = None  # where the command asks more than the ring does
    c_field: str | None = None  # the us_config field it fills; None: read by Python only
    c_value: Callable[[Any], int] | None = None  # what it fills in, when not the value itself

    @property
    def allowed(self) -> str:
        if self.power_of_two:
            return f"a power of two from {self.lo} to {self.hi}"
        return f"at least {self.lo}" if self.hi is None else f"{self.lo}..{self.hi}"

    def problem(self, value: Any, words: _Words) -> str | None:
        """What is wrong with `value` for this setting alone, or None."""
        if self.choices is not None:
            return None if value in self.choices else f"{words.value(self, value)} is not one of {sorted(self.choices)}"
        if self.kind is bool or (value is None and self.optional):
            return None
        if not isinstance(value, int):
            return f"{words.value(self, value)}: must be an integer"
        if (
            (self.lo is not None and value < self.lo)
            or (self.hi is not None and value > self.hi)
            or (self.power_of_two and value & (value - 1))
        ):
            return f"{words.value(self, value)}: must be {self.allowed}"
        return None

    def c(self, config: RingConfig) -> int:
        """The us_config field's value for a validated `config`."""
        if self.c_value is not None:
            return self.c_value(config)
        value = getattr(config, self.name)
        return self.choices[value] if self.choices is not None else int(value)


def _declared() -> tuple[Setting, ...]:
    hints = get_type_hints(RingConfig)
    out = []
    for f in fields(RingConfig):
        spec = dict(f.metadata[_KEY])  # a field without setting() is not declared: KeyError at import
        c = spec.pop("c")
        hint = hints[f.name]
        out.append(
            Setting(
                name=f.name,
                kind=hint if hint in (bool, str) else int,
                default=None if f.default is MISSING else f.default,
                optional=f.default is None,
                c_field=f.name if c == "" else c,
                **spec,
            )
        )
    return tuple(out)


SETTINGS = _declared()
SETTING = {s.name: s for s in SETTINGS}


class RingConfigError(ValueError):
    """A RingConfig that breaks its settings' rules: `problems`, one per rule broken."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid RingConfig: " + "; ".join(problems))


def validate(config: RingConfig, names: Mapping[str, str] | None = None) -> RingConfig:
    """`config` with its derived values, or RingConfigError naming each
    problem. `names`: what the messages call a setting, by field name (the
    command's options); the others by their field name."""
    words = _Words(names or {})
    problems = [p for s in SETTINGS if (p := s.problem(getattr(config, s.name), words)) is not None]
    if problems:
        raise RingConfigError(problems)
    # what one setting allows depends on others
    reserved = min(config.reserved_slots, max(1, config.files // 2))  # the rest of the table takes connections
    chunk = config.chunk_size
    arena = config.arena_bytes if config.arena_bytes is not None else _default_arena(chunk)
    region = config.buf_count * config.buf_size
    if config.recv_mode == "plain":
        region += config.files * config.buf_size
    if region >= REGION_LIMIT:
        problems.append(
            f"received-data region of {region} bytes exceeds 4 GiB: "
            f"lower {words.name('buf_size')} or {words.name('files')}"
        )
    if 0 < config.bulk_bytes < lib.US_BULK_READ:
        # below one bulk read no connection could ever switch: say so rather than run with bulk off
        problems.append(
            f"{words.value(SETTING['bulk_bytes'], config.bulk_bytes)} is smaller than one bulk read "
            f"({lib.US_BULK_READ}): use 0 to turn bulk receive off, or at least {lib.US_BULK_READ}"
        )
    said = words.value(SETTING["arena_bytes"], arena)
    if arena < chunk:
        problems.append(f"{said} is smaller than one chunk ({chunk})")
    elif arena // chunk + config.ext_segments >= SEGMENT_NAMES:
        problems.append(
            f"{said}: {arena // chunk} chunks of {chunk} bytes and "
            f"{words.value(SETTING['ext_segments'], config.ext_segments)} must be fewer than {SEGMENT_NAMES} "
            f"in all: lower {words.name('arena_bytes')} or {words.name('ext_segments')}, "
            f"or raise {words.name('chunk_size')}"
        )
    if problems:
        raise RingConfigError(problems)
    return replace(config, reserved_slots=reserved, arena_bytes=arena - arena % chunk)


def c_values(config: RingConfig) -> Iterator[tuple[str, int]]:
    """Each us_config field and its value for a validated `config`."""
    for s in SETTINGS:
        if s.c_field is not None:
            yield s.c_field, s.c(config)
