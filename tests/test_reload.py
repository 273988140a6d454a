"""`uringserve run APP --reload`: the supervisor with a file watcher. An
edit changes the answer; a syntax error saved mid-edit is printed and the
old code answers until the file is fixed; ignored and excluded files do not
reload; a change during a reload is one more reload after it; --workers 2
and a missing watchfiles are refused in one line; SIGTERM leaves nothing
behind. Each against a real `python -m uringserve run` serving a small app
copied into a temporary directory (the working directory it watches)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BANNER, PY, Proc, children, get, uringserve, wait_until

from uringserve import reload

ASGI = """\
BODY = b"{body}"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": BODY}})
"""
NATIVE = """\
from uringserve.http import Response

BODY = b"{body}"


def app(request):
    return Response(BODY)
"""
# imported while the file "gate" exists, it says so and waits until it is removed
GATED = """\
import os
import time

BODY = b"{body}"
if os.path.exists("gate"):
    print(f"app {{BODY.decode()}} waits at the gate", flush=True)
    deadline = time.monotonic() + 60
    while os.path.exists("gate") and time.monotonic() < deadline:
        time.sleep(0.01)


def app(request):
    from uringserve.http import Response

    return Response(BODY)
"""
KINDS = {"asgi": ASGI, "native": NATIVE}


def write(folder: Path, body: str, template: str = ASGI, extra: str = "") -> None:
    (folder / "app.py").write_text(template.format(body=body) + extra)


def serve(folder: Path, *args: str, loop: str = "uring") -> Proc:
    command = [PY, "-m", "uringserve", "run", "app:app", "--port", "0", "--loop", loop, "--reload", *args]
    # bytecode written as a user's Python writes it: --reload must keep a stale .pyc from being imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return Proc(command, cwd=folder, env=env)


def answer(port: int) -> bytes | None:
    try:
        return get(port, timeout=5)
    except (OSError, AssertionError):
        return None


def answers(srv: Proc, body: bytes) -> None:
    """Polled after the line that says the reload is done: the old worker may
    still take a connection from the shared socket until its drain begins."""
    assert wait_until(lambda: answer(srv.port) == body, timeout=30, interval=0.05), (answer(srv.port), srv.output())


def lines(srv: Proc, text: str) -> list[str]:
    return [line for line in srv.output().splitlines() if text in line]


@pytest.mark.parametrize(("kind", "loop"), [("asgi", "uring"), ("native", "asyncio")])
def test_an_edit_changes_the_answer(tmp_path: Path, kind: str, loop: str) -> None:
    write(tmp_path, "v1", KINDS[kind])
    srv = serve(tmp_path, loop=loop)
    try:
        assert answer(srv.port) == b"v1"
        first = (tmp_path / "app.py").stat()
        for body in ("v2", "v3", "v4"):  # a burst of saves, as an editor's: one reload
            write(tmp_path, body, KINDS[kind])
        # as if saved in the second v1 was: the size and mtime a .pyc of v1 would record
        os.utime(tmp_path / "app.py", ns=(first.st_atime_ns, first.st_mtime_ns))
        said = srv.wait_line(lambda line: "detected changes in" in line)
        assert "WatchFiles detected changes in 'app.py': starting generation 1" in said, said
        srv.wait_line(lambda line: "reload done: generation 1 serving" in line)
        answers(srv, b"v4")  # not v1's stale bytecode
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    # the burst is one batch, or at most a second reload after the one in flight
    assert 1 <= len(lines(srv, "detected changes in")) <= 2, srv.output()


def test_a_syntax_error_keeps_the_old_code_answering_until_it_is_fixed(tmp_path: Path) -> None:
    write(tmp_path, "v1")
    srv = serve(tmp_path)
    try:
        write(tmp_path, "v1", extra="\n\ndef half_typed(:\n")  # saved mid-edit
        failed = srv.wait_line(lambda line: "reload failed" in line)
        assert "generation 1 could not start: a worker failed to start (exit status 1); generation 0 keeps serving" in (
            failed
        ), failed
        assert "SyntaxError" in srv.output() and "half_typed(:" in srv.output()  # the error, where it is
        assert answer(srv.port) == b"v1"  # the old code serves
        srv.p.send_signal(signal.SIGHUP)  # a reload by hand tries again, and fails the same way
        srv.wait_line(lambda line: "reload failed: generation 2 could not start" in line)
        assert answer(srv.port) == b"v1"
        write(tmp_path, "v2")  # fixed: the next change reloads
        srv.wait_line(lambda line: "reload done: generation 3 serving" in line)
        answers(srv, b"v2")
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert srv.output().count("SyntaxError") == 2, srv.output()  # one try per save or SIGHUP, not three each


def test_an_app_that_cannot_start_waits_for_the_fix(tmp_path: Path) -> None:
    """As uvicorn's reloader: started on a broken file, it says why and waits;
    the change that fixes it starts the worker (no exit 1 to restart by hand)."""
    write(tmp_path, "v1", extra="\n\ndef half_typed(:\n")
    command = [PY, "-m", "uringserve", "run", "app:app", "--port", "0", "--reload"]
    srv = Proc(command, cwd=tmp_path, ready="")
    try:
        srv.wait_line(lambda line: "a worker failed to start (exit status 1); waiting for a change" in line)
        write(tmp_path, "v2")
        srv.wait_line(lambda line: "detected changes in 'app.py': starting the workers again" in line)
        m = BANNER.search(srv.wait_line(BANNER.search))
        assert m
        assert answer(int(m.group(1))) == b"v2"
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert srv.output().count("SyntaxError") == 1, srv.output()


def test_a_change_during_a_reload_is_one_more_reload_after_it(tmp_path: Path) -> None:
    write(tmp_path, "v1", GATED)
    srv = serve(tmp_path)
    try:
        (tmp_path / "gate").touch()  # not a .py file: no reload
        write(tmp_path, "v2", GATED)
        srv.wait_line(lambda line: "app v2 waits at the gate" in line)  # generation 1 imports v2
        write(tmp_path, "v3", GATED)
        srv.wait_line(lambda line: "'app.py' changed during a reload: one more reload after it" in line)
        (tmp_path / "gate").unlink()
        srv.wait_line(lambda line: "reload done: generation 1 serving" in line)
        said = srv.wait_line(lambda line: "starting generation 2" in line)
        assert "WatchFiles detected changes in 'app.py'" in said, said
        srv.wait_line(lambda line: "reload done: generation 2 serving" in line)
        answers(srv, b"v3")
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert len(lines(srv, "detected changes in")) == 2, srv.output()


def test_ignored_and_excluded_files_do_not_reload(tmp_path: Path) -> None:
    write(tmp_path, "v1")
    # made before it starts: inotify does not see a file made in a directory just made before its watch is added
    for d in ("__pycache__", ".venv/lib", ".git", ".hidden", "myenv", "vendor/pkg"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a virtualenv of another name
    srv = serve(tmp_path, "--reload-exclude", "skip_*.py", "--reload-exclude", "vendor", "--reload-include", "*.tmpl")
    try:
        ignored = [
            "__pycache__/app.py",
            ".venv/lib/dep.py",
            ".git/hook.py",
            ".hidden/x.py",
            "myenv/site.py",
            "vendor/pkg/mod.py",  # --reload-exclude vendor: everything below it
            "skip_me.py",  # --reload-exclude skip_*.py
            "notes.txt",  # not *.py
            ".#app.py",  # an editor's lock file
        ]
        for name in ignored:
            (tmp_path / name).write_text("x = 1\n")
        (tmp_path / "page.tmpl").write_text("<p>\n")  # --reload-include *.tmpl: reloads
        said = srv.wait_line(lambda line: "detected changes in" in line)
        srv.wait_line(lambda line: "reload done: generation 1 serving" in line)
    finally:
        code = srv.stop()
    assert code == 0, srv.output()
    assert "detected changes in 'page.tmpl': starting generation 1" in said, said  # that file only
    assert len(lines(srv, "detected changes in")) == 1, srv.output()


def test_max_requests_recycles_the_worker_and_reload_still_follows_edits(tmp_path: Path) -> None:
    write(tmp_path, "v1")
    srv = serve(tmp_path, "--max-requests", "2")
    try:
        for _ in range(2):
            assert answer(srv.port) == b"v1"
        srv.wait_line(lambda line: "recycled" in line)
        answers(srv, b"v1")  # its replacement
        write(tmp_path, "v2")
        srv.wait_line(lambda line: "reload done: generation 1 serving" in line)
        answers(srv, b"v2")
    finally:
        code = srv.stop()
    assert code == 0, srv.output()


def test_sigterm_stops_the_supervisor_its_worker_and_the_watcher(tmp_path: Path) -> None:
    write(tmp_path, "v1")
    srv = serve(tmp_path)
    pid = srv.p.pid  # setpriv execs the command: the supervisor
    try:
        assert wait_until(lambda: len(children(pid)) == 1)
        (worker,) = children(pid)
        # the watcher (watchfiles' Rust core) runs in the supervisor, beside its main thread, not in the worker
        assert "_rust_notify" in Path(f"/proc/{pid}/maps").read_text()
        assert len(os.listdir(f"/proc/{pid}/task")) > 1
        assert "_rust_notify" not in Path(f"/proc/{worker}/maps").read_text()
    finally:
        srv.p.send_signal(signal.SIGTERM)
        code = srv.p.wait(30)
        srv.close()
    assert code == 0, srv.output()
    assert not Path(f"/proc/{worker}").exists(), srv.output()  # reaped: not even a zombie


def test_reload_with_workers_is_refused_with_the_reason() -> None:
    done = uringserve("run", "apps.http:app", "--port", "0", "--reload", "--workers", "2")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "uringserve: --reload runs one worker (it is for development: each change restarts it), not --workers 2: "
        "drop --workers, or --reload to serve with workers"
    ], done.stderr


def test_without_watchfiles_reload_is_one_line() -> None:
    hide = (
        "import sys; sys.modules['watchfiles'] = None; from uringserve.cli import main; "
        "sys.exit(main(['run', 'apps.http:app', '--port', '0', '--reload']))"
    )
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [reload.MISSING], done.stderr
    assert "pip install 'uringserve[reload]'" in reload.MISSING


def test_a_reload_dir_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    done = uringserve("run", "apps.http:app", "--port", "0", "--reload", "--reload-dir", str(tmp_path / "nope"))
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [f"uringserve: --reload-dir {tmp_path / 'nope'}: no such directory"]


@pytest.mark.parametrize(
    ("path", "reloads"),
    [
        ("app.py", True),
        ("pkg/mod.py", True),
        ("templates/index.html", True),  # --reload-include templates/*.html
        ("index.html", False),
        ("notes.txt", False),
        ("app.pyc", False),
        ("__pycache__/app.py", False),
        (".venv/lib/x.py", False),
        ("venv/x.py", False),
        ("pkg/.git/x.py", False),
        ("pkg/.cache/x.py", False),  # any hidden directory
        (".hidden.py", False),
        ("build/gen.py", False),  # --reload-exclude build: the directory
        ("pkg/test_x.py", False),  # --reload-exclude test_*.py
        ("node_modules/x.py", False),
    ],
)
def test_the_filter(tmp_path: Path, path: str, reloads: bool) -> None:
    f = reload.ReloadFilter.from_options([str(tmp_path)], ["templates/*.html"], ["build", "test_*.py"])
    assert f(None, str(tmp_path / path)) is reloads


def test_an_exclude_that_names_a_directory_excludes_it(tmp_path: Path) -> None:
    (tmp_path / "src" / "gen").mkdir(parents=True)
    f = reload.ReloadFilter.from_options([str(tmp_path)], None, [str(tmp_path / "src" / "gen")])
    assert not f(None, str(tmp_path / "src" / "gen" / "x.py"))
    assert f(None, str(tmp_path / "src" / "x.py"))


def test_the_filter_knows_a_virtualenv_by_its_pyvenv_cfg(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    f = reload.ReloadFilter.from_options([str(tmp_path)], None, None)
    assert f(None, str(tmp_path / "tools" / "x.py"))
    (tmp_path / "tools" / "pyvenv.cfg").write_text("")
    assert not f(None, str(tmp_path / "tools" / "x.py"))
    assert not f(None, str(tmp_path / "tools" / "lib" / "x.py"))


def test_the_log_line_names_at_most_five_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    said = reload.describe(str(tmp_path / f"m{i}.py") for i in range(7))
    assert said == "'m0.py', 'm1.py', 'm2.py', 'm3.py', 'm4.py' and 2 more"
    assert reload.describe(["/elsewhere/x.py"]) == "'/elsewhere/x.py'"


def test_reload_options_without_reload_are_said_to_do_nothing(caplog: pytest.LogCaptureFixture) -> None:
    from uringserve import cli

    with caplog.at_level("WARNING"):
        cli.check_reload(cli.build_parser({}).parse_args(["run", "m:a", "--reload-exclude", "tests"]))
        cli.check_reload(cli.build_parser({}).parse_args(["run", "m:a"]))
    assert [r.getMessage() for r in caplog.records] == [
        "--reload-dir, --reload-include and --reload-exclude do nothing without --reload"
    ]
