"""Which peers may say who the client is: `--forwarded-allow-ips`.

One list serves both ways a proxy speaks for its client: HTTP proxy
headers (uringserve.http.forwarded) and the PROXY protocol
(proxy_protocol.py). Its entries, as uvicorn and gunicorn take them:
IP addresses, networks in CIDR notation, `*` (every peer), and for
Unix-domain listeners the socket's path (`/run/app.sock`, `unix:/run/app.sock`,
`@abstract`) or `unix` (every Unix-socket connection). Unlike uvicorn, an
entry that is none of these is refused, not kept as a literal that never
matches, so a typo cannot silently turn the proxy's headers off.

Trust is decided once per connection (the peer does not change), so a
request pays nothing for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHE_MAX = 4096  # distinct peer addresses remembered; the cache starts over beyond


def address_text(text: str) -> str | None:
    """An IP address a peer names (a PROXY header, X-Forwarded-For, `for=`)
    as the server reports it, or None when it is not one.

    An IPv6 zone (`fe80::1%eth0`) is refused: `ipaddress` takes any
    characters after the `%` (control characters too, which would reach
    the access log), and a zone names an interface of the sender's host,
    meaningless here. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, what
    a dual-stack proxy reports for an IPv4 client) is reported as the IPv4
    address: Python before 3.13 prints it as `::ffff:102:304`, and the
    client is the IPv4 one either way."""
    if "%" in text:
        return None
    try:
        return reported(ipaddress.ip_address(text))
    except ValueError:
        return None


def reported(ip: _Address) -> str:
    """`ip` as the server reports it: an IPv4-mapped one as its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class TrustedPeers:
    """The parsed `--forwarded-allow-ips`; ValueError names a bad entry."""

    def __init__(self, spec: str | Iterable[str] = "127.0.0.1") -> None:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        self.spec = ",".join(i.strip() for i in items if i.strip())
        self.everyone = False
        self.unix_any = False
        self.unix_paths: set[str] = set()
        self.addresses: set[_Address] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for raw in items:
            item = raw.strip()
            if not item:
                continue
            if item == "*":
                self.everyone = True
            elif item == "unix":
                self.unix_any = True
            elif item.startswith(("unix:", "/", "@")):
                path = item[5:] if item.startswith("unix:") else item
                if not path:
                    raise ValueError(f"{item!r}: a Unix socket entry needs the socket's path (unix:/run/app.sock)")
                self.unix_paths.add(path)
            elif "/" in item:
                try:
                    self.networks.append(ipaddress.ip_network(item))
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not a network ({exc})") from None
            else:
                try:
                    self.addresses.add(ipaddress.ip_address(item))
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not an IP address, a network (10.0.0.0/8), '*', 'unix' or a Unix socket path"
                    ) from None
        self._known: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"TrustedPeers({self.spec!r})"

    def trusts(self, host: str) -> bool:
        """Whether the IP address `host` (text) is trusted; anything else is not."""
        if self.everyone:
            return True
        known = self._known.get(host)
        if known is None:
            known = self._compute(host)
            if len(self._known) >= _CACHE_MAX:
                self._known.clear()
            self._known[host] = known
        return known

    def _compute(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # an IPv4 client on a dual-stack listener
        return any(c in self.addresses or any(c in net for net in self.networks) for c in candidates)

    def trusts_peer(self, peername: Any, sockname: Any = None) -> bool:
        """Whether a connection from `peername` (the transport's) on a
        listener named `sockname` is trusted: by its address for TCP, by
        the listener's path for a Unix socket (whose clients have no address)."""
        if self.everyone:
            return True
        if isinstance(peername, tuple):
            return self.trusts(peername[0])
        if self.unix_any:
            return True
        path = sockname[0] if isinstance(sockname, tuple) else sockname
        if isinstance(path, bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not isinstance(path, str) or not path:
            return False
        if path.startswith("\0"):
            path = "@" + path[1:]  # an abstract name, as --uds spells it
        return path in self.unix_paths


__all__ = ["TrustedPeers", "address_text", "reported"]
