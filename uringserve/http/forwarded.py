"""Proxy headers (`--proxy-headers`): the client, scheme and server a
trusted proxy reports, in place of the proxy's own.

Read from a connection whose peer is in `--forwarded-allow-ips`
(server/trust.py), decided once per connection; a request on any other
connection costs nothing and its headers are ignored, so a spoofed
X-Forwarded-For from a client straight on the listener changes nothing.

A trusted proxy is trusted for one family of headers, the one it sets
(`--forwarded-style`, hypercorn's ProxyFixMiddleware "legacy"/"modern"):
`x-forwarded` (the default, the only one uvicorn and gunicorn read) or
`rfc7239`. The other family is ignored whole: a proxy passes on what the
client sent of a header it does not set itself (nginx does), so reading it
would let the client name itself. For the same reason the proxy must set
or clear every header of its family.

The headers, and the rules (uvicorn's for X-Forwarded-For/-Proto):

- `X-Forwarded-For`: the client is the right-most address that is not a
  trusted proxy (every proxy appends the peer it saw, so what is left of a
  trusted one is only as true as that proxy's own client); when every
  address is trusted, the left-most. A chosen hop that is not an IP
  address (`unknown`, an obfuscated name, garbage) says nothing usable: the
  client stays the peer. The client's port is the hop's if it has one, else 0.
- `X-Forwarded-Proto`: http, https, ws or wss (ws/wss count as http/https:
  the request is HTTP). A list (`https, http`) is read at the chosen
  client hop's place when it has as many entries as X-Forwarded-For.
- `X-Forwarded-Host` / `X-Forwarded-Port`: the ASGI `server` (host, port);
  the port defaults to the host's own, then the scheme's.
- `Forwarded` (RFC 7239, `--forwarded-style rfc7239`): `for=`, `proto=`,
  `host=` of the element chosen by X-Forwarded-For's rule; quoted strings,
  `[IPv6]:port`, obfuscated identifiers (`_abc`) and `unknown` are
  understood. An element whose `for=` is no address (or missing) still
  gives its `proto=` and `host=`; the client stays the peer. A value that
  does not parse is ignored whole.

Addresses: an IPv6 zone (`fe80::1%eth0`) is no address; an IPv4-mapped one
is reported as its IPv4 address (server/trust.py's address_text()).

Nothing here raises on a header's content: what does not parse is ignored.
Results are cached by the headers' raw values (a proxy repeats the same
few), so a request behind a proxy costs a search of its head and a dict
lookup. The keys are the client's bytes, so only short ones are kept
(_KEY_MAX): a longer one is parsed each time it comes, and a cache never
holds more than its count times that many bytes."""

from __future__ import annotations

import re
from typing import Any

from ..server.proxy_protocol import PeerTransport
from ..server.trust import TrustedPeers, address_text
from .parser import HeaderBlock
from .protocol import HTTPProtocol

# (client (host, port) | None, scheme | None, server host | None, server port | None)
Found = tuple[tuple[str, int] | None, str | None, str | None, int | None]
NOTHING: Found = (None, None, None, None)

