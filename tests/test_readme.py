"""The README's commands and snippets, run as written.

Every line of the README's ```sh blocks, every ```python block and the
commands its prose names (INLINE) is either run here or listed in SKIPPED
with the reason; test_every_readme_command_is_run_or_skipped_with_a_reason
fails when the README gains one this file does not know, or loses one it
lists.

They run in a sandbox (Sandbox): their own network namespace (loopback
only, so the README's fixed ports 8000, 6379, 7000, 9464 are free and
nothing here is reachable from outside), PID namespace (`pgrep` sees only
them; everything started is gone with it) and mount namespace, in which
/run is an empty tmpfs and the checkout is an overlay whose writes land in
a tmpfs (the snippets saved as files, `scenario.py`, the certificates and
JSON files the load examples write): the checkout is left as it was. A
shell command runs as a user would type it after `. .venv/bin/activate`
in the checkout's root, as the README says; a server is stopped with
SIGTERM (the `make` targets: make hands it on to the demo).

Two liberties, both made here and nowhere else: every `uringload` run is
cut to 1 s (`-d 1s`: the README's runs of 3 to 10 s would add minutes),
and the sandbox's copy of `.venv/.installed` is dated a day ahead so that
`make` does not try to reinstall (offline) when a file it depends on is
newer, even one edited while the tests run: `make test` has just brought
the venv up to date.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, children, die_with_parent, wait_until

README = ROOT / "README.md"
VENV_PY = ROOT / ".venv" / "bin" / "python"
UNLOADED = "1s"  # every uringload run's duration here


# -- what the README holds ------------------------------------------------------------


def readme() -> str:
    return README.read_text()


def fenced(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", readme(), re.S | re.M)


def shell_commands() -> list[str]:
    """The ```sh blocks' commands: one per line (continued lines joined,
    comment lines dropped), except a block with a here-document, which is
    one script."""
    out = []
    for block in fenced("sh"):
        if "<<" in block:
            out.append(block.strip())
            continue
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.rstrip())
    return out


def key(command: str) -> str:
    """A command without its trailing comment and extra blanks: what the tables below name."""
    if "\n" in command:
        return command
    return re.sub(r"\s+", " ", re.sub(r"\s+#.*$", "", command)).strip()


def inline_code() -> str:
    """The README's `code` spans, line breaks inside them as spaces."""
    prose = re.sub(r"^```.*?^```$", "", readme(), flags=re.S | re.M)
    return " ".join("`" + re.sub(r"\s+", " ", c) + "`" for c in re.findall(r"`([^`]+)`", prose))


# -- the sandbox ---------------------------------------------------------------------

SETUP = """
set -e
ip link set lo up
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs {layer}
mkdir {layer}/upper {layer}/work
mount -t overlay overlay -o lowerdir={root},upperdir={layer}/upper,workdir={layer}/work {root}
touch -d "+1 day" {root}/.venv/.installed
echo ready
exec sleep infinity
"""


def sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for its network, PID and mount namespaces (the README's fixed ports and /run)"
    missing = [t for t in ("unshare", "nsenter", "ip", "bash", "make") if not shutil.which(t)]
    if missing:
        return f"needs {', '.join(missing)}"
    if not VENV_PY.exists():
        return "needs the checkout's .venv (`make run` or `make test` makes it)"
    return None


class Sandbox:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        layer = tmp / "layer"
        layer.mkdir()
        # --kill-child, and unshare itself dying with this process: nothing
        # started inside outlives the tests, even when they are killed
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
            + ["--propagation", "private"]
            + ["sh", "-c", SETUP.format(layer=shlex.quote(str(layer)), root=shlex.quote(str(ROOT)))],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert self.holder.stdout is not None
        said = self.holder.stdout.readline()
        if said != "ready\n":
            self.holder.kill()
            out = said + self.holder.communicate(timeout=10)[0]
            pytest.skip(f"no sandbox here: {out.strip()}")
        self.init = children(self.holder.pid)[0]  # PID 1 inside (it said ready): when it dies, all inside die
        self.n = 0

    def close(self) -> None:
        os.kill(self.init, signal.SIGKILL)
        self.holder.wait(10)
        if self.holder.stdout:
            self.holder.stdout.close()

    def script(self, text: str) -> list[str]:
        """Run `text` in the checkout's root with the venv activated, as a user would."""
        self.n += 1
        path = self.tmp / f"cmd{self.n}.sh"
        # the file, not `bash -c`: a command line holding the text would be
        # found by the README's own `pgrep -f apps/http.py`
        path.write_text(f"cd {shlex.quote(str(ROOT))}\n. .venv/bin/activate\n{text}\n")
        return [*self.enter(), "bash", str(path)]

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-n", "-m", "-p", "--"]

    def run(self, text: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.script(text), capture_output=True, text=True, timeout=timeout, env=ENV)

    def start(self, command: str) -> Background:
        return Background(self.script("exec " + command))

    def probe(self, checks: list[dict[str, Any]], server: Background | None = None) -> list[Any]:
        """Run the checks inside (PROBE); the first one waits up to 60 s for
        the server to listen, or until `server` exits (then: what it printed)."""
        p = subprocess.Popen(
            [*self.enter(), str(VENV_PY), "-c", PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out: dict[str, str] = {}

        def talk() -> None:
            out["stdout"], out["stderr"] = p.communicate(json.dumps(checks))

        feed = threading.Thread(target=talk, daemon=True)
        feed.start()
        end = time.monotonic() + 120
        while feed.is_alive():
            feed.join(0.05)
            ended = server is not None and server.p.poll() is not None
            if ended or time.monotonic() > end:
                p.kill()
                feed.join(10)
                assert not ended, f"the server exited ({server.p.returncode}) printing:\n{server.output()}"
                raise AssertionError("the probe hung")
        assert p.returncode == 0, out["stderr"]
        return json.loads(out["stdout"])


# what a user's shell has before `. .venv/bin/activate`, not what this test runs under
# (and PYTHONFAULTHANDLER: a server that hangs is made to print where, see post_mortem)
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_CURRENT_TEST")}
ENV["PYTHONFAULTHANDLER"] = "1"


class Background:
    """A server started in the sandbox. nsenter forks to enter the PID
    namespace and waits for the command, exiting as it did; signals go to
    the command itself. What it prints is kept (output())."""

    def __init__(self, args: list[str]) -> None:
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_until(lambda: children(self.p.pid) or self.p.poll() is not None)  # nsenter forks into the namespace
        kids = children(self.p.pid)
        assert kids or self.p.poll() is not None, "nsenter started nothing"
        self.pid = kids[0] if kids else None

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def post_mortem(self) -> str:
        """What it printed and, while it still runs, each of its processes'
        Python stacks (PYTHONFAULTHANDLER, SIGABRT): where a server that does
        not answer as it should is."""
        if self.pid is None or self.p.poll() is not None:
            return self.output()
        tree = [self.pid]
        for pid in tree:
            tree += children(pid)
        for pid in reversed(tree):  # the workers first: the supervisor would kill them as it dies
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(10)
        self.reader.join(10)
        return self.output()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.pid is not None and self.p.poll() is None:
            os.kill(self.pid, sig)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()  # the sandbox's end kills what it ran
            self.p.wait()
        self.reader.join(10)
        if self.p.stdout:
            self.p.stdout.close()
        return self.p.returncode


# One program inside the sandbox checks what a server answers: HTTP
# (status, body), echo, RESP PING, a socket file's mode or presence. The
# first check waits for the server to listen (refused: try again) up to 60 s.
PROBE = r"""
import json, os, socket, stat, sys, time

checks = json.loads(sys.stdin.read())
deadline = time.monotonic() + 60


def connect(addr):
    if isinstance(addr, str):
        family, where = socket.AF_UNIX, addr
    else:
        family, where = (socket.AF_INET6 if ":" in addr[0] else socket.AF_INET), tuple(addr)
    while True:
        s = socket.socket(family)
        s.settimeout(20)
        try:
            s.connect(where)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_all(s):
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data


out = []
for c in checks:
    kind = c["kind"]
    if kind == "mode":
        out.append(oct(stat.S_IMODE(os.stat(c["path"]).st_mode)))
        continue
    if kind == "exists":
        out.append(os.path.exists(c["path"]))
        continue
    s = connect(c["addr"])
    if kind == "http":  # with "until": asked again until that status (a readiness probe), to the deadline
        while True:
            body = c.get("body", "").encode()
            s.sendall(
                f"{c.get('method', 'GET')} {c['path']} HTTP/1.1\r\nHost: readme\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            )
            head, _, rest = read_all(s).partition(b"\r\n\r\n")
            status = int(head.split()[1])
            if status == c.get("until", status) or time.monotonic() > deadline:
                break
            s.close()
            time.sleep(0.05)
            s = connect(c["addr"])
        out.append([status, rest.decode(errors="replace")])
    elif kind == "echo":
        msg = b"ping from the README test"
        s.sendall(msg)
        got = b""
        while len(got) < len(msg) and (chunk := s.recv(64)):
            got += chunk
        out.append(got.decode())
    elif kind == "resp":
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        out.append(s.recv(64).decode())
    s.close()
print(json.dumps(out))
"""


# -- what each command must do ----------------------------------------------------------


def http(port: int, path: str = "/", host: str = "127.0.0.1", **kw: Any) -> dict[str, Any]:
    return {"kind": "http", "addr": [host, port], "path": path, **kw}


def echo(addr: Any) -> dict[str, Any]:
    return {"kind": "echo", "addr": addr}


def ping(port: int) -> dict[str, Any]:
    return {"kind": "resp", "addr": ["127.0.0.1", port]}


@dataclass
class Contains:
    text: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.text in other


HELLO = [200, "Hello, world!\n"]
INDEX = (ROOT / "apps" / "static" / "index.html").read_text()
ECHOED = "ping from the README test"
PONG = "+PONG\r\n"


@dataclass
class Serve:
    """A README command or snippet that serves until stopped: what it must
    answer, its exit status after SIGTERM, what it leaves after."""

    checks: list[tuple[dict[str, Any], Any]]
    status: int = 0
    after: list[tuple[dict[str, Any], Any]] = field(default_factory=list)


# `make`, stopped by SIGTERM, hands it on to the demo, waits for it, and dies of the signal itself
MAKE_STOPPED = -signal.SIGTERM

SERVERS: dict[str, Serve] = {
    # the top of the README
    "make run": Serve([(http(8000), HELLO), (http(8000, "/static/index.html"), [200, INDEX])], MAKE_STOPPED),
    "make run HOST=0.0.0.0 PORT=9000": Serve([(http(9000), HELLO)], MAKE_STOPPED),
    "make echo": Serve([(echo(["127.0.0.1", 8000]), ECHOED)], MAKE_STOPPED),
    "make resp": Serve([(ping(6379), PONG)], MAKE_STOPPED),
    "make resp PORT=7379": Serve([(ping(7379), PONG)], MAKE_STOPPED),
    # Production: the quick start and "The command"
    "uringserve run apps.http:app --host 0.0.0.0 --port 8000 --workers 2 --metrics 127.0.0.1:9464": Serve(
        [
            (http(8000), HELLO),
            (http(9464, "/ready", until=200), [200, "ready\n"]),  # every worker is up
            (http(9464, "/metrics"), [200, Contains('uringserve_http_requests_total{code="2xx"} 1.0')]),
        ]
    ),
    "uringserve run apps.http:app --host 0.0.0.0 --port 8000": Serve([(http(8000), HELLO)]),
    "uringserve run apps.echo:Echo --protocol --uds /run/echo.sock --uds-mode 660": Serve(
        [(echo("/run/echo.sock"), ECHOED), ({"kind": "mode", "path": "/run/echo.sock"}, "0o660")],
        after=[({"kind": "exists", "path": "/run/echo.sock"}, False)],
    ),
    "uringserve echo --port 7000": Serve([(echo(["127.0.0.1", 7000]), ECHOED)]),
    "uringserve resp --port 6379": Serve([(ping(6379), PONG)]),
}

# the ```python blocks, each known by one of its lines; saved in the checkout's root and run
SNIPPETS: dict[str, Serve] = {
    # asyncio.run's way: SIGTERM is not handled, the process ends by it
    "uringserve.run(main())                                   # like asyncio.run": Serve(
        [(echo(["127.0.0.1", 8000]), ECHOED)], -signal.SIGTERM
    ),
    'Server(Echo).run(listeners=[TCP("::", 7000), Unix("/run/echo.sock", mode=0o660)])': Serve(
        [
            (echo(["::1", 7000]), ECHOED),
            (echo(["127.0.0.1", 7000]), ECHOED),  # "::" takes IPv4 too
            (echo("/run/echo.sock"), ECHOED),
            ({"kind": "mode", "path": "/run/echo.sock"}, "0o660"),
        ],
        after=[({"kind": "exists", "path": "/run/echo.sock"}, False)],
    ),
    'run(app, "127.0.0.1", 8000)             # until SIGTERM/SIGINT, then a graceful drain': Serve(
        [
            (http(8000), [200, "hello\n"]),
            (http(8000, "/files/index.html"), [200, INDEX]),
            (http(8000, "/size", method="POST", body="x" * 1000), [200, "1000 bytes\n"]),
            (http(8000, "/elsewhere"), [404, "not here\n"]),
        ]
    ),
    'run(upload, "127.0.0.1", 8000)': Serve(
        [(http(8000, "/", method="POST", body="y" * 300_000), [200, "300000 bytes\n"])]
    ),
}

# commands run to their end while a server runs: which one, by the address they talk to
CLIENT_TARGETS = [
    # (--compare reads the two runs the lines before it saved from the HTTP demo)
    (re.compile(r"(https?|wss?)://127\.0\.0\.1:(8000|8443)\b|^cat > scenario\.py|^uringload --compare "), "make run"),
    (re.compile(r"tcp://127\.0\.0\.1:8000\b"), "make echo"),
    (re.compile(r"redis://127\.0\.0\.1:6379\b|^redis-cli ping$"), "make resp"),
]

# commands the prose names (`make resp`, `redis-cli ping`, ...): each must still be in the README
INLINE_SERVERS = ["make run HOST=0.0.0.0 PORT=9000", "make echo", "make resp", "make resp PORT=7379"]
INLINE_CLIENTS = ["redis-cli ping"]
INLINE_RUN = {  # run to their end, by themselves: what they must print
    "python -m uringserve doctor": "defaults here: ",
    "make doctor": "defaults here: ",
}

SKIPPED = {
    "make test": "it is this suite (and the lint before it)",
    "uringserve run myapp:make_app --factory": "myapp stands for the reader's module (test_cli.py runs --factory)",
    "uringserve run myflaskapp:app --wsgi-threads 20": (
        "myflaskapp stands for the reader's module (test_wsgi_apps.py serves a Flask app with uringserve run)"
    ),
    "sudo cp deploy/systemd/uringserve.socket deploy/systemd/uringserve.service /etc/systemd/system/": (
        "installs units on this machine and needs systemd as PID 1 "
        "(test_deploy.py verifies the units, test_activation.py runs uringserve behind systemd-socket-activate)"
    ),
    "sudo systemctl daemon-reload && sudo systemctl enable --now uringserve.socket": "systemd as PID 1 (as above)",
    "sudo install -D -m 644 deploy/kubernetes/seccomp-uringserve.json "
    "/var/lib/kubelet/seccomp/profiles/seccomp-uringserve.json": "a Kubernetes node's kubelet directory",
    "kubectl apply -f deploy/kubernetes/deployment.yaml -f deploy/kubernetes/service.yaml "
    "-f deploy/kubernetes/pdb.yaml -f deploy/kubernetes/hpa.yaml": (
        "needs a cluster (test_deploy.py validates the manifests offline against the 1.30 schemas)"
    ),
    "uvicorn app:app --loop uringserve.uvicorn:loop_factory": (
        "app:app stands for the reader's app (test_uvicorn.py runs uvicorn with this --loop)"
    ),
    "pip install 'uringserve[reload]'": "installs from the package index (the test extra has watchfiles)",
    "uringserve run myapp:app --reload": "myapp stands for the reader's module (test_reload.py edits one it serves)",
    "uringserve run myapp:app --reload --reload-dir src --reload-include '*.html' --reload-exclude 'tests'": (
        "as above (test_reload.py runs --reload-include and --reload-exclude, test_cli.py --reload-dir)"
    ),
}
# the benchmarks: minutes each, with wrk, nginx, granian; `make bench` is their own check
BENCHMARK = re.compile(r"^(make bench|\.venv/bin/python bench/|URINGSERVE_STATIC=DIR \.venv/bin/python bench/)")
BENCHMARK_REASON = "a benchmark: minutes of full load, with wrk, nginx or granian (`make bench` runs them)"


def target_of(command: str) -> str | None:
    for pattern, server in CLIENT_TARGETS:
        if pattern.search(command):
            return server
    return None


def unloaded(command: str) -> str:
    """Each uringload run cut to UNLOADED (the module's docstring says why)."""

    def one(m: re.Match[str]) -> str:
        run = m.group(0)
        if "--compare" in run:
            return run
        if re.search(r"(^|\s)-d \S+", run):
            return re.sub(r"(^|\s)-d \S+", rf"\g<1>-d {UNLOADED}", run)
        return run.replace("uringload ", f"uringload -d {UNLOADED} ", 1)

    return re.sub(r"\buringload [^;&|\n>]*", one, command)


def clients_of(server: str) -> list[str]:
    found = [c for c in shell_commands() if key(c) not in SERVERS and target_of(c) == server]
    found += [c for c in INLINE_CLIENTS if target_of(c) == server]
    return found


def plot_extra_missing(command: str) -> bool:
    """`--plot` where the plot extra (matplotlib) is not installed (`make
    test` does not install it): the README says it needs the extra, so the
    run must say so in one line and fail."""
    if "--plot" not in command:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


# -- the tests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    why = sandbox_unavailable()
    if why:
        pytest.skip(why)
    box = Sandbox(tmp_path_factory.mktemp("readme"))
    try:
        yield box
    finally:
        box.close()


def test_every_readme_command_is_run_or_skipped_with_a_reason() -> None:
    known = set(SERVERS) | set(SKIPPED)
    unknown = []
    for command in shell_commands():
        k = key(command)
        if k in known or target_of(command) or BENCHMARK.match(k):
            continue
        unknown.append(command)
    assert not unknown, "README commands this test neither runs nor skips:\n" + "\n".join(unknown)
    blocks = fenced("python")
    for block in blocks:
        lines = [line.rstrip() for line in block.splitlines()]
        assert sum(k in lines for k in SNIPPETS) == 1, f"a ```python block this test does not know:\n{block}"
    assert len(blocks) == len(SNIPPETS)
    commands = {key(c) for c in shell_commands()}
    spans = inline_code()
    listed = set(SERVERS) | set(SKIPPED) | set(INLINE_RUN) | set(INLINE_CLIENTS)
    stale = [c for c in listed if c not in commands and f"`{c}`" not in spans]
    assert not stale, f"listed here, no longer in the README: {stale}"
    for c in INLINE_SERVERS:
        assert c in SERVERS
    # what is not run says why, and where a test file covers it instead, that file exists
    for command, reason in sorted(SKIPPED.items()) + [("benchmarks", BENCHMARK_REASON)]:
        assert reason.strip(), command
        for named in re.findall(r"\btest_\w+\.py\b", reason):
            assert (ROOT / "tests" / named).is_file(), f"`{command}`: {reason}"


def serve_and_check(sandbox: Sandbox, command: str, spec: Serve, clients: list[str]) -> None:
    srv = sandbox.start(command)
    try:
        got = sandbox.probe([c for c, _ in spec.checks], srv)
        if got != [want for _, want in spec.checks]:
            pytest.fail(f"{command} answered {got}\n{srv.post_mortem()}")
        for client in clients:
            out = sandbox.run(unloaded(client))
            if plot_extra_missing(client):
                assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
                assert "pip install 'uringserve[plot]'" in out.stderr, out.stderr
                continue
            assert out.returncode == 0, f"{client}\n--- stdout ---\n{out.stdout}\n--- stderr ---\n{out.stderr}"
            check_client(client, out)
    finally:
        status = srv.stop()
    output = srv.output()
    assert "Traceback" not in output, output
    assert status == spec.status, f"{command} exited {status}:\n{output}"
    if spec.after:
        assert sandbox.probe([c for c, _ in spec.after]) == [want for _, want in spec.after]


def check_client(command: str, out: subprocess.CompletedProcess[str]) -> None:
    """What a client's run must show: a whole report, no socket errors
    (none of these runs gives a correct server a reason for one)."""
    assert "Traceback" not in out.stderr, out.stderr
    if command.startswith("redis-cli"):
        assert out.stdout == "PONG\n"
        return
    runs = re.findall(r"\buringload [^;&|\n]*", command)
    reports = [r for r in runs if "--compare" not in r and ">" not in r]  # each prints wrk's report
    assert len(re.findall(r"\d+ (?:requests|messages) in [\d.]+s", out.stdout)) == len(reports), out.stdout
    assert "Socket errors" not in out.stdout, out.stdout
    if any("--compare" in r for r in runs):
        assert "a.json" in out.stdout and "b.json" in out.stdout, out.stdout


@pytest.mark.timeout(900)
@pytest.mark.parametrize("command", list(SERVERS))
def test_readme_server_commands(sandbox: Sandbox, command: str) -> None:
    """Each command that serves: started as written, answers what the README
    says, and the commands the README runs against it succeed."""
    readme_has = {key(c) for c in shell_commands()} | {c for c in INLINE_SERVERS if f"`{c}`" in inline_code()}
    if command not in readme_has:
        pytest.fail(f"`{command}` is no longer in the README: remove it from SERVERS")
    serve_and_check(sandbox, command, SERVERS[command], clients_of(command))


@pytest.mark.parametrize("line", list(SNIPPETS))
def test_readme_python_snippets(sandbox: Sandbox, line: str) -> None:
    """Each ```python block saved as a file in the checkout's root and run
    with the venv's Python; it serves what it says."""
    (block,) = [b for b in fenced("python") if line in [x.rstrip() for x in b.splitlines()]]
    name = f"readme_snippet_{list(SNIPPETS).index(line)}.py"
    saved = sandbox.tmp / name
    saved.write_text(block)
    sandbox.run(f"cp {shlex.quote(str(saved))} {name}").check_returncode()  # into the sandbox's checkout
    serve_and_check(sandbox, f"python {name}", SNIPPETS[line], [])


@pytest.mark.parametrize("command", list(INLINE_RUN))
def test_readme_commands_that_report(sandbox: Sandbox, command: str) -> None:
    assert f"`{command}`" in inline_code()
    out = sandbox.run(command)
    assert out.returncode == 0, out.stdout + out.stderr
    assert INLINE_RUN[command] in out.stdout, out.stdout


@pytest.mark.skipif(not shutil.which("make"), reason="needs make")
@pytest.mark.parametrize(
    ("exported", "args", "port"),
    [({}, [], 6379), ({}, ["PORT=7379"], 7379), ({"PORT": "1234"}, [], 6379), ({"PORT": "1234"}, ["PORT=7379"], 7379)],
    ids=["default", "given", "exported", "exported-and-given"],
)
def test_make_resp_moves_off_6379_only_for_a_port_given_to_make(exported: dict, args: list[str], port: int) -> None:
    """`make resp PORT=7379` moves the RESP demo; a PORT the shell exports
    (a PaaS's, meant for a web server) does not. make -n: what it would run."""
    env = {k: v for k, v in ENV.items() if k != "PORT"} | exported
    out = subprocess.run(["make", "-n", "resp", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    (line,) = [x for x in out.stdout.splitlines() if "apps/resp_server.py" in x]
    assert line.endswith(f" --port {port}"), line


def test_unloaded_cuts_every_run_and_nothing_else() -> None:
    assert unloaded("uringload -c 100 -d 10s --latency http://x/") == "uringload -c 100 -d 1s --latency http://x/"
    assert unloaded("uringload http://x/ > a.json") == "uringload -d 1s http://x/ > a.json"
    assert unloaded("uringload --compare a.json b.json") == "uringload --compare a.json b.json"
    assert unloaded("x &\nuringload --cacert c.pem https://y/\nkill %1") == (
        "x &\nuringload -d 1s --cacert c.pem https://y/\nkill %1"
    )
