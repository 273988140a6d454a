"""--reload: the supervisor's file watcher, for development.

The supervisor (workers.py) already replaces its worker with a fresh
interpreter on SIGHUP, keeps the old one serving when the new one cannot
start, and drains the old one once the new one is ready; --reload is that
supervisor with one worker and a Watcher that asks it for the same reload
when a source file changes. Nothing of it runs in the worker.

The watching itself is watchfiles' (inotify through its Rust core, with
its debounce: a burst of saves is one batch), in a thread of the
supervisor that only collects paths and wakes the supervisor's selector
through a pipe; the supervisor decides when to reload. What counts as a
source file is ReloadFilter's: `--reload-include` globs (default `*.py`)
minus `--reload-exclude` globs, never under a virtualenv, `__pycache__`,
a VCS directory or any hidden directory, nor a hidden file (editors' swap
and lock files).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

logger = logging.getLogger("uringserve.workers")

MISSING = "uringserve: --reload needs watchfiles: pip install 'uringserve[reload]'"
DEFAULT_INCLUDE = "*.py"
# never sources of the app: tools' caches, dependencies, VCS metadata
# (hidden directories are ignored as well; a virtualenv of any name by its pyvenv.cfg)
IGNORED_DIRS = frozenset(
    {"__pycache__", "node_modules", "site-packages", "venv", ".venv", ".git", ".hg", ".svn", ".tox", ".nox"}
)
SHOWN = 5  # changed files named in the log line; beyond: "and N more"
# watchfiles' grouping: a batch ends after STEP ms without a change, or DEBOUNCE ms after its first
STEP_MS = 50
DEBOUNCE_MS = 1600


def available() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class ReloadFilter:
    """Which changed paths reload. Globs match the path relative to the
    watched directory from the right, as PurePath.match does (`*.py`,
    `templates/*.html`); an exclude glob that matches a directory excludes
    everything below it (`build`, `tests/fixtures`), and so does an exclude
    that names an existing directory, absolute or from the working
    directory, as uvicorn's does."""

    dirs: tuple[Path, ...]
    includes: tuple[str, ...] = (DEFAULT_INCLUDE,)
    excludes: tuple[str, ...] = ()
    exclude_dirs: tuple[Path, ...] = ()

    @classmethod
    def from_options(
        cls, dirs: Sequence[str] | None, includes: Sequence[str] | None, excludes: Sequence[str] | None
    ) -> ReloadFilter:
        """As uvicorn: the working directory by default; includes add to `*.py`."""
        roots = tuple(dict.fromkeys(Path(d).resolve() for d in (dirs or [os.getcwd()])))
        inc = tuple(dict.fromkeys([DEFAULT_INCLUDE, *(includes or [])]))
        exc = tuple(excludes or ())
        return cls(roots, inc, exc, tuple(Path(e).resolve() for e in exc if os.path.isdir(e)))

    def __call__(self, change: Any, path: str) -> bool:
        """watchfiles' filter signature: True when `path` should reload."""
        return self.matches(Path(path))

    def matches(self, path: Path) -> bool:
        if any(path.is_relative_to(d) for d in self.exclude_dirs):
            return False
        root = next((d for d in self.dirs if path.is_relative_to(d)), None)
        rel = PurePath(path.relative_to(root)) if root is not None else PurePath(path.name)
        if not rel.parts or rel.name.startswith("."):
            return False
        below = root if root is not None else path.parent
        for part in rel.parts[:-1]:
            if part in IGNORED_DIRS or part.startswith("."):
                return False
            below = below / part
            if (below / "pyvenv.cfg").exists():  # a virtualenv, whatever its name
                return False
        for pattern in self.excludes:
            if any(PurePath(*rel.parts[: n + 1]).match(pattern) for n in range(len(rel.parts))):
                return False
        return any(rel.match(pattern) for pattern in self.includes)


def describe(paths: Iterable[str]) -> str:
    """'a.py', 'pkg/b.py' (relative to the working directory, as uvicorn says them)."""
    cwd = Path.cwd()
    shown = []
    for p in sorted(paths):
        try:
            shown.append(f"'{Path(p).relative_to(cwd)}'")
        except ValueError:
            shown.append(f"'{p}'")
    more = len(shown) - SHOWN
    return ", ".join(shown[:SHOWN]) + (f" and {more} more" if more > 0 else "")


class Watcher:
    """watchfiles.watch() in a thread of the supervisor: changed paths are
    collected (take()) and the supervisor's selector is woken through a pipe
    (fileno()). stop() ends the thread within watchfiles' STEP_MS."""

    def __init__(self, filter: ReloadFilter) -> None:
        self.filter = filter
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._r = self._w = -1

    def start(self) -> None:
        import watchfiles

        # its "N changes detected" per batch: the supervisor says what a change does
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        # the workers write no bytecode: a .pyc records its source's mtime in
        # whole seconds and its size, so an edit in the same second that keeps
        # the size (v1 -> v2) would import the stale .pyc
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._stop.clear()
        # not a daemon: a watcher that does not stop would keep the process, not vanish silently
        self._thread = threading.Thread(target=self._run, args=(watchfiles,), name="uringserve-reload")
        self._thread.start()
        logger.info(
            "--reload: watching %s for %s%s",
            ", ".join(map(str, self.filter.dirs)),
            ", ".join(self.filter.includes),
            f" (except {', '.join(self.filter.excludes)})" if self.filter.excludes else "",
        )

    def _run(self, watchfiles: Any) -> None:
        try:
            for changes in watchfiles.watch(
                *self.filter.dirs,
                watch_filter=self.filter,
                stop_event=self._stop,
                step=STEP_MS,
                debounce=DEBOUNCE_MS,
                raise_interrupt=False,
                ignore_permission_denied=True,
            ):
                with self._lock:
                    self._changed.update(path for _, path in changes)
                try:
                    os.write(self._w, b"c")
                except BlockingIOError:  # the pipe is full of wake-ups the supervisor has yet to read
                    pass
        except Exception as exc:  # a watched directory removed, inotify's watch limit reached
            logger.error("--reload: the file watcher stopped (%s): changes no longer reload", exc)

    def fileno(self) -> int:
        return self._r

    def take(self) -> set[str]:
        """The paths changed since the last take()."""
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self._r, self._w):
            if fd >= 0:
                os.close(fd)
        self._r = self._w = -1
