"""Prometheus metrics and health endpoints (`--metrics HOST:PORT`), through
prometheus_client. With workers, every worker writes its metrics to
prometheus_client's multiprocess directory and the supervisor serves them
summed; the endpoint is the supervisor's, so it answers while workers come
and go.

    /metrics   Prometheus text format
    /ready     200 while serving; 503 before listening and from the moment a
               drain begins (an orchestrator stops sending traffic at once)
    /live      200 while the process runs

The endpoint is a small threaded HTTP server (the standard library's) in a
thread of its own: it stays up through a drain and never touches the loop.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# the core's cumulative counters (loop.ring_stats()) exported as *_total
RING_COUNTERS = (
    "sqes",
    "enters",
    "cqes",
    "stale_cqes",
    "enobufs",
    "zc_sends",
    "zc_copied",
    "accepts",
    "accept_errors",
    "send_bytes",
    "recv_bytes",
    # which receive path the bytes took: the provided-buffer ring, or bulk (the protocol's memory)
    "pbuf_recvs",
    "pbuf_recv_bytes",
    "bulk_recvs",
    "bulk_recv_bytes",
    "bulk_idle_cancels",
    "ktls_tx",  # TLS connections whose sending the kernel took (--tls-ktls)
    "ktls_fallback",  # and those that asked and stayed on OpenSSL's path
)
# and its levels
RING_GAUGES = ("slots_used", "slots_total", "arena_in_use", "arena_chunks", "bufs_out", "inflight", "bulk_parked")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One process's metrics (a worker's, or a single-process server's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {}
        self.requests = Counter("uringserve_http_requests_total", "HTTP responses by status class", ["code"], **kw)
        self.latency = Histogram(
            "uringserve_http_request_duration_seconds",
            "From a request's head complete to its response's end",
            buckets=LATENCY_BUCKETS,
            **kw,
        )
        self.open = Gauge("uringserve_connections_open", "Connections open", multiprocess_mode="livesum", **kw)
        self.accepted = Counter("uringserve_connections_accepted_total", "Connections accepted", **kw)
        self.refused = Counter(
            "uringserve_connections_refused_total", "Accepts that failed (the kernel's accept errors)", **kw
        )
        self.limited = Counter(
            "uringserve_http_limited_total", "Requests answered 503 beyond --limit-concurrency", **kw
        )
        self.proxy_rejected = Counter(
            "uringserve_proxy_protocol_rejected_total",
            "Connections closed for their PROXY protocol header, by reason (--proxy-protocol)",
            ["reason"],
            **kw,
        )
        # WebSockets (an HTTPServer's ws_stats: ws/protocol.py's WSStats)
        self.ws_open = Gauge(
            "uringserve_ws_connections_open", "WebSocket connections open", multiprocess_mode="livesum", **kw
        )
        self.ws_messages = Counter(
            "uringserve_ws_messages_total", "WebSocket messages, by direction (in|out)", ["direction"], **kw
        )
        self.ws_bytes = Counter(
            "uringserve_ws_bytes_total", "WebSocket frame bytes on the wire, by direction (in|out)", ["direction"], **kw
        )
        self.ws_close = Counter(
            "uringserve_ws_close_total", "WebSocket connections closed, by close code (1006: none)", ["code"], **kw
        )
        self.ring = {
            name: Counter(f"uringserve_ring_{name}_total", f"io_uring core: {name}", **kw) for name in RING_COUNTERS
        }
        self.ring_levels = {
            name: Gauge(f"uringserve_ring_{name}", f"io_uring core: {name}", multiprocess_mode="livesum", **kw)
            for name in RING_GAUGES
        }
        self._last: dict[str, int] = {}
        self._codes = {c: self.requests.labels(code=f"{c}xx") for c in range(1, 6)}

    def observe(self, conn: Any, method: str, target: bytes, version: str, status: int, size: int, took: float) -> None:
        """An HTTP response (the protocol's observer signature)."""
        self._codes.get(status // 100, self._codes[5]).inc()
        self.latency.observe(took)

    def sample(self, server: Any, loop: Any) -> None:
        """Connections and the ring's counters, as of now."""
        counts = server.connections.counts()
        self.open.set(counts["open"])
        self._add("accepted", counts["accepted"], self.accepted)
        limit = getattr(server, "concurrency", None)  # an HTTPServer's, with --limit-concurrency
        if limit is not None:
            self._add("limited", limit.refused, self.limited)
        proxy = getattr(server, "proxy_protocol", None)
        if proxy is not None:
            for reason, n in proxy.rejected.items():
                self._add("proxy:" + reason, n, self.proxy_rejected.labels(reason=reason))
        ws = getattr(server, "ws_stats", None)
        if ws is not None:
            self.ws_open.set(ws.open)
            totals = ws.totals(server.connections)
            for direction in ("in", "out"):
                self._add("ws_msg_" + direction, totals["messages_" + direction], self.ws_messages.labels(direction))
                self._add("ws_bytes_" + direction, totals["bytes_" + direction], self.ws_bytes.labels(direction))
            for code, n in list(ws.close_codes.items()):
                self._add(f"ws_close:{code}", n, self.ws_close.labels(code=str(code)))
        stats = loop.ring_stats() if hasattr(loop, "ring_stats") else {}
        for name, counter in self.ring.items():
            if name in stats:
                self._add(name, stats[name], counter)
        if "accept_errors" in stats:
            self._add("refused", stats["accept_errors"], self.refused)
        for name, gauge in self.ring_levels.items():
            if name in stats:
                gauge.set(stats[name])

    def _add(self, key: str, total: int, counter: Counter) -> None:
        delta = total - self._last.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        self._last[key] = total

    def start_sampling(self, server: Any, interval: float = 1.0) -> None:
        """sample() now and every `interval` seconds on the running loop while the server serves."""
        import asyncio

        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.sample(server, loop)
            if server.serving:
                loop.call_later(interval, tick)

        tick()


def worker_restarts() -> Counter:
    """The supervisor's own counter: written to the multiprocess directory
    and summed with the workers' by multiprocess_registry() (so not
    registered). prometheus_client chooses multiprocess values once, as it
    is imported: the supervisor imports this module only after it has set
    PROMETHEUS_MULTIPROC_DIR (the CLI's check only looks the package up)."""
    return Counter("uringserve_worker_restarts_total", "Workers replaced after they died", registry=None)


def reloads() -> Counter:
    """The supervisor's reloads (SIGHUP) by result: "ok", or "failed" (the new
    generation could not start; the old one kept serving). As worker_restarts()."""
    return Counter(
        "uringserve_reloads_total",
        "Reloads by result (failed: the old generation kept serving)",
        ["result"],
        registry=None,
    )


class Endpoint:
    """/metrics, /ready, /live on HOST:PORT, served from a thread."""

    def __init__(self, host: str, port: int, collect: Callable[[], bytes], ready: Callable[[], bool]) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, endpoint.collect(), CONTENT_TYPE_LATEST)
                elif path == "/ready":
                    ok = endpoint.ready()
                    self._answer(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                elif path == "/live":
                    self._answer(200, b"live\n", "text/plain")
                else:
                    self._answer(404, b"/metrics, /ready or /live\n", "text/plain")

            def _answer(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not access-logged
                pass

        self.collect = collect
        self.ready = ready
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen for --metrics on {host}:{port}: {exc.strerror}") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="uringserve-metrics", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Where /metrics answers (the port the kernel picked for port 0)."""
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str)  # an IP address: AF_INET or AF_INET6
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def default_registry() -> CollectorRegistry:
    from prometheus_client import REGISTRY

    return REGISTRY


def multiprocess_registry() -> CollectorRegistry:
    """The registry that sums what every worker wrote to PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def collect(registry: Any) -> Callable[[], bytes]:
    return lambda: generate_latest(registry)


__all__ = ["Metrics", "Endpoint", "multiprocess_registry", "worker_exited", "worker_restarts"]