_FIELDS = {
    b"x-forwarded-for": 0,
    b"x-forwarded-proto": 1,
    b"x-forwarded-host": 2,
    b"x-forwarded-port": 3,
    b"forwarded": 4,
}
# the fields' lines in a lower-cased HeaderBlock with "\n" put before it (a block
# has no blanks before the colon nor after the value): one C-level scan for all five
_LINE = re.compile(rb"\n(x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-forwarded-port|forwarded):[ \t]*([^\r]*)")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORT = {"http": 80, "https": 443}
# RFC 7239's grammar: quoted strings, the separators, tokens (a bracketed IPv6 unquoted too,
# as some proxies send it), blanks; anything else stops the parse
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[;,=]|[^;,="\s]+|[ \t]+')
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_~%!$&'()*+=]+)(?::([0-9]{1,5}))?\Z")
_CACHE_MAX = 1024
_VIEWS_MAX = 64  # per connection (a proxy's keep-alive connection carries many clients)
# the longest key a cache keeps, in bytes: a proxy's lines for one client fit many times over;
# a client padding its own header lines (up to --max-header-bytes) is parsed, not remembered
_KEY_MAX = 512
STYLES = ("x-forwarded", "rfc7239")


def header_values(headers: Any) -> tuple[bytes | None, ...] | None:
    """The raw values of the five proxy fields (several lines of one
    field joined with ", "), or None when there is none. `headers`: a
    HeaderBlock or (lower-cased name, value) pairs.

    A block (the one-frame path's) is searched, not split: lower-cased
    once, one substring test (all a request without proxy fields costs:
    ~0.2 us here, as cheap as two case-sensitive tests) and one regex scan
    for the five fields. Values come lower-cased from a block: none of them
    is case-sensitive (addresses, schemes, host names)."""
    if type(headers) is HeaderBlock:
        low = headers.lower()
        if b"forwarded" not in low:
            return None
        lines = _LINE.findall(b"\n" + low)
    else:
        lines = [(n, v) for n, v in headers if n in _FIELDS]
    if not lines:
        return None
    out: list[bytes | None] = [None, None, None, None, None]
    for name, value in lines:
        i = _FIELDS[name]
        prev = out[i]
        out[i] = value if prev is None else prev + b", " + value
    return tuple(out)


def parse_node(text: str) -> tuple[str, int] | None:
    """An X-Forwarded-For entry or a `for=` node: (IP address, port or 0),
    or None for anything that is not an address (`unknown`, `_hidden`,
    garbage). IPv6 bare or in brackets; a port after IPv4 or `]`."""
    text = text.strip().strip('"').strip()
    port = 0
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        host = text[1:end]
        if rest:
            if not rest.startswith(":"):
                return None
            port = _port(rest[1:])
            if port < 0:
                return None
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p)
        if port < 0:
            return None
    else:
        host = text
    address = address_text(host)
    return None if address is None else (address, port)


def _port(text: str) -> int:
    """A port number, 0 for an obfuscated one (`_abc`), -1 for garbage."""
    if text.startswith("_") and len(text) > 1:
        return 0
    if text.isdigit() and text.isascii() and len(text) <= 5 and int(text) <= 65535:
        return int(text)
    return -1


def parse_forwarded(text: str) -> list[dict[str, str]] | None:
    """RFC 7239 `Forwarded`: its elements (parameter -> value, names
    lower-cased, quoted strings unquoted), or None when it does not parse
    (the whole header is then ignored). Empty elements are skipped."""
    tokens = _TOKEN.findall(text)
    if sum(map(len, tokens)) != len(text):  # an unterminated quote, a stray character
        return None
    elements: list[dict[str, str]] = [{}]
    state = "key"  # key -> eq -> value -> after
    key = ""
    for tok in tokens:
        c = tok[0]
        if c == " " or c == "\t":
            continue
        if state == "key":
            if tok == ",":
                elements.append({})
            elif tok == ";":
                pass
            elif c not in '"=':
                key, state = tok.lower(), "eq"
            else:
                return None
        elif state == "eq":
            if tok != "=":
                return None
            state = "value"
        elif state == "value":
            if c == '"':
                value = re.sub(r"\\(.)", r"\1", tok[1:-1])
            elif tok in (";", ",", "="):
                return None
            else:
                value = tok
            element = elements[-1]
            if key in element:  # RFC 7239 5: once per element
                return None
            element[key] = value
            state = "after"
        else:  # after a pair
            if tok == ";":
                state = "key"
            elif tok == ",":
                elements.append({})
                state = "key"
            else:
                return None
    if state in ("eq", "value"):
        return None
    return [e for e in elements if e]


def _scheme(text: str | None) -> str | None:
    return None if text is None else _SCHEMES.get(text.strip().lower())


def _host(text: str | None) -> tuple[str, int | None] | None:
    """A Host-like value: (host, port or None), None for garbage."""
    if text is None:
        return None
    m = _HOST.match(text.strip())
    if m is None:
        return None
    port = m.group(2)
    if port is not None and int(port) > 65535:
        return None
    return m.group(1), int(port) if port is not None else None


