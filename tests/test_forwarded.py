"""--proxy-headers: the trusted-peer list, the header rules (X-Forwarded-*,
RFC 7239 Forwarded, one family per --forwarded-style), what the app sees
through them (ASGI scope, native Request, access log) on both loops, that
arbitrary header bytes never raise, and that the caches keep no key a
client pads. The same behind real nginx: tests/test_behind_proxies.py."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any

import pytest
from http_client import exchange
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_http_server import H, run

from uringserve.http import HTTPServer
from uringserve.http.config import HTTPConfig
from uringserve.http.forwarded import (
    _CACHE_MAX,
    _KEY_MAX,
    _VIEWS_MAX,
    STYLES,
    ForwardedHTTPProtocol,
    Forwarding,
    header_values,
    parse_forwarded,
    parse_node,
)
from uringserve.http.messages import Response
from uringserve.http.parser import HeaderBlock
from uringserve.server.trust import TrustedPeers

# -- the trusted list -------------------------------------------------------------------


def test_trusted_peers_take_addresses_networks_star_and_unix_sockets() -> None:
    t = TrustedPeers("127.0.0.1, 10.0.0.0/8,::1, 2001:db8::/32,/run/app.sock,unix:/tmp/b.sock,@abs")
    assert t.trusts("127.0.0.1") and t.trusts("10.1.2.3") and t.trusts("::1") and t.trusts("2001:db8::5")
    assert not t.trusts("127.0.0.2") and not t.trusts("11.0.0.1") and not t.trusts("2001:db9::1")
    assert not t.trusts("unknown") and not t.trusts("") and not t.trusts("_hidden")
    assert t.trusts("::ffff:10.0.0.7")  # an IPv4 client on a dual-stack listener
    assert t.trusts_peer(("10.9.9.9", 5000), ("0.0.0.0", 80))
    assert not t.trusts_peer(("192.0.2.1", 5000), ("0.0.0.0", 80))
    # a Unix-socket client has no address: the listener's path decides
    assert t.trusts_peer("", ("/run/app.sock", None)) and t.trusts_peer("", "/tmp/b.sock")
    assert t.trusts_peer("", "\0abs") and not t.trusts_peer("", ("/run/other.sock", None))
    assert TrustedPeers("unix").trusts_peer("", "/any/path") and not TrustedPeers("unix").trusts("127.0.0.1")
    star = TrustedPeers("*")
    assert star.trusts("203.0.113.9") and star.trusts_peer("", "/x")
    # uvicorn's default
    default = TrustedPeers()
    assert default.trusts("127.0.0.1") and not default.trusts("127.0.0.2") and not default.trusts_peer("", "/x")


@pytest.mark.parametrize(
    "entry, says",
    [
        ("10.0.0.300", "is not an IP address"),
        ("localhost", "is not an IP address"),
        ("10.0.0.1/8", "is not a network"),
        ("10.0.0.0/33", "is not a network"),
        ("unix:", "needs the socket's path"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        TrustedPeers(f"127.0.0.1,{entry}")
    assert repr(entry) in str(info.value)


# -- the header rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, node",
    [
        ("192.0.2.60", ("192.0.2.60", 0)),
        ("192.0.2.60:8080", ("192.0.2.60", 8080)),
        ("[2001:db8:cafe::17]:4711", ("2001:db8:cafe::17", 4711)),
        ('"[2001:db8:cafe::17]"', ("2001:db8:cafe::17", 0)),
        ("2001:db8::1", ("2001:db8::1", 0)),
        ("192.0.2.43:_port", ("192.0.2.43", 0)),
        ("unknown", None),
        ("_hidden", None),
        ("[2001:db8::1", None),
        ("[2001:db8::1]x", None),
        ("1.2.3.4:99999", None),
        ("1.2.3.4:", None),
        ("", None),
        ("999.1.1.1", None),
        # a zone is no address: ipaddress takes any characters after "%", escapes too
        ("fe80::1%eth0", None),
        ("[fe80::1%25eth0]:80", None),
        ("fe80::1%\x1b[31m", None),
        ("[fe80::1%\x1b[31m]", None),
        # an IPv4 client a dual-stack proxy reports: its IPv4 address (3.11 prints ::ffff:102:304)
        ("::ffff:1.2.3.4", ("1.2.3.4", 0)),
        ("[::ffff:102:304]:5", ("1.2.3.4", 5)),
        ("::ffff:0:1.2.3.4", ("::ffff:0:102:304", 0)),  # IPv4-translated (RFC 2765) is not mapped
    ],
)
def test_a_node_is_an_address_and_port_or_nothing(text: str, node: Any) -> None:
    assert parse_node(text) == node


def test_forwarded_elements_quoted_strings_and_garbage() -> None:
    assert parse_forwarded('for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"') == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8:cafe::17]:4711"},
    ]
    assert parse_forwarded('For="\\"quoted\\"";PROTO=https') == [{"for": '"quoted"', "proto": "https"}]
    assert parse_forwarded(" , for=1.2.3.4 ,, ") == [{"for": "1.2.3.4"}]
    for garbage in ('for="unterminated', "for", "for=", "=x", "for=1;for=2", "for==1", "for=1 2", 'a"b=1'):
        assert parse_forwarded(garbage) is None, garbage


def resolved(trusted: str, style: str = "x-forwarded", **headers: str) -> Any:
    names = {"xff": 0, "proto": 1, "host": 2, "port": 3, "fwd": 4}
    values: list[bytes | None] = [None] * 5
    for k, v in headers.items():
        values[names[k]] = v.encode("latin-1")
    return Forwarding(trusted, style).resolve(tuple(values))


NOTHING = (None, None, None, None)
RFC = "rfc7239"


def test_x_forwarded_for_is_the_right_most_untrusted_hop() -> None:
    # the client sent a spoofed entry; each trusted proxy appended what it saw
    assert resolved("127.0.0.1,10.0.0.0/8", xff="6.6.6.6, 203.0.113.7, 10.0.0.2")[0] == ("203.0.113.7", 0)
    # every hop trusted: the left-most (uvicorn's rule)
    assert resolved("127.0.0.1,10.0.0.0/8", xff="10.0.0.9, 10.0.0.2")[0] == ("10.0.0.9", 0)
    assert resolved("*", xff="6.6.6.6, 203.0.113.7")[0] == ("6.6.6.6", 0)
    assert resolved("127.0.0.1", xff="[2001:db8::9]:5555")[0] == ("2001:db8::9", 5555)
    # the chosen hop is no address: the client stays the peer (None), never the garbage
    assert resolved("127.0.0.1", xff="1.2.3.4, unknown")[0] is None
    assert resolved("127.0.0.1", xff="1.2.3.4, _secret")[0] is None
    assert resolved("127.0.0.1", xff="")[0] is None
    # ... and a lined-up proto list is still read at that hop's place, as Forwarded's proto= is
    assert resolved("127.0.0.1", xff="1.2.3.4, unknown", proto="http, https")[:2] == (None, "https")
    assert resolved("127.0.0.1", xff="fe80::1%\x1b[31m")[0] is None
    assert resolved("127.0.0.1", xff="::ffff:203.0.113.7")[0] == ("203.0.113.7", 0)


def test_proto_host_and_port() -> None:
    assert resolved("127.0.0.1", proto="https")[1] == "https"
    assert resolved("127.0.0.1", proto=" WSS ")[1] == "https"
    assert resolved("127.0.0.1", proto="ws")[1] == "http"
    assert resolved("127.0.0.1", proto="gopher")[1] is None
    # a list: read at the client hop's place when it lines up with X-Forwarded-For
    assert resolved("127.0.0.1,10.0.0.0/8", xff="203.0.113.7, 10.0.0.2", proto="https, http")[1] == "https"
    assert resolved("127.0.0.1", xff="203.0.113.7, 10.0.0.2", proto="https, http")[1] == "http"
    assert resolved("127.0.0.1", proto="https, http")[1] is None
    assert resolved("127.0.0.1", host="example.com")[2:] == ("example.com", None)
    assert resolved("127.0.0.1", host="example.com:8443")[2:] == ("example.com", 8443)
    assert resolved("127.0.0.1", host="[2001:db8::1]:8443")[2:] == ("[2001:db8::1]", 8443)
    assert resolved("127.0.0.1", host="example.com", port="444")[2:] == ("example.com", 444)
    assert resolved("127.0.0.1", host="bad host/x")[2:] == (None, None)
    assert resolved("127.0.0.1", port="65536")[2:] == (None, None)


def test_each_style_reads_only_its_own_family() -> None:
    """A proxy passes on the headers of the other family as the client sent
    them (nginx does), so they are the client's word: ignored whole."""
    both = {
        "fwd": "for=203.0.113.66;proto=https;host=evil.example",
        "xff": "198.51.100.1",
        "proto": "http",
        "host": "example.com",
        "port": "8443",
    }
    assert resolved("127.0.0.1", **both) == (("198.51.100.1", 0), "http", "example.com", 8443)
    assert resolved("127.0.0.1", fwd=both["fwd"]) == NOTHING
    assert resolved("127.0.0.1", RFC, **both) == (("203.0.113.66", 0), "https", "evil.example", None)
    assert resolved("127.0.0.1", RFC, **{k: v for k, v in both.items() if k != "fwd"}) == NOTHING
    with pytest.raises(ValueError, match="'legacy' is not a forwarded style: x-forwarded or rfc7239"):
        Forwarding("127.0.0.1", "legacy")
    assert STYLES == ("x-forwarded", "rfc7239")


