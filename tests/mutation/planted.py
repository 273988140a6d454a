"""The bugs issues 15, 22, 24 and 25 planted by hand, planted again: each must fail
at least one of the tests named for it. Run by `make mutate` (and alone:
`python tests/mutation/planted.py`); the source is restored after each.

A bug is (name, file, the exact text it replaces, the replacement, the
pytest selection that must fail). Issue 15's are the HTTP protocol's and
the transport's; issue 22's are the layers built since: static files'
validators and ranges, the RESP commands and keyspace, the CLI, the
workers, metrics and the load generator, one line each of the kind a
real change makes (a boundary, a flag kept or dropped, a default, a
comparison, a branch). Each selection is one test file and a -k, so the
whole list runs in minutes."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

PLANTED = [
    (
        "keepalive_requests: one request too many (respond_whole)",
        "uringserve/http/protocol.py",
        "if ex.keep_alive and ex.body_in.done and self._served < self._last_keepalive",
        "if ex.keep_alive and ex.body_in.done and self._served <= self._last_keepalive",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "keepalive_requests: one request too many (the one-frame path)",
        "uringserve/http/protocol.py",
        "result._close or self._served >= self._last_keepalive",
        "result._close or self._served > self._last_keepalive",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "keepalive_requests: one request too many (the rule, keeps_alive(): start() and 500s)",
        "uringserve/http/protocol.py",
        "and not self._draining and self._served < self._last_keepalive\n",
        "and not self._draining and self._served <= self._last_keepalive\n",
        ["tests/test_http_server.py", "-k", "keepalive_requests"],
    ),
    (
        "max_pipelined: the pause never taken",
        "uringserve/http/protocol.py",
        "        elif len(queue) > self._max_pipelined:\n            self._pause()",
        "        elif len(queue) > self._max_pipelined:\n            pass",
        ["tests/test_http_server.py", "-k", "pipelin"],
    ),
    (
        "abort() flushes queued data instead of discarding it",
        "uringserve/transport.py",
        "    def abort(self) -> None:\n        self._force_close(None)",
        "    def abort(self) -> None:\n        self.close()",
        ["tests/test_transport.py", "-k", "abort"],
    ),
    (
        "keep-alive kept after a response with its request body unread (the rule, keeps_alive())",
        "uringserve/http/protocol.py",
        "        return ex.keep_alive and ex.body_in.done and not self._draining",
        "        return ex.keep_alive and not self._draining",
        ["tests/test_http_server.py", "tests/test_http_asgi.py", "-k", "unread or before_the_body"],
    ),
    (
        "body_buffer_bytes: the pause never taken",
        "uringserve/http/protocol.py",
        "if body.buffered > self._cfg.body_buffer_bytes and not body.hold_all:\n                self._pause()",
        "if body.buffered > self._cfg.body_buffer_bytes and not body.hold_all:\n                pass",
        ["tests/test_http_server.py", "-k", "body_buffer or body_nobody"],
    ),
    (
        "a response a byte short of its Content-Length",
        "uringserve/http/protocol.py",
        '        self._transport.write(b"".join((head, _DATE[1], tail, b"" if ex.method == "HEAD" else body)))',
        '        self._transport.write(b"".join((head, _DATE[1], tail, b"" if ex.method == "HEAD" else body[:-1])))',
        ["tests/test_http_server.py", "-k", "garbage"],
    ),
    # -- issue 22: the layers built since (static files, RESP, CLI, workers, metrics, loadtest) --
    (
        "static If-Range: a later date taken as a match (If-Modified-Since's rule), not the exact Last-Modified",
        "uringserve/http/static.py",
        "    return ir == f.last_modified.decode()",
        "    return (d := http_date(ir)) is not None and f.mtime_ns // 1_000_000_000 <= d",
        ["tests/test_http_static.py", "-k", "if_range"],
    ),
    (
        "static If-None-Match: a weak W/ tag no longer matches (compared strongly)",
        "uringserve/http/static.py",
        'return "*" in tags or etag in tags or f"W/{etag}" in tags',
        'return "*" in tags or etag in tags',
        ["tests/test_http_static.py", "-k", "if_none_match_forms"],
    ),
    (
        "static Range: bytes=-0 (a zero suffix) served instead of 416",
        "uringserve/http/static.py",
        "            if n == 0 or size == 0:",
        "            if size == 0:",
        ["tests/test_http_static.py", "-k", "unsatisfiable"],
    ),
    (
        "static Range: an empty file's bytes=0- is a 200, not 416 (start > size)",
        "uringserve/http/static.py",
        "    if start >= size:",
        "    if start > size:",
        ["tests/test_http_static.py", "-k", "unsatisfiable"],
    ),
    (
        "RESP arity: a fixed arity read as a minimum (GET k extra runs)",
        "uringserve/resp/commands.py",
        "if (arity > 0 and n != arity) or n < -arity:",
        "if (arity > 0 and n < arity) or n < -arity:",
        ["tests/test_resp_server.py", "-k", "byte_for_byte"],
    ),
    (
        "RESP COMMAND INFO: the first name asked for is skipped",
        "uringserve/resp/commands.py",
        "names = [a.upper() for a in argv[2:]] or list(COMMANDS)",
        "names = [a.upper() for a in argv[3:]] or list(COMMANDS)",
        ["tests/test_resp_server.py", "-k", "command_table"],
    ),
    (
        "RESP INFO: the ring section in the default set",
        "uringserve/resp/commands.py",
        '("default" in wanted and name != "ring")',
        '("default" in wanted)',
        ["tests/test_resp_server.py", "-k", "info_sections"],
    ),
    (
        "RESP keyspace sweep: removes the live keys (comparison reversed)",
        "uringserve/resp/keyspace.py",
        "                if self.expires[key] <= now:",
        "                if self.expires[key] >= now:",
        ["tests/test_resp_keyspace.py", "-k", "sweep_removes"],
    ),
    (
        "RESP keyspace sweep: its time budget ignored",
        "uringserve/resp/keyspace.py",
        "if hits * 4 <= n or self._clock() - start >= budget_s:",
        "if hits * 4 <= n:",
        ["tests/test_resp_keyspace.py", "-k", "time_budget"],
    ),
    (
        "RESP keyspace: SET keeps the deadline unless KEEPTTL (flag reversed)",
        "uringserve/resp/keyspace.py",
        "        elif not keep_ttl and self.expires:",
        "        elif keep_ttl and self.expires:",
        ["tests/test_resp_keyspace.py", "-k", "deadline_unless_kept"],
    ),
    (
        "cli: --uds with --port drops the TCP listener",
        "uringserve/cli.py",
        "    if out and not args.host and args.port is None:",
        "    if out and not args.host:",
        ["tests/test_cli.py", "-k", "listeners_together"],
    ),
    (
        "cli: --max-requests with one worker silently ignored (no supervisor)",
        "uringserve/cli.py",
        '    if worker_count(args) > 1 or args.max_requests or getattr(args, "reload", False):',
        '    if worker_count(args) > 1 or getattr(args, "reload", False):',
        ["tests/test_workers.py", "-k", "max_requests_with_one_worker"],
    ),
    (
        "cli: a one-line refusal exits 0",
        "uringserve/cli.py",
        "            logs.error(exc.code)\n            return 1",
        "            logs.error(exc.code)\n            return 0",
        ["tests/test_cli.py", "-k", "settings_that_cannot_work"],
    ),
    (
        "workers: a failed reload stops the generation serving instead of the failed one",
        "uringserve/workers.py",
        "            if w.generation == failed and not w.retiring:",
        "            if w.generation != failed and not w.retiring:",
        ["tests/test_workers.py", "-k", "reload_that_cannot_start"],
    ),
    (
        "workers: a worker that does not stop is killed at the graceful timeout, not 5 s after",
        "uringserve/workers.py",
        'self.graceful_timeout + KILL_AFTER if how == "graceful" else KILL_AFTER',
        'self.graceful_timeout if how == "graceful" else KILL_AFTER',
        ["tests/test_workers_lifecycle.py", "-k", "killed_after_the_graceful_timeout"],
    ),
    (
        "workers: a fourth start tried before giving up (START_FAILURES off by one)",
        "uringserve/workers.py",
        "            if n >= self.start_failures:",
        "            if n > self.start_failures:",
        ["tests/test_workers.py", "-k", "cannot_start_stops_the_supervisor"],
    ),
    (
        "metrics: connections_open summed over dead workers too (multiprocess mode sum, not livesum)",
        "uringserve/metrics.py",
        'Gauge("uringserve_connections_open", "Connections open", multiprocess_mode="livesum", **kw)',
        'Gauge("uringserve_connections_open", "Connections open", multiprocess_mode="sum", **kw)',
        ["tests/test_metrics.py", "-k", "dead_workers_gauges"],
    ),
    (
        "metrics: the latency histogram on prometheus_client's default buckets",
        "uringserve/metrics.py",
        "            buckets=LATENCY_BUCKETS,\n",
        "",
        ["tests/test_metrics.py", "-k", "every_kind_is_counted"],
    ),
    (
        "metrics: no 5xx class (range off by one)",
        "uringserve/metrics.py",
        'self._codes = {c: self.requests.labels(code=f"{c}xx") for c in range(1, 6)}',
        'self._codes = {c: self.requests.labels(code=f"{c}xx") for c in range(1, 5)}',
        ["tests/test_metrics.py", "-k", "every_kind_is_counted"],
    ),
    (
        "metrics: latency observed in milliseconds",
        "uringserve/metrics.py",
        "        self.latency.observe(took)",
        "        self.latency.observe(took * 1000)",
        ["tests/test_metrics.py", "-k", "every_kind_is_counted"],
    ),
    (
        "loadtest plan: --pipeline groups requests only with a rate (branches swapped)",
        "loadtest/plan.py",
        "    per = 1 if rate else pipeline",
        "    per = pipeline if rate else 1",
        ["tests/test_loadtest.py", "-k", "http_pipelining_sends"],
    ),
    (
        "loadtest report: every HTTP response counts as a success (4xx/5xx too)",
        "loadtest/report.py",
        "        return int(by_class[2] + by_class[3])",
        "        return res.requests",
        ["tests/test_loadtest.py", "-k", "exit_status_1"],
    ),
    (
        "loadtest run: -t N reports one worker's counts, not their sum",
        "loadtest/run.py",
        "                out[k] = out.get(k, 0) + v",
        "                out[k] = v",
        ["tests/test_loadtest.py", "-k", "threads_merge"],
    ),
    (
        "loadtest cli: nothing succeeded, the reason printed, exit status 0",
        "loadtest/cli.py",
        '        print(f"uringload: {reason}", file=sys.stderr)\n        return 1',
        '        print(f"uringload: {reason}", file=sys.stderr)\n        return 0',
        ["tests/test_loadtest.py", "-k", "exit_status_1"],
    ),
    (
        "loadtest cli: --warmup does not reach the plan",
        "loadtest/cli.py",
        "            warmup=args.warmup,\n",
        "",
        ["tests/test_loadtest.py", "-k", "through_the_command"],
    ),
    (
        "loadtest cli: --pipeline does not reach the plan",
        "loadtest/cli.py",
        "            pipeline=args.pipeline,\n",
        "",
        ["tests/test_loadtest.py", "-k", "through_the_command"],
    ),
    (
        "loadtest cli: a missing package exits 1 (as a failed run), not 2 (could not start)",
        "loadtest/cli.py",
        '        print(f"uringload: {exc}", file=sys.stderr)\n        return 2\n    if args.compare:',
        '        print(f"uringload: {exc}", file=sys.stderr)\n        return 1\n    if args.compare:',
        ["tests/test_loadtest.py", "-k", "without_hdrhistogram"],
    ),
    # issue 24: --reload
    (
        "reload: a change during a reload is dropped instead of reloading after it",
        "uringserve/workers.py",
        "        self.changed |= paths\n",
        "        if self.previous is None:\n            self.changed |= paths\n",
        ["tests/test_reload.py", "-k", "change_during_a_reload"],
    ),
    (
        "reload: a hidden directory's files reload",
        "uringserve/reload.py",
        'if part in IGNORED_DIRS or part.startswith("."):',
        "if part in IGNORED_DIRS:",
        ["tests/test_reload.py", "-k", "ignored_and_excluded"],
    ),
    (
        "reload: a stale .pyc is imported after a same-second, same-size edit",
        "uringserve/reload.py",
        'os.environ["PYTHONDONTWRITEBYTECODE"] = "1"',
        "pass",
        ["tests/test_reload.py", "-k", "edit_changes_the_answer"],
    ),
    # issue 24: behind a proxy (--proxy-headers, --proxy-protocol)
    (
        "proxy headers: an IPv4 client on a dual-stack listener is not trusted",
        "uringserve/server/trust.py",
        "candidates.append(ip.ipv4_mapped)",
        "pass",
        ["tests/test_forwarded.py", "-k", "trusted_peers"],
    ),
    (
        "proxy headers: X-Forwarded-For's left-most untrusted hop (the client's own claim) wins",
        "uringserve/http/forwarded.py",
        "for i in range(len(nodes) - 1, -1, -1):",
        "for i in range(len(nodes)):",
        ["tests/test_forwarded.py", "-k", "right_most"],
    ),
    (
        "proxy headers: read from an untrusted peer",
        "uringserve/http/forwarded.py",
        "if not self._forwarding.trusted.trusts_peer(sender, self.server_addr):",
        "if False:",
        ["tests/test_forwarded.py", "-k", "spoofed"],
    ),
    (
        "proxy headers: a client's own Forwarded read through an X-Forwarded proxy",
        "uringserve/http/forwarded.py",
        "        if self.rfc7239:  # the X-Forwarded-* headers",
        "        if self.rfc7239 or values[4] is not None:  # the X-Forwarded-* headers",
        ["tests/test_forwarded.py", "-k", "style or trusted_proxy"],
    ),
    (
        "proxy headers: a client's own X-Forwarded-* read through an RFC 7239 proxy",
        "uringserve/http/forwarded.py",
        "        if self.rfc7239:  # the X-Forwarded-* headers",
        "        if self.rfc7239 and values[4] is not None:  # the X-Forwarded-* headers",
        ["tests/test_forwarded.py", "-k", "style"],
    ),
    (
        "proxy headers: a Forwarded element without an address gives nothing",
        "uringserve/http/forwarded.py",
        "        element = elements[index]\n",
        "        element = elements[index]\n        if nodes[index] is None:\n            return NOTHING\n",
        ["tests/test_forwarded.py", "-k", "without_an_address"],
    ),
    (
        "proxy headers under PROXY: trusted by the client the PROXY header names",
        "uringserve/http/forwarded.py",
        'transport.transport.get_extra_info("peername") if isinstance(transport, PeerTransport) else self.client',
        "self.client",
        ["tests/test_proxy_protocol.py", "-k", "socket_peer"],
    ),
    (
        "proxy headers: a connection keeps the views of keys a client padded",
        "uringserve/http/forwarded.py",
        "if len(key) <= _KEY_MAX:  # a longer one",
        "if True:  # a longer one",
        ["tests/test_forwarded.py", "-k", "caches"],
    ),
    (
        "proxy headers: resolve() keeps the values a client padded",
        "uringserve/http/forwarded.py",
        "if sum(len(v) for v in values if v is not None) <= _KEY_MAX:",
        "if True:",
        ["tests/test_forwarded.py", "-k", "caches"],
    ),
    (
        "proxy headers: an IPv6 zone of any characters is an address",
        "uringserve/server/trust.py",
        '    if "%" in text:\n        return None\n',
        "",
        ["tests/test_forwarded.py", "-k", "node"],
    ),
    (
        "proxy headers and PROXY: an IPv4-mapped address printed as IPv6",
        "uringserve/server/trust.py",
        "        return str(ip.ipv4_mapped)",
        "        return str(ip)",
        ["tests/test_proxy_protocol.py", "-k", "parse_and"],
    ),
    (
        "proxy headers: a refused request is logged as the last forwarded client's",
        "uringserve/http/forwarded.py",
        "            self.client, self.scheme, self.server_addr = self._peer",
        "            pass",
        ["tests/test_forwarded.py", "-k", "access_log"],
    ),
    (
        "proxy headers: of()'s cache key starts at the first 'forwarded', not at its line",
        "uringserve/http/forwarded.py",
        'key = low[low.rfind(b"\\n", 0, first) + 1 : end if end >= 0 else len(low)]\n        found',
        "key = low[first : end if end >= 0 else len(low)]\n        found",
        ["tests/test_forwarded.py", "-k", "says_what_the_whole"],
    ),
    (
        "proxy headers: a connection's views keyed from the first 'forwarded', not its line",
        "uringserve/http/forwarded.py",
        'key = low[low.rfind(b"\\n", 0, first) + 1 : end if end >= 0 else len(low)]\n                        seen',
        "key = low[first : end if end >= 0 else len(low)]\n                        seen",
        ["tests/test_forwarded.py", "-k", "says_what_the_whole"],
    ),
    (
        "PROXY v2: an INET header one byte short is read past its end",
        "uringserve/server/proxy_protocol.py",
        "        if length < _V2_INET.size:",
        "        if length < 11:",
        ["tests/test_proxy_protocol.py", "-k", "bad_headers"],
    ),
    (
        "PROXY v2: a UDP header taken as TCP",
        "uringserve/server/proxy_protocol.py",
        "_V2_FAMILIES = frozenset((0x00, 0x11, 0x21, 0x31))",
        "_V2_FAMILIES = frozenset((0x00, 0x11, 0x21, 0x31, 0x12, 0x22))",
        ["tests/test_proxy_protocol.py", "-k", "stream_families"],
    ),
    (
        "PROXY v1: an IPv6 zone of any characters in the destination",
        "uringserve/server/proxy_protocol.py",
        'if b"%" in parts[2] or b"%" in parts[3]:',
        'if b"%" in parts[2]:',
        ["tests/test_proxy_protocol.py", "-k", "bad_headers"],
    ),
    (
        "PROXY: the protocol keeps the proxy's address",
        "uringserve/server/proxy_protocol.py",
        '            self._extra["peername"] = header.source',
        "            pass",
        ["tests/test_proxy_protocol.py", "-k", "sees_the_client"],
    ),
    (
        "PROXY: the reader stays in the registry after the hand-over",
        "uringserve/server/proxy_protocol.py",
        "            registry.replace(self, protocol)",
        "            pass",
        ["tests/test_proxy_protocol.py", "-k", "sees_the_client"],
    ),
    (
        "PROXY: a draining server's first response keeps the connection alive",
        "uringserve/server/proxy_protocol.py",
        '        if self.draining and hasattr(protocol, "shutdown"):\n',
        "        if False:\n",
        ["tests/test_proxy_protocol.py", "-k", "drain_reaches"],
    ),
    (
        "PROXY: a header that never comes holds the connection",
        "uringserve/server/proxy_protocol.py",
        "        self.set_deadline(KIND_PROXY_HEADER, self.settings.timeout)",
        "        pass",
        ["tests/test_proxy_protocol.py", "-k", "in_time"],
    ),
    # issue 24: the ASGI extensions, --limit-concurrency, the lingering close and the drain
    (
        "--limit-concurrency: one request more than N in flight",
        "uringserve/http/limit.py",
        "if self.in_flight >= self.limit:",
        "if self.in_flight > self.limit:",
        ["tests/test_limit_concurrency.py", "-k", "asgi_requests_beyond_the_limit"],
    ),
    (
        "trailers: TE's coding compared case-sensitively",
        "uringserve/http/framing.py",
        'strip(b" \\t").lower() == b"trailers"',
        'strip(b" \\t") == b"trailers"',
        ["tests/test_asgi_extensions.py", "-k", "trailers_follow_the_last_chunk"],
    ),
    (
        "early hints sent to an HTTP/1.0 client",
        "uringserve/http/asgi.py",
        'if self.version == "1.1":\n                conn.write(framing.early_hints(',
        "if True:\n                conn.write(framing.early_hints(",
        ["tests/test_asgi_extensions.py", "-k", "early_hints_are_not_sent_to_http_1_0"],
    ),
    (
        "a drain closes an idle keep-alive connection at once (its next request may be on its way)",
        "uringserve/http/protocol.py",
        "            if left <= 0:\n                self._close()",
        "            if True:\n                self._close()",
        ["tests/test_drain_under_load.py", "-k", "just_answered_gets_its_next_request"],
    ),
    (
        "no lingering close: closed with the client's bytes unread (RST)",
        "uringserve/http/protocol.py",
        "if linger and state is not HALF_CLOSED:",
        "if False and linger and state is not HALF_CLOSED:",
        ["tests/test_lingering_close.py", "-k", "streamed_responses_to_a_client_that_keeps_sending"],
    ),
    (
        "LINGER counted from the FIN's request, not from the response's leaving",
        "uringserve/http/protocol.py",
        "if unsent < self._unsent and self.state is LINGERING:",
        "if False:",
        ["tests/test_lingering_close.py", "-k", "slow_reader_of_a_large_last_response"],
    ),
    (
        "WSGI: the thread does not wait while the client is not reading",
        "uringserve/http/wsgi.py",
        "if conn.write_paused:\n            return conn.drain()",
        "if False:\n            return conn.drain()",
        ["tests/test_wsgi.py", "-k", "pauses_the_generator"],
    ),
    (
        "WSGI: two positional parameters not detected as WSGI",
        "uringserve/http/server.py",
        "    if len(params) == 2:",
        "    if len(params) == 5:",
        ["tests/test_wsgi.py", "-k", "detected_as_wsgi"],
    ),
    (
        "WSGI: repeated Cookie fields joined with a comma",
        "uringserve/http/wsgi.py",
        '("; " if key == "HTTP_COOKIE" else ",")',
        '","',
        ["tests/test_wsgi.py", "-k", "environ"],
    ),
    (
        "WSGI: close() not called on the app's iterable",
        "uringserve/http/wsgi.py",
        '                close = getattr(result, "close", None)',
        "                close = None",
        ["tests/test_wsgi.py", "-k", "pauses_the_generator or after_the_head"],
    ),
    (
        "WSGI: start_response twice without exc_info accepted",
        "uringserve/http/wsgi.py",
        "        elif self.block is not None:\n            raise RuntimeError",
        "        elif False:\n            raise RuntimeError",
        ["tests/test_wsgi.py", "-k", "twice"],
    ),
    (
        "WSGI: exc_info after the head does not re-raise",
        "uringserve/http/wsgi.py",
        "                if self.head_sent:\n",
        "                if False:\n",
        ["tests/test_wsgi.py", "-k", "exc_info_after"],
    ),
    (
        "WSGI: file_wrapper of a regular file iterated, not sent by the file path",
        "uringserve/http/wsgi.py",
        "        return AppFile(filelike)",
        "        return None",
        ["tests/test_wsgi.py", "-k", "file_wrapper"],
    ),
    (
        "WSGI: wsgi.input.read(n) takes the whole body",
        "uringserve/http/wsgi.py",
        "        while len(self._buf) < size and self._fill():",
        "        while self._fill():",
        ["tests/test_wsgi.py", "-k", "large_upload"],
    ),
    (
        "WSGI: one thread more than --wsgi-threads",
        "uringserve/http/wsgi.py",
        "            if len(self._threads) < self.size:",
        "            if len(self._threads) <= self.size:",
        ["tests/test_wsgi.py", "-k", "wait_their_turn"],
    ),
    (
        "WSGI: a thread left behind by the drain not reported",
        "uringserve/http/server.py",
        '                logger.warning("WSGI thread',
        '                logger.debug("WSGI thread',
        ["tests/test_wsgi_apps.py", "-k", "blocked"],
    ),
    (
        "WSGI: a whole body answered whatever its Content-Length",
        "uringserve/http/wsgi.py",
        "    if length is None or length == len(body):",
        "    if True:",
        ["tests/test_wsgi.py", "-k", "content_length"],
    ),
    (
        "WSGI: --limit-concurrency not handed to the WSGI runner",
        "uringserve/http/server.py",
        "self._root_path, self._multiprocess, self.concurrency)",
        "self._root_path, self._multiprocess, None)",
        ["tests/test_wsgi.py", "-k", "limit_concurrency"],
    ),
    (
        "WSGI: wsgi.multiprocess always False",
        "uringserve/http/wsgi.py",
        '        "wsgi.multiprocess": multiprocess,',
        '        "wsgi.multiprocess": False,',
        ["tests/test_wsgi.py", "-k", "limit_concurrency"],
    ),
    (
        "WSGI: a chunk past a filled Content-Length dropped",
        "uringserve/http/wsgi.py",
        "                        self._out(more)\n",
        "",
        ["tests/test_wsgi.py", "-k", "more_bytes"],
    ),
    (
        "WSGI: a one-piece iterator body not answered as one write",
        "uringserve/http/wsgi.py",
        "                    else:\n                        return first",
        "                    else:\n                        self._out(first)",
        ["tests/test_wsgi.py", "-k", "fills_its_content_length"],
    ),
]


def run(name: str, path: str, old: str, new: str, tests: list[str]) -> bool:
    """True when the planted bug fails a test (as it must)."""
    file = ROOT / path
    source = file.read_text() if file.is_file() else ""
    if source.count(old) != 1:
        print(f"STALE  {name}: the text to replace is not in {path} exactly once; update planted.py")
        return False
    file.write_text(source.replace(old, new))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        file.write_text(source)
    caught = proc.returncode == 1
    failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
    print(f"{'caught' if caught else 'MISSED'} {name}: {failed[0] if failed else proc.stdout.strip()[-200:]}")
    return caught


def main() -> int:
    # stopped from outside, still restore the source (run()'s finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = [run(*bug) for bug in PLANTED]
    print(f"{sum(results)} of {len(results)} planted bugs caught")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