class Forwarding:
    """`--proxy-headers` for one server: the trusted peers and the cache
    of resolved header values."""

    def __init__(self, trusted: TrustedPeers | str = "127.0.0.1", style: str = "x-forwarded") -> None:
        if style not in STYLES:
            raise ValueError(f"{style!r} is not a forwarded style: x-forwarded or rfc7239")
        self.trusted = trusted if isinstance(trusted, TrustedPeers) else TrustedPeers(trusted)
        self.style = style
        self.rfc7239 = style == "rfc7239"
        # what every line of the style's fields has in its lower-cased head: of()'s key is
        # the stretch of lines naming it, so the other family's lines add no keys
        self.needle = b"forwarded:" if self.rfc7239 else b"x-forwarded"
        self._cache: dict[tuple[bytes | None, ...], Found] = {}
        self._by_lines: dict[bytes, Found] = {}  # of(): by the block's stretch of proxy lines

    def of(self, headers: Any) -> Found | None:
        """What a request's proxy fields say, None when it has none of its
        style's: the per-request call. For a HeaderBlock the cache key is the
        stretch of the lower-cased block from the first line naming the
        style's needle to the last (every field's line of the style lies in
        it; other headers rarely do), found with C-level searches: a request
        from a client seen before costs those and a dict lookup, not a parse."""
        if type(headers) is not HeaderBlock:
            values = header_values(headers)
            return None if values is None else self.resolve(values)
        low = headers.lower()
        needle = self.needle
        first = low.find(needle)
        if first < 0:
            return None
        end = low.find(b"\r", low.rfind(needle))
        key = low[low.rfind(b"\n", 0, first) + 1 : end if end >= 0 else len(low)]
        found = self._by_lines.get(key)
        if found is None:
            values = header_values(HeaderBlock(key + b"\r\n"))
            found = NOTHING if values is None else self.resolve(values)
            if len(key) <= _KEY_MAX:
                if len(self._by_lines) >= _CACHE_MAX:
                    self._by_lines.clear()
                self._by_lines[key] = found
        return found

    def resolve(self, values: tuple[bytes | None, ...]) -> Found:
        """What the proxy fields' raw values (header_values()) say: cached."""
        found = self._cache.get(values)
        if found is None:
            try:
                found = self._resolve(values)
            except Exception:  # a parse this module missed must not fail a request: ignored, like garbage
                found = NOTHING
            if sum(len(v) for v in values if v is not None) <= _KEY_MAX:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[values] = found
        return found

    def _resolve(self, values: tuple[bytes | None, ...]) -> Found:
        if self.rfc7239:  # the X-Forwarded-* headers are the client's own: ignored
            fwd = values[4]
            return NOTHING if fwd is None else self._from_forwarded(fwd.decode("latin-1"))
        # Forwarded (values[4]) is the client's own: ignored
        xff, xfproto, xfhost, xfport = (None if v is None else v.decode("latin-1") for v in values[:4])
        client = None
        index = -1
        hops: list[str] = []
        if xff is not None:
            hops = [h.strip() for h in xff.split(",")]
            nodes = [parse_node(h) for h in hops]
            index = self._client_hop(nodes)
            if index >= 0:
                client = nodes[index]
        scheme = None
        if xfproto is not None:
            protos = [p.strip() for p in xfproto.split(",")]
            if len(protos) == 1:
                scheme = _scheme(protos[0])
            elif index >= 0 and len(protos) == len(hops):
                scheme = _scheme(protos[index])
        host = _host(xfhost) if xfhost is not None and "," not in xfhost else None
        port = _port(xfport.strip()) if xfport is not None else -1
        server_port = port if port > 0 else host[1] if host is not None else None
        return client, scheme, host[0] if host is not None else None, server_port

    def _client_hop(self, nodes: list[tuple[str, int] | None]) -> int:
        """The index of the client's hop (right-most untrusted, a hop that is
        no address counting as untrusted; the left-most when all are
        trusted), -1 when there is none."""
        if not nodes:
            return -1
        if not self.trusted.everyone:
            for i in range(len(nodes) - 1, -1, -1):
                node = nodes[i]
                if node is None or not self.trusted.trusts(node[0]):
                    return i
        return 0

    def _from_forwarded(self, text: str) -> Found:
        elements = parse_forwarded(text)
        if not elements:
            return NOTHING
        nodes = [parse_node(e["for"]) if "for" in e else None for e in elements]
        index = self._client_hop(nodes)
        element = elements[index]
        host = _host(element.get("host"))
        return (
            nodes[index],
            _scheme(element.get("proto")),
            host[0] if host is not None else None,
            host[1] if host is not None else None,
        )