def test_forwarded_follows_the_same_hop_rule() -> None:
    got = resolved(
        "127.0.0.1,10.0.0.0/8",
        RFC,
        fwd='for=6.6.6.6;proto=http, for="[2001:db8::7]:4711";proto=https;host=example.com, for=10.0.0.2',
    )
    assert got == (("2001:db8::7", 4711), "https", "example.com", None)
    assert resolved("127.0.0.1", RFC, fwd='for="broken;proto=https') == NOTHING


@pytest.mark.parametrize(
    "fwd, found",
    [
        ("for=unknown;proto=https", (None, "https", None, None)),
        ("for=_hidden;proto=https;host=example.com:8443", (None, "https", "example.com", 8443)),
        ("by=1.2.3.4;proto=https;host=example.com", (None, "https", "example.com", None)),  # no for=
        ('for="[fe80::1%25eth0]";proto=https', (None, "https", None, None)),
        # the right-most element that is not a trusted proxy's: here the last
        ("for=1.2.3.4;proto=http, for=_x;proto=https", (None, "https", None, None)),
        ("for=1.2.3.4;proto=http, for=127.0.0.1;proto=https", (("1.2.3.4", 0), "http", None, None)),
    ],
)
def test_a_forwarded_element_without_an_address_still_gives_its_proto_and_host(fwd: str, found: Any) -> None:
    """The client is unnamed (it stays the peer), what else the element says stands."""
    assert resolved("127.0.0.1", RFC, fwd=fwd) == found


