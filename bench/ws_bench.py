"""WebSocket echo, interleaved: uringserve (ASGI and native) against
uvicorn, granian, hypercorn, the `websockets` library's server and picows'.

    python bench/ws_bench.py [--rounds 5] [--seconds 4] [--conns 100] [--cases ...] [--servers ...]

100 connections, closed loop (each sends a text message, waits for its
echo, sends the next), 64 B and 16 KiB, permessage-deflate off and on, and
over TLS (`wss://`, TLS 1.3, a trustme ECDSA P-256 certificate; the cases
64B-tls and 16KiB-tls, driven by the picows client, the only generator here
with TLS at speed): the report adds each server's wss:// cost over its
ws:// cost, paired within each round, when both cases ran.
Every server runs pinned to CPU 0 with one process, the load generator to
CPU 1; a fresh server per run, rounds interleaved in time. Reported: median
messages/s and server CPU microseconds per message over the measured
window (/proc/<pid>/stat of the server's process tree), with ratios, of the
medians and paired within each round, against uvicorn, granian and picows,
and the issue's targets with their paired ratios.

The servers: `uringserve-asgi` (bench/ws_echo_asgi.py, `uringserve run`),
`uringserve-native` (apps.http:app /ws, the native handler API), uvicorn
(uvloop, httptools, its default --ws auto: the websockets library), granian (ASGI), hypercorn (uvloop worker), all
on the same raw ASGI app; `websockets` (its own asyncio server on uvloop,
bench/ws_websockets_server.py) and `picows` (bench/ws_picows_server.py, on
uvloop; no permessage-deflate, so only in the deflate-off cases). A server
that declines the deflate offer is left out of the deflate cases (said in
the report).

The load generator: uringload's ws:// mode (`python -m loadtest`) or
bench/ws_picows_load.py (a picows client), whichever reached the higher
message rate against the picows server in a short check before the rounds
(per message size; --generator forces one). Deflate cases use uringload
(picows' client has no deflate). The report names the generator of every
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, interleave, loadtest, stop, summary, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
BIN = Path(PY).parent
APP = "ws_echo_asgi:app"
SERVERS = ["uringserve-asgi", "uringserve-native", "uvicorn", "granian", "hypercorn", "websockets", "picows"]
# case -> (message size, permessage-deflate, TLS)
CASES = {
    "64B": (64, False, False),
    "16KiB": (16384, False, False),
    "64B-deflate": (64, True, False),
    "16KiB-deflate": (16384, True, False),
    "64B-tls": (64, False, True),
    "16KiB-tls": (16384, False, True),
}
DEFAULT_CASES = ["64B", "16KiB", "64B-deflate", "16KiB-deflate"]
NO_DEFLATE = {"picows"}  # servers without permessage-deflate


@dataclass(frozen=True)
class Certs:
    """A throwaway CA (trustme) and a certificate for 127.0.0.1 signed by it."""

    ca: str
    cert: str
    key: str

    @classmethod
    def make(cls, folder: Path) -> Certs:
        import trustme

        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1")
        paths = cls(str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"))
        ca.cert_pem.write_to_path(paths.ca)
        issued.cert_chain_pems[0].write_to_path(paths.cert)
        issued.private_key_pem.write_to_path(paths.key)
        return paths


# (case kind, server, peer, at most): the issue's targets on server CPU per message
TARGETS = [
    ("plain", "uringserve-asgi", "uvicorn", 0.5),
    ("plain", "uringserve-asgi", "granian", 0.8),
    ("plain", "uringserve-native", "picows", 1.0),
    ("deflate", "uringserve-asgi", "uvicorn", 0.6),
]


def command(server: str, port: int, tls: tuple[str, str] | None = None) -> tuple[list[str], str]:
    """The server's command line and the WebSocket path it echoes on;
    `tls` = (certificate, key) files: the same server over TLS."""
    quiet = ["--log-level", "warning"]
    cert, key = tls or ("", "")
    if server in ("uringserve-asgi", "uringserve-native"):
        app, path = (APP, "/") if server == "uringserve-asgi" else ("apps.http:app", "/ws")
        opts = ["--tls-cert", cert, "--tls-key", key] if tls else []
        return [PY, "-m", "uringserve", "run", app, "--port", str(port), *quiet, *opts], path
    if server == "uvicorn":
        # its default --ws (auto: the websockets library's sans-I/O protocol in uvicorn 0.3x+)
        cmd = [PY, "-m", "uvicorn", APP, "--port", str(port), "--loop", "uvloop", "--http", "httptools"]
        opts = ["--ssl-certfile", cert, "--ssl-keyfile", key] if tls else []
        return [*cmd, "--no-access-log", *quiet, *opts], "/"
    if server == "granian":
        opts = ["--ssl-certificate", cert, "--ssl-keyfile", key] if tls else []
        cmd = [str(BIN / "granian"), "--interface", "asgi", "--workers", "1", "--port", str(port), *quiet, *opts]
        return [*cmd, APP], "/"
    if server == "hypercorn":
        cmd = [PY, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop"]
        opts = ["--certfile", cert, "--keyfile", key] if tls else []
        return [*cmd, "--workers", "1", "--log-level", "warning", *opts], "/"
    if server in ("websockets", "picows"):
        script = BENCH / f"ws_{server}_server.py"
        return [PY, str(script), str(port), *([cert, key] if tls else [])], "/"
    raise ValueError(server)


def picows_load(url: str, server_pid: int, conns: int, seconds: float, size: int, cafile: str = "") -> dict:
    """bench/ws_picows_load.py pinned to CPU 1: its JSON (uringload's keys)."""
    out = subprocess.run(
        ["taskset", "-c", "1", PY, str(BENCH / "ws_picows_load.py"), url, "-c", str(conns), "-d", str(seconds)]
        + ["--size", str(size), "--warmup", "0.5", "--server-pid", str(server_pid)]
        + (["--cafile", cafile] if cafile else []),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode:
        raise RuntimeError(f"ws_picows_load failed: {out.stdout} {out.stderr}")
    res = json.loads(out.stdout)
    if sum(res["errors"].values()):
        raise RuntimeError(f"ws_picows_load: errors {res['errors']} against {url}")
    return res


def run_one(
    server: str, case: str, conns: int, seconds: float, generator: str, certs: Certs | None = None
) -> tuple[float, float]:
    """A fresh server on CPU 0, loaded from CPU 1 after a 0.5 s warm-up: (messages/s, server CPU us/message)."""
    size, deflate, tls = CASES[case]
    if tls and certs is None:
        raise ValueError(f"case {case} needs certificates")
    port = free_port()
    cmd, path = command(server, port, (certs.cert, certs.key) if tls and certs else None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(BENCH)))}
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}{path}"
    try:
        wait_listening(port, proc)
        if tls and certs:
            res = picows_load(url, proc.pid, conns, seconds, size, certs.ca)
        elif generator == "picows":
            res = picows_load(url, proc.pid, conns, seconds, size)
        else:
            extra = ["--size", str(size), "--warmup", "0.5s"] + (["--deflate"] if deflate else [])
            res = loadtest(url, proc.pid, conns, seconds, *extra)
    finally:
        stop(proc)
    return res["rps"], res["server_cpu_us_per_request"]


