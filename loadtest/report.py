"""How a Result is shown: wrk's text, JSON for scripts, .hgrm, a plot, a comparison."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import statistics
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .engine import WS_CLOSE_KEYS
from .run import Result, need_hdrh

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

PERCENTILES = (50, 75, 90, 99, 99.9, 99.99)
CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")


# ---- numbers as wrk prints them ---------------------------------------------


def fmt_time(ns: float) -> str:
    us = ns / 1e3
    if us < 1000:
        return f"{us:.2f}us"
    if us < 1e6:
        return f"{us / 1e3:.2f}ms"
    return f"{us / 1e6:.2f}s"


def fmt_metric(n: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.2f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.2f}B"


# ---- statistics ---------------------------------------------------------------


def hist_summary(h: HdrHistogram) -> dict[str, Any]:
    """min/mean/stdev/max, the share within mean +- stdev, and the percentiles, in ns."""
    n = h.get_total_count()
    if not n:
        return {"count": 0}
    mean, stdev = h.get_mean_value(), h.get_stddev()
    inside = 0
    for item in h.get_recorded_iterator():
        v = h.get_highest_equivalent_value(item.value_iterated_to)
        if mean - stdev <= v <= mean + stdev:
            inside += item.count_added_in_this_iter_step
    return {
        "count": n,
        "min": h.get_min_value(),
        "mean": mean,
        "stdev": stdev,
        "max": h.get_max_value(),
        "within_stdev": 100.0 * inside / n,
        "percentiles": {str(p): h.get_value_at_percentile(p) for p in PERCENTILES},
    }


def sample_summary(samples: list[list[float]]) -> dict[str, float]:
    flat = [x for s in samples for x in s]
    if not flat:
        return {}
    mean = statistics.fmean(flat)
    stdev = statistics.pstdev(flat)
    inside = sum(1 for x in flat if mean - stdev <= x <= mean + stdev)
    return {"mean": mean, "stdev": stdev, "max": max(flat), "within_stdev": 100.0 * inside / len(flat)}


# ---- JSON ------------------------------------------------------------------------


def to_json(res: Result) -> dict[str, Any]:
    p = res.plan
    st = res.stats
    by_class = st.get("by_class", [0] * 6)
    out: dict[str, Any] = {
        "url": p.target.url(),
        "mode": p.target.mode,
        "connections": p.conns,
        "threads": p.threads,
        "duration_s": res.elapsed,
        "pipeline": p.depth,
        "keepalive": p.keepalive,
        "rate": p.rate or None,
        "requests": res.requests,
        "sent": st.get("sent", 0),
        "rps": res.rps,
        "bytes_read": st.get("bytes_in", 0),
        "connects": st.get("connects", 0),
        "errors": st.get("errors", {}),
        "status": dict(zip(CLASSES, by_class, strict=True)),
        "non_2xx_3xx": _non_2xx_3xx(p.target.mode, by_class),
        "latency_ns": hist_summary(res.latency),
        "latency_corrected_ns": hist_summary(res.corrected) if p.rate else None,
        "req_per_sec": sample_summary(res.samples),
        "client_cpu_us_per_request": res.per_request_us(res.client_cpu_ns),
        "server_cpu_us_per_request": res.per_request_us(res.server_cpu_ns),
        "server_pids": res.server_pids,
        "ring": res.ring,
        "ws": _ws_json(st) if p.target.mode == "ws" else None,
        "histogram": {
            "uncorrected": res.latency.encode().decode(),
            "corrected": res.corrected.encode().decode() if p.rate else None,
        },
    }
    return out


def _non_2xx_3xx(mode: str, by_class: list[int]) -> int:
    """HTTP: responses not 2xx/3xx; RESP: error replies; ws: upgrades answered other than 101."""
    if mode == "http":
        return sum(by_class) - by_class[2] - by_class[3]
    if mode == "ws":
        return sum(by_class) - by_class[1]
    return by_class[5]


def _ws_json(st: dict[str, Any]) -> dict[str, Any]:
    """The handshakes' answers by class, the last refusal's status, close frames received by code."""
    by_class = st.get("by_class", [0] * 6)
    closes = st.get("ws_closes", [])
    return {
        "handshakes": dict(zip(CLASSES, by_class, strict=True)),
        "refused_status": st.get("last_hs_status") or None,
        "invalid_101": st.get("hs_invalid", 0),
        "close_codes": {k: n for k, n in zip(WS_CLOSE_KEYS, closes, strict=False) if n},
        "last_close_code": st.get("last_close_code") or None,
    }


def succeeded(res: Result) -> int:
    """Requests that succeeded: HTTP 2xx/3xx responses, RESP replies that
    are not errors, echoes that came back as sent."""
    by_class = res.stats.get("by_class", [0] * 6)
    mode = res.plan.target.mode
    if mode == "http":
        return int(by_class[2] + by_class[3])
    if mode == "resp":
        return res.requests - int(by_class[5])
    return res.requests


def failure(res: Result) -> str | None:
    """Why the run is a failure (the exit status is then 1), or None: a run
    fails when not one request succeeded. Errors beside successes are
    reported, not failed on, as wrk and hey do; a run where nothing got
    through is no measurement (a closed port, an untrusted certificate, a
    wrong path answered 404)."""
    if succeeded(res):
        return None
    st = res.stats
    errors = st.get("errors", {})
    what = [f"{n} {name} error{'s' if n != 1 else ''}" for name, n in errors.items() if n]
    by_class = st.get("by_class", [0] * 6)
    if res.requests:
        kind = "responses were 4xx or 5xx" if res.plan.target.mode == "http" else "replies were errors"
        what.insert(0, f"all {res.requests} {kind}")
    if not what:
        what.append(f"no response within the {res.elapsed:.1f}s run")
    reason = f"no request succeeded: {', '.join(what)}"
    ws = _ws_json(st) if res.plan.target.mode == "ws" else None
    if ws and ws["refused_status"]:
        reason += f" (the upgrade was answered {ws['refused_status']}: is {res.plan.target.path!r} a WebSocket path?)"
    if res.plan.target.mode == "http" and res.requests and by_class[4]:
        reason += f" (is {res.plan.target.path!r} a path the server has?)"
    cert = st.get("cert_error")
    if st.get("cert_errors") and cert:
        return (
            f"{reason}; the server's certificate was refused ({cert}): trust its CA with --cacert FILE, "
            "or skip verification with -k/--insecure"
        )
    errno_ = st.get("last_errno") or 0
    if errno_:
        reason += f" (last: {os.strerror(errno_)})"
    if errno_ == errno.ECONNREFUSED:
        reason += f": is a server listening on {res.plan.target.host_header}?"
    return reason


# ---- text ------------------------------------------------------------------------


def _stat_line(name: str, s: dict[str, Any], fmt: Any) -> str:
    if not s or not s.get("mean") and not s.get("max"):
        return f"    {name:9} {'-':>9} {'-':>9} {'-':>9} {'-':>9}"
    return f"    {name:9} {fmt(s['mean']):>9} {fmt(s['stdev']):>9} {fmt(s['max']):>9} {s['within_stdev']:8.2f}%"


def _ws_lines(ws: dict[str, Any], e: dict[str, int]) -> list[str]:
    lines = []
    if e.get("handshake"):
        refused = sum(n for k, n in ws["handshakes"].items() if k != "1xx")
        lines.append(
            f"  Handshakes failed: {e['handshake']} (refused {refused}, last status {ws['refused_status'] or '-'}; "
            f"101 without the accept value or the offered deflate {ws['invalid_101']})"
        )
    if e.get("closed"):
        codes = ", ".join(f"{k}: {n}" for k, n in ws["close_codes"].items())
        lines.append(f"  Closed by the server: {e['closed']} ({codes})")
    if e.get("mismatch"):
        lines.append(f"  Echoes not the message sent: {e['mismatch']}")
    return lines


def text(res: Result, latency_table: bool = False) -> str:
    j = to_json(res)
    p = res.plan
    lines = [f"Running {p.duration:g}s test @ {j['url']}"]
    how = f"constant rate {p.rate:g} requests/s" if p.rate else "closed loop"
    if p.depth > 1:
        how += f", pipeline {p.depth}" if not p.rate else f", up to {p.depth} in flight per connection"
    if not p.keepalive:
        how += ", a new connection per request"
    lines.append(f"  {p.threads} threads and {p.conns} connections ({how})")
    lines.append("  Thread Stats   Avg      Stdev     Max   +/- Stdev")
    main = j["latency_corrected_ns"] if p.rate else j["latency_ns"]
    lines.append(_stat_line("Latency", main, fmt_time))
    if p.rate:
        lines.append(_stat_line("(uncorr.)", j["latency_ns"], fmt_time))
    lines.append(_stat_line("Req/Sec", j["req_per_sec"], fmt_metric))
    if latency_table and main.get("count"):
        if p.rate:
            lines.append("  Latency Distribution (corrected: from each request's intended send; uncorrected)")
            for q in PERCENTILES:
                c = main["percentiles"][str(q)]
                u = j["latency_ns"]["percentiles"][str(q)]
                lines.append(f"  {q:>6g}% {fmt_time(c):>10} {fmt_time(u):>10}")
        else:
            lines.append("  Latency Distribution")
            for q in PERCENTILES:
                lines.append(f"  {q:>6g}% {fmt_time(main['percentiles'][str(q)]):>10}")
    what = "messages" if p.target.mode == "ws" else "requests"
    lines.append(f"  {res.requests} {what} in {res.elapsed:.2f}s, {fmt_bytes(j['bytes_read'])} read")
    e = j["errors"]
    if any(e[k] for k in ("connect", "read", "write", "timeout")):
        lines.append(
            f"  Socket errors: connect {e['connect']}, read {e['read']}, write {e['write']}, timeout {e['timeout']}"
        )
    if e.get("protocol") or e.get("short"):
        what = "not the bytes sent" if p.target.mode == "echo" else "malformed"
        what = "frames breaking RFC 6455" if p.target.mode == "ws" else what
        lines.append(f"  Protocol errors: {what} {e['protocol']}, cut short {e['short']}")
    if j["ws"]:
        lines.extend(_ws_lines(j["ws"], e))
    elif j["non_2xx_3xx"]:
        label = "Non-2xx or 3xx responses" if p.target.mode == "http" else "Error replies"
        lines.append(f"  {label}: {j['non_2xx_3xx']}")
    lines.append(f"Requests/sec: {res.rps:>10.2f}")
    lines.append(f"Transfer/sec: {fmt_bytes(j['bytes_read'] / res.elapsed if res.elapsed else 0):>10}")
    if j["client_cpu_us_per_request"] is not None:
        lines.append(f"Client CPU:   {j['client_cpu_us_per_request']:>8.2f}us/request")
    if j["server_cpu_us_per_request"] is not None:
        pids = ",".join(map(str, res.server_pids))
        busy = res.server_cpu_ns / 1e9 / res.elapsed * 100 if res.server_cpu_ns is not None and res.elapsed else 0
        lines.append(
            f"Server CPU:   {j['server_cpu_us_per_request']:>8.2f}us/request (pid {pids}: {busy:.0f}% of one core)"
        )
    return "\n".join(lines)


# ---- files -----------------------------------------------------------------------


def write_hgrm(res: Result, path: str) -> None:
    """The percentile distribution in HdrHistogram's text format, values in
    milliseconds (what HdrHistogram's plotter expects); corrected with a rate."""
    h = res.corrected if res.plan.rate else res.latency
    buf = io.BytesIO()
    h.output_percentile_distribution(buf, 1e6)
    # hdrh 0.10 scales every figure but the footer's standard deviation
    text = re.sub(
        rb"StdDeviation   = +[0-9.]+",
        b"StdDeviation   = %12.3f" % (h.get_stddev() / 1e6),
        buf.getvalue(),
    )
    Path(path).write_bytes(text)


def load_saved(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a saved --json result ({exc})") from None
    if not isinstance(data, dict) or "histogram" not in data or "rps" not in data:
        raise ValueError(f"{path}: not a saved --json result (no rps/histogram)")
    return data


def compare(paths: list[str], out: IO[str]) -> None:
    """Saved runs side by side: throughput, percentiles (from their histograms), errors, CPU."""
    need_hdrh()
    from hdrh.histogram import HdrHistogram

    runs = [load_saved(p) for p in paths]
    hists = []
    for r in runs:
        enc = r["histogram"]["corrected"] or r["histogram"]["uncorrected"]
        hists.append(HdrHistogram.decode(enc.encode()))
    rows: list[tuple[str, list[str]]] = [("", [Path(p).name for p in paths]), ("url", [r["url"] for r in runs])]
    rows.append(("requests/s", [f"{r['rps']:.0f}" for r in runs]))
    if len(runs) == 2 and runs[0]["rps"]:
        rows.append(("  ratio", ["1.00", f"{runs[1]['rps'] / runs[0]['rps']:.2f}"]))
    for q in PERCENTILES:
        rows.append((f"p{q:g}", [fmt_time(h.get_value_at_percentile(q)) for h in hists]))
    rows.append(("errors", [str(sum(r["errors"].values())) for r in runs]))
    rows.append(("non-2xx/3xx", [str(r["non_2xx_3xx"]) for r in runs]))
    for key, name in (("client_cpu_us_per_request", "client us/req"), ("server_cpu_us_per_request", "server us/req")):
        rows.append((name, [f"{r[key]:.2f}" if r.get(key) is not None else "-" for r in runs]))
    # each column as wide as its widest cell, two spaces apart: long URLs and
    # file names stay apart (a fixed width once ran two URLs together)
    widths = [max(len(values[i]) for _, values in rows) for i in range(len(runs))]
    for name, values in rows:
        out.write(f"{name:14}" + "".join(f"  {v:>{w}}" for v, w in zip(values, widths, strict=True)) + "\n")


PLOT_MISSING = "--plot needs matplotlib: pip install 'uringserve[plot]'"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; RuntimeError saying
    what to install when matplotlib (the plot extra) is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(PLOT_MISSING) from None
    return plt


def plot(res: Result, path: str) -> None:
    """The percentile curve (log scale of 1/(1-p), as HdrHistogram's plotter draws it)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    curves = [("uncorrected", res.latency)]
    if res.plan.rate:
        curves.insert(0, ("corrected", res.corrected))
    for label, h in curves:
        xs, ys = [], []
        for item in h.get_percentile_iterator(5):
            pct = item.percentile_level_iterated_to
            if pct >= 100:
                break
            xs.append(1 / (1 - pct / 100))
            ys.append(item.value_iterated_to / 1e6)
        ax.plot(xs, ys, label=label)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks, [f"{100 - 100 / t:g}%" for t in ticks])
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("percentile")
    ax.set_title(f"{res.plan.target.url()}  {res.rps:.0f} req/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