def test_header_values_from_a_block_and_from_pairs() -> None:
    block = HeaderBlock(
        b"Host: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nFORWARDED: for=3.3.3.3\r\n"
    )
    assert header_values(block) == (b"1.1.1.1, 2.2.2.2", None, None, None, b"for=3.3.3.3")
    assert header_values(HeaderBlock(b"Host: a\r\nX-Other: forwarded\r\n")) is None
    assert header_values(HeaderBlock(b"Host: a\r\n")) is None
    assert header_values([(b"x-forwarded-proto", b"https"), (b"host", b"a")]) == (None, b"https", None, None, None)
    assert header_values([(b"host", b"a")]) is None


_value = st.binary(max_size=80) | st.text(alphabet='[]:;,="\\ _-.0123456789abcdefunknowfrpthsFOR', max_size=60).map(
    lambda s: s.encode()
)


@settings(max_examples=400, deadline=None)
@given(
    st.tuples(*[st.none() | _value] * 5),
    st.sampled_from(["127.0.0.1", "*", "127.0.0.1,10.0.0.0/8"]),
    st.sampled_from(STYLES),
)
def test_arbitrary_header_bytes_never_raise(values: tuple, trusted: str, style: str) -> None:
    f = Forwarding(trusted, style)
    found = f._resolve(values)  # the rules themselves, without resolve()'s last-resort catch
    client, scheme, host, port = found
    assert client is None or (isinstance(client[0], str) and 0 <= client[1] <= 65535)
    assert scheme in (None, "http", "https")
    assert port is None or 0 < port <= 65535
    # and through the header block the recogniser makes
    lines = b"".join(b"X-Forwarded-For: " + v.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n" for v in values if v)
    header_values(HeaderBlock(b"Host: a\r\n" + lines))


# -- what the app sees --------------------------------------------------------------------


def native(request: Any) -> Response:
    return Response(json.dumps([request.client, request.scheme, request.server]))


async def asgi(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps([scope["client"], scope["scheme"], scope["server"]]).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
    )
    await send({"type": "http.response.body", "body": body})


def seen(
    h: Any, app: Any, heads: list[bytes], trusted: str | None = "127.0.0.1", style: str = "x-forwarded", **kw: Any
) -> list[Any]:
    forwarding = None if trusted is None else Forwarding(trusted, style)
    data = b"".join(b"GET / HTTP/1.1\r\n" + H + head + b"\r\n" for head in heads)
    r = run(h, app, lambda port: exchange(port, data, responses=len(heads)), forwarding=forwarding, **kw)
    return [json.loads(resp.body) for resp in r.responses]


@pytest.mark.parametrize("app", [native, asgi], ids=["native", "asgi"])
def test_a_trusted_proxy_sets_client_scheme_and_server_per_request(h, app) -> None:
    got = seen(
        h,
        app,
        [
            b"X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\n",
            b"",  # no proxy headers: the peer again
            # the client's own Forwarded, here amid the proxy's lines
            b'X-Forwarded-Port: 8080\r\nForwarded: for="[2001:db8::7]:4711";proto=https;host=example.org\r\n'
            b"X-Forwarded-Ssl: on\r\n",
            b"X-Forwarded-Port: 8080\r\n",
        ],
    )
    assert got[0] == [["203.0.113.7", 0], "https", ["example.com", 443]]
    assert got[1][0][0] == "127.0.0.1" and got[1][0][1] > 0 and got[1][1] == "http" and got[1][2][0] == "127.0.0.1"
    assert got[2] == got[3]
    assert got[3][2] == ["127.0.0.1", 8080] and got[3][0][0] == "127.0.0.1"
    got = seen(
        h,
        app,
        [
            b'Forwarded: for="[2001:db8::7]:4711";proto=https;host="example.org:8443"\r\n',
            b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n",  # the client's own
            b"Forwarded: for=unknown;proto=https\r\n",
        ],
        style=RFC,
    )
    assert got[0] == [["2001:db8::7", 4711], "https", ["example.org", 8443]]
    assert got[1][0][0] == "127.0.0.1" and got[1][1] == "http" and got[1][2][0] == "127.0.0.1"
    assert got[2][0][0] == "127.0.0.1" and got[2][1] == "https"


@pytest.mark.parametrize("app", [native, asgi], ids=["native", "asgi"])
def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(h, app) -> None:
    spoof = (
        b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=7.7.7.7\r\nX-Forwarded-Host: evil\r\n"
    )
    for style in STYLES:
        got = seen(h, app, [spoof], trusted="10.0.0.0/8", style=style)
        assert got[0][0][0] == "127.0.0.1" and got[0][1] == "http" and got[0][2][0] == "127.0.0.1"
    # and without --proxy-headers at all
    got = seen(h, app, [spoof], trusted=None)
    assert got[0][0][0] == "127.0.0.1" and got[0][1] == "http"


def test_garbage_headers_are_ignored_and_the_request_answered(h) -> None:
    heads = [
        b"X-Forwarded-For: \xff\xfe, ][, :::::, 1.2.3.4:bad\r\nX-Forwarded-Proto: https https\r\n",
        b'Forwarded: for="[::1;proto=https\r\nX-Forwarded-Host: a b\r\n',
        b"Forwarded: for=_x;proto=https, for=unknown\r\n",
    ]
    got = seen(h, native, heads)
    for g in got:
        assert g[0][0] == "127.0.0.1" and g[2][0] == "127.0.0.1"
    assert [g[1] for g in got] == ["http", "http", "http"]


def test_the_access_log_names_the_forwarded_client(h, caplog) -> None:
    caplog.set_level(logging.INFO, logger="uringserve.access")
    seen(h, native, [b"", b"X-Forwarded-For: 203.0.113.7\r\n"], config=HTTPConfig(access_log=True))
    records = [r for r in caplog.records if r.name == "uringserve.access"]
    lines = [r.getMessage() for r in records]
    # the two requests, then the client's probe (a request line refused with 400: see http_client)
    assert len(lines) == 3 and '"- - HTTP/1.1" 400' in lines[2]
    assert lines[0].startswith("127.0.0.1 - - [") and lines[1].startswith("203.0.113.7 - - [")
    assert records[1].client == "203.0.113.7"  # type: ignore[attr-defined]
    # a request refused before its headers were read is the peer's, not the last forwarded client's
    assert lines[2].startswith("127.0.0.1 - - [")


def test_a_unix_socket_client_is_trusted_by_the_socket_path(h, tmp_path) -> None:
    path = str(tmp_path / "app.sock")

    def ask(trusted: str) -> Any:
        async def main() -> Any:
            srv = HTTPServer(native, forwarding=Forwarding(trusted))
            await srv.start(uds=path)
            try:

                def client() -> bytes:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(10)
                        s.connect(path)
                        s.sendall(
                            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n"
                        )
                        out = b""
                        while chunk := s.recv(4096):
                            out += chunk
                        return out

                import asyncio

                raw = await asyncio.to_thread(client)
                return json.loads(raw.partition(b"\r\n\r\n")[2])
            finally:
                await srv.shutdown(timeout=2)

        return h.run(main(), timeout=30)

    assert ask(path)[0] == ["203.0.113.7", 0]
    assert ask("unix")[0] == ["203.0.113.7", 0]
    assert ask("127.0.0.1")[0] != ["203.0.113.7", 0]
    assert not os.path.exists(path)


def test_of_a_block_finds_the_fields_among_other_headers_in_any_case() -> None:
    f = Forwarding("127.0.0.1")
    block = HeaderBlock(
        b"Referer: http://a/forwarded\r\nHost: a\r\nX-FoRwArDeD-FoR: 203.0.113.7\r\nAccept: */*\r\n"
        b"X-FORWARDED-PROTO: https\r\nCookie: forwarded=1\r\n"
    )
    assert f.of(block) == (("203.0.113.7", 0), "https", None, None)
    assert f.of(block) == (("203.0.113.7", 0), "https", None, None)  # from the cache
    # "x-forwarded" only in values: no proxy field, nothing said
    assert f.of(HeaderBlock(b"Referer: http://a/x-forwarded\r\nHost: a\r\n")) == (None, None, None, None)
    # only the other family's field: none of this style's
    assert f.of(HeaderBlock(b"Forwarded: for=1.2.3.4\r\nHost: a\r\n")) is None
    assert f.of(HeaderBlock(b"Host: a\r\n")) is None
    assert f.of([(b"x-forwarded-for", b"203.0.113.9")]) == (("203.0.113.9", 0), None, None, None)
    assert f.of([(b"host", b"a")]) is None


_names = st.sampled_from(
    [b"X-Forwarded-For", b"x-forwarded-proto", b"X-FORWARDED-HOST", b"X-Forwarded-Port", b"Forwarded", b"Host"]
    + [b"Referer", b"X-Not-Forwarded-For", b"Forwarded-X", b"Accept", b"X-Forwarded", b"Not-Forwarded"]
)
_field_value = st.text(alphabet='0123456789abcdef.:[]_, ;="forwardedunknownhttps/', max_size=40).map(
    lambda s: s.strip(" ").encode()
)


_block_lines = st.lists(st.tuples(_names, _field_value), max_size=8)


def _block(lines: list) -> HeaderBlock:
    return HeaderBlock(b"".join(n + b": " + v + b"\r\n" if v else n + b":\r\n" for n, v in lines))


@settings(max_examples=300, deadline=None)
@example([[(b"X-Forwarded-For", b"1.1.1.1")], [(b"X-Not-Forwarded-For", b"1.1.1.1")]], "x-forwarded")
@example([[(b"Forwarded", b"for=1.1.1.1")], [(b"Not-Forwarded", b"for=1.1.1.1")]], RFC)
@given(st.lists(_block_lines, min_size=1, max_size=4), st.sampled_from(STYLES))
def test_of_a_block_says_what_the_whole_block_says(blocks: list, style: str) -> None:
    """of()'s cache key, the stretch from the first line naming the style's
    needle to the last, holds every proxy field of the style: it resolves as
    the whole block does; and so does a connection's inline copy of it, with
    its own cache of views, over several requests."""
    f = Forwarding("127.0.0.1,10.0.0.0/8", style)
    heads = [_block(lines) for lines in blocks]
    seen_all = _seen_through_a_connection(f, heads + heads)
    for block, seen in zip(heads + heads, seen_all, strict=True):
        values = header_values(block)
        whole = (None, None, None, None) if values is None else Forwarding(f.trusted, style).resolve(values)
        assert (f.of(block) or (None, None, None, None)) == whole
        client, scheme, host, port = whole
        assert seen[0] == (client or ("127.0.0.1", 5555)) and seen[1] == (scheme or "http")
        if host is None and port is None:
            assert seen[2] == ("127.0.0.1", 8000)
        else:
            assert seen[2] == (host or "127.0.0.1", port or {"http": 80, "https": 443}[seen[1]])


def _seen_through_a_connection(
    f: Forwarding, blocks: list[HeaderBlock], keep: list[ForwardedHTTPProtocol] | None = None
) -> list[Any]:
    """ex.seen_as for each head, in order, on one trusted ForwardedHTTPProtocol
    (put in `keep`, when given, to look at after)."""
    import asyncio

    from uringserve.http.protocol import Exchange

    class Peer:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 5555) if name == "peername" else default

    async def main() -> list[Any]:
        proto = ForwardedHTTPProtocol(lambda ex: None, HTTPConfig(), f)
        proto.server_addr = ("127.0.0.1", 8000)
        proto.connection_made(Peer())
        proto.stop_timer()
        if keep is not None:
            keep.append(proto)
        out = []
        for block in blocks:
            ex = Exchange(b"GET", b"/", "1.1", block, True)
            proto._runner(ex)
            out.append(ex.seen_as)
        return out

    return asyncio.run(main())