def declines_deflate(server: str) -> bool:
    """True when the server answers a deflate offer without the extension (uringload says so: a handshake error)."""
    port = free_port()
    cmd, path = command(server, port)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(BENCH)))}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        out = subprocess.run(
            [PY, "-m", "loadtest", f"ws://127.0.0.1:{port}{path}", "-c", "1", "-d", "0.3", "--deflate", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        stop(proc)
    return not out.stdout or json.loads(out.stdout)["ws"]["invalid_101"] > 0


def pick_generators(
    sizes: list[int], conns: int, seconds: float, forced: str | None
) -> tuple[dict[int, str], list[str]]:
    """Per message size, the generator with the higher message rate against
    the picows server (one short run each), and the lines saying so."""
    if forced:
        return {s: forced for s in sizes}, [f"generator: {forced} for every deflate-off figure (--generator)"]
    chosen, lines = {}, []
    for size in sizes:
        rates = {}
        for gen in ("uringload", "picows"):
            port = free_port()
            cmd, path = command("picows", port)
            proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL)
            try:
                wait_listening(port, proc)
                url = f"ws://127.0.0.1:{port}{path}"
                if gen == "picows":
                    rates[gen] = picows_load(url, proc.pid, conns, seconds, size)["rps"]
                else:
                    rates[gen] = loadtest(url, proc.pid, conns, seconds, "--size", str(size), "--warmup", "0.5s")["rps"]
            finally:
                stop(proc)
        chosen[size] = max(rates, key=lambda g: rates[g])
        lines.append(
            f"generator check, {size} B against the picows server: uringload {rates['uringload']:.0f} msg/s, "
            f"picows client {rates['picows']:.0f} msg/s -> {chosen[size]} drives the {size} B deflate-off figures"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return chosen, lines


def targets(results: dict[str, dict[str, list]], cases: list[str]) -> list[str]:
    """Each target in each case it applies to: the paired ratio (median of within-round ratios) and the verdict."""
    out = []
    for kind, server, peer, limit in TARGETS:
        for case in cases:
            if ("deflate" in case) != (kind == "deflate") or CASES[case][2]:
                continue
            r = results.get(case, {})
            if server not in r or peer not in r:
                continue
            paired = statistics.median(a[1] / b[1] for a, b in zip(r[server], r[peer], strict=True))
            verdict = "met" if paired <= limit else "NOT met"
            out.append(f"{case:14} {server} <= {limit:.1f}x {peer}: {paired:.2f}x paired ({verdict})")
    return out


def tls_costs(results: dict[str, dict[str, list]], cases: list[str]) -> list[str]:
    """Each server's wss:// CPU per message over its ws:// one, paired within
    each round, for every size run both ways."""
    out = []
    for case in cases:
        size, deflate, tls = CASES[case]
        plain = next((c for c, (sz, d, t) in CASES.items() if sz == size and not d and not t), None)
        if not tls or plain not in results:
            continue
        for server, runs in results[case].items():
            base = results[plain].get(server)
            if not base:
                continue
            paired = statistics.median(a[1] / b[1] for a, b in zip(runs, base, strict=True))
            extra = statistics.median(a[1] - b[1] for a, b in zip(runs, base, strict=True))
            out.append(f"{case:10} {server:18} wss/ws {paired:.2f}x paired (+{extra:.2f} us per message)")
    return out


def report(
    rounds: int,
    seconds: float,
    conns: int,
    names: list[str],
    cases: list[str],
    generator: str | None = None,
    check_seconds: float | None = None,
    certs: Certs | None = None,
) -> str:
    sizes = sorted({CASES[c][0] for c in cases if not CASES[c][1] and not CASES[c][2]})
    gens, gen_lines = pick_generators(sizes, conns, check_seconds or seconds, generator) if sizes else ({}, [])
    declined = {n for n in names if n not in NO_DEFLATE and any(CASES[c][1] for c in cases) and declines_deflate(n)}
    plan = {c: [n for n in names if not CASES[c][1] or (n not in NO_DEFLATE and n not in declined)] for c in cases}

    def generator_of(case: str) -> str:
        size, deflate, tls = CASES[case]
        return "uringload" if deflate else "picows" if tls else gens[size]

    def one(server: str, case: str) -> tuple[float, float]:
        return run_one(server, case, conns, seconds, generator_of(case), certs)

    results = interleave(plan, rounds, one)
    host = f"{os.uname().release}, {os.cpu_count()} CPUs"
    out = [
        f"WebSocket echo: {conns} connections, closed loop, text messages, {seconds:g}s per run, "
        f"medians over {rounds} rounds; {host}",
        "server on CPU 0 (one process), load on CPU 1; 'paired' = median of within-round ratios",
        *gen_lines,
    ]
    if any(CASES[c][1] for c in cases):
        out.append("generator: uringload for every deflate-on figure (the picows client has no permessage-deflate)")
        left = sorted((NO_DEFLATE & set(names)) | declined)
        if left:
            out.append(f"not in the deflate cases (no permessage-deflate): {', '.join(left)}")
    if any(CASES[c][2] for c in cases):
        out.append("generator: the picows client for every wss:// figure (TLS 1.3, ECDSA P-256)")
    for case in cases:
        out += ["", f"{case} (generator: {generator_of(case)})"]
        peers = [p for p in ("uvicorn", "granian", "picows") if p in plan[case]]
        out.append(summary(results[case], plan[case], peers, "msg", "msg/s"))
    out += ["", "Targets (server CPU per message, paired):", *targets(results, cases)]
    costs = tls_costs(results, cases)
    if costs:
        out += ["", "TLS's cost: server CPU per message over wss:// / over ws://, same server, paired:", *costs]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=4)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--servers", default=",".join(SERVERS))
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"of {', '.join(CASES)}")
    p.add_argument("--generator", choices=["uringload", "picows"], default=None, help="skip the check, use this one")
    p.add_argument("--check-seconds", type=float, default=None, help="the generator check's run length (--seconds)")
    args = p.parse_args()
    names, cases = args.servers.split(","), args.cases.split(",")
    for c in cases:
        if c not in CASES:
            print(f"ws_bench: unknown case {c!r}: use {', '.join(CASES)}", file=sys.stderr)
            return 2
    for n in names:
        if n not in SERVERS:
            print(f"ws_bench: unknown server {n!r}: use {', '.join(SERVERS)}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        certs = Certs.make(Path(tmp)) if any(CASES[c][2] for c in cases) else None
        text = report(args.rounds, args.seconds, args.conns, names, cases, args.generator, args.check_seconds, certs)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