class ForwardedHTTPProtocol(HTTPProtocol):
    """An HTTP connection served with `--proxy-headers`. From an untrusted
    peer it is an HTTPProtocol and nothing more. From a trusted one, each
    request's proxy headers set what it sees: the connection's `client`,
    `scheme` and `server_addr` (which the ASGI scope, the native Request
    and the access log read) are the request's while it is answered
    (requests are answered one at a time, in order), and the peer's again
    for a request without proxy headers or one refused before its headers
    were read. The native Request keeps its own copy (request.client after
    the response)."""

    _peer: tuple[Any, str, Any] | None = None  # (client, scheme, server) of the connection itself
    _views: dict[bytes, tuple[Any, str, Any]] | None = None  # a trusted connection's cache (connection_made)

    def __init__(self, runner: Any, config: Any, forwarding: Forwarding, **kw: Any) -> None:
        super().__init__(runner, config, **kw)
        self._forwarding = forwarding

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        # trust goes to who sent the headers: the socket's peer, not the client a
        # PROXY header names (PeerTransport's peername), as gunicorn decides it
        sender = transport.transport.get_extra_info("peername") if isinstance(transport, PeerTransport) else self.client
        if not self._forwarding.trusted.trusts_peer(sender, self.server_addr):
            return
        self._peer = peer = (self.client, self.scheme, self.server_addr)
        runner = self._runner
        plain = self._plain_handler
        found_in = self._forwarding.of
        needle = self._forwarding.needle
        conn = self
        # this connection's views by the head's stretch of proxy lines (Forwarding.of()'s
        # key): a client seen before on it costs the key's searches and one lookup
        views: dict[bytes, tuple[Any, str, Any]] = {}
        self._views = views

        def combine(found: Found | None) -> tuple[Any, str, Any]:
            if found is None:
                return peer
            client, scheme, server = peer
            f_client, f_scheme, f_host, f_port = found
            if f_client is not None:
                client = f_client
            if f_scheme is not None:
                scheme = f_scheme
            if f_host is not None or f_port is not None:
                host = f_host if f_host is not None else server[0] if server else None
                server = (host, f_port if f_port is not None else _DEFAULT_PORT.get(scheme))
            return (client, scheme, server)

        def viewed(target: Any) -> Any:
            # `target` (the runner, or the plain handler of the one-frame path)
            # called with the request's view set, in one frame: the hot path's
            # cost is this frame and what it does
            def call(ex: Any) -> Any:
                headers = ex._headers
                if type(headers) is HeaderBlock:
                    # Forwarding.of()'s key, inline (test_forwarded.py holds the two to one result)
                    low = headers.lower()
                    first = low.find(needle)
                    if first < 0:
                        seen = peer
                    else:
                        end = low.find(b"\r", low.rfind(needle))
                        key = low[low.rfind(b"\n", 0, first) + 1 : end if end >= 0 else len(low)]
                        seen = views.get(key)  # type: ignore[assignment]
                        if seen is None:
                            seen = combine(found_in(headers))
                            if len(key) <= _KEY_MAX:  # a longer one is the client's padding: not kept
                                if len(views) >= _VIEWS_MAX:
                                    views.clear()
                                views[key] = seen
                else:
                    seen = combine(found_in(headers))
                # on the connection for what reads it there (the ASGI scope, the access
                # log), on the exchange for a native Request read after its response
                conn.client, conn.scheme, conn.server_addr = ex.seen_as = seen
                return target(ex)

            return call

        self._runner = viewed(runner)
        if plain is not None:
            self._plain_handler = viewed(plain)

    def _refuse(self, ex: Any) -> None:
        if self._peer is not None:  # a request that could not be read: nothing a proxy said about it
            self.client, self.scheme, self.server_addr = self._peer
        super()._refuse(ex)


__all__ = ["STYLES", "Forwarding", "ForwardedHTTPProtocol", "header_values", "parse_forwarded", "parse_node"]