@pytest.mark.parametrize("style", STYLES)
def test_the_caches_keep_no_key_a_client_pads(style: str) -> None:
    """Every cache key is a stretch of the client's own bytes: a client
    ending its head with a line naming the needle, or padding a field's
    value, makes each request a new key of up to --max-header-bytes. Such
    keys are parsed and not kept, so the caches stay bounded in bytes; a
    proxy's short lines are still kept."""
    f = Forwarding("127.0.0.1", style)
    field = b"Forwarded: for=203.0.113.7" if style == RFC else b"X-Forwarded-For: 203.0.113.7"
    needle = b"forwarded:" if style == RFC else b"x-forwarded"
    prefix = "for=" if style == RFC else ""
    pad = b"a" * 30_000
    heads = []
    for i in range(200):
        # the stretch from the field to the client's last line naming the needle, one byte varied
        heads.append(HeaderBlock(field + b"\r\nX-Pad: " + pad + b"%d\r\nX-Z: %s\r\n" % (i, needle)))
        # the field's own value padded
        hops = [f"198.51.100.{i % 250}"] + ["127.0.0.1"] * 3000
        heads.append(HeaderBlock(field + "".join(f", {prefix}{hop}" for hop in hops).encode() + b"\r\n"))
    keep: list[ForwardedHTTPProtocol] = []
    seen_all = _seen_through_a_connection(f, heads, keep)
    assert [s[0] for s in seen_all[::2]] == [("203.0.113.7", 0)] * 200  # still read right
    assert [s[0] for s in seen_all[1::2]] == [(f"198.51.100.{i % 250}", 0) for i in range(200)]
    views = keep[0]._views
    assert views is not None
    by_lines = sum(map(len, f._by_lines))
    cache = sum(len(v) for values in f._cache for v in values if v is not None)
    in_views = sum(map(len, views))
    assert by_lines <= _CACHE_MAX * _KEY_MAX and cache <= _CACHE_MAX * _KEY_MAX, (by_lines, cache)
    assert in_views <= _VIEWS_MAX * _KEY_MAX, in_views
    assert max(map(len, [*f._by_lines, *views]), default=0) <= _KEY_MAX
    # a proxy's own short lines are kept: the next request like them is a lookup
    short = HeaderBlock(field + b"\r\n")
    _seen_through_a_connection(f, [short], keep)
    assert len(keep[1]._views or {}) == 1 and len(f._by_lines) == 1 and len(f._cache) == 1
