"""TLS in the core: a server configuration (CoreTLS) the C record layer
serves (_native/tls.c), and what the protocol above sees of a connection's
TLS (CoreSSLObject, get_extra_info('ssl_object')).

CoreTLS is what `uringserve run --tls-cert` builds. On UringEventLoop its
connections are TLSTransports (transport_tls.py): the handshake, decryption
and encryption run in C, one call per read completion and per write. On
any other loop, and for `loop.create_server(ssl=ctx)` with an arbitrary
`ssl.SSLContext`, asyncio's SSLProtocol serves `CoreTLS.context` (the same
configuration, built by the stdlib).
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

from ._native import ffi, lib

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_WIRE_VERSION = {"1.2": 0x0303, "1.3": 0x0304}
_TLS_VERSION_ID = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
DEFAULT_ALPN = ("http/1.1",)
TICKET_SECRET_BYTES = 32
TICKET_PERIOD = 3600  # seconds a session-ticket key encrypts (it decrypts one period more)
# TLS 1.3 session tickets a full handshake issues. One: a client resumes
# with it, and each resumption issues a fresh one (tls.c's ticket_cb), so a
# client reconnecting in turn never runs out; OpenSSL's default of two
# only helps a client that opens a second connection before its first
# resumption, and costs every full handshake a second session encrypted
# and sent (about 4% of its instructions: bench/handshake_cost.py)
TICKETS = 1
# --tls-ktls: "auto" hands the send direction's keys to the kernel when it
# has kTLS (probed once per process), "off" never tries. Not for the CLI:
# "try" asks every connection without the probe (the per-connection
# fallback, tested on a kernel without kTLS) and "pretend" switches without
# telling the kernel (the switch's own logic: the client then sees plaintext)
KTLS_MODES = ("auto", "off")
_KTLS_CORE = {"off": lib.US_KTLS_OFF, "auto": lib.US_KTLS_AUTO, "try": lib.US_KTLS_AUTO, "pretend": lib.US_KTLS_PRETEND}


class CoreTLS:
    """A server TLS configuration: certificate chain, key, optional client CA
    (mTLS), TLS 1.2 ciphers, minimum version, ALPN protocols, session
    tickets (`ticket_secret` shared by the workers, rotated each
    `ticket_period` seconds; `tickets` per full TLS 1.3 handshake). Raises
    ssl.SSLError (or OSError for a missing file) naming what is wrong.

    One loop thread per CoreTLS: its connections decrypt into one shared
    scratch buffer (tls.c), copied out before the next read; two loops in two
    threads each need their own CoreTLS."""

    def __init__(
        self,
        cert: str,
        key: str | None = None,
        *,
        ca: str | None = None,
        ciphers: str | None = None,
        min_version: str = "1.2",
        alpn: Sequence[str] = DEFAULT_ALPN,
        more: Sequence[tuple[str, str | None]] = (),
        ticket_secret: bytes | None = None,
        ticket_period: int = TICKET_PERIOD,
        sni_strict: bool = False,
        tickets: int = TICKETS,
        ktls: str = "auto",
    ) -> None:
        if ktls not in _KTLS_CORE:
            raise ValueError(f"kTLS mode {ktls!r}: one of {', '.join(KTLS_MODES)}")
        self.ktls = ktls
        if min_version not in MIN_VERSIONS:
            raise ValueError(f"minimum TLS version {min_version!r}: one of {', '.join(MIN_VERSIONS)}")
        self.cert, self.key, self.ca, self.ciphers, self.min_version = cert, key, ca, ciphers, min_version
        self.alpn = tuple(alpn)
        # certificates besides the first, chosen by the client's SNI name (unknown or none: the first)
        self.more = tuple(more)
        # an unknown SNI name, or none, refused with unrecognized_name instead (nginx's ssl_reject_handshake)
        self.sni_strict = sni_strict
        # session tickets: keys derived per period from one secret, so the
        # workers given the same (the supervisor's) resume each other's clients
        secret = ticket_secret if ticket_secret is not None else os.urandom(TICKET_SECRET_BYTES)
        if len(secret) != TICKET_SECRET_BYTES:
            raise ValueError(f"the ticket secret is {TICKET_SECRET_BYTES} bytes, not {len(secret)}")
        if ticket_period <= 0 or tickets <= 0:
            raise ValueError(f"ticket period {ticket_period}, tickets {tickets}: both positive")
        self._ticket_secret, self._ticket_period = secret, ticket_period
        self.tickets = tickets
        self.context = self._stdlib_context()  # checks the files first, with the stdlib's messages
        # freed with the last holder: this object until a reload replaces
        # it, and every TLSTransport made from it, so it outlives its connections
        self.ptr = self._native_context()
        self.plain = lib.us_tls_plain(self.ptr)

    def _native_context(self) -> Any:
        """The core's configuration (a us_tls_ctx), read from the files now."""
        wire = b"".join(bytes([len(p)]) + p for p in (a.encode() for a in self.alpn))
        named = (self.cert, self.key, self.ca)
        keep = [ffi.new("char[]", os.fsencode(p)) if p is not None else ffi.NULL for p in named]
        keep.append(ffi.new("char[]", self.ciphers.encode()) if self.ciphers else ffi.NULL)
        alpn_buf = ffi.new("unsigned char[]", wire) if wire else ffi.NULL
        conf = ffi.new(
            "struct us_tls_conf *",
            {
                "cert": keep[0],
                "key": keep[1],
                "ca": keep[2],
                "ciphers": keep[3],
                "min_version": _WIRE_VERSION[self.min_version],
                "alpn": alpn_buf,
                "alpn_len": len(wire),
            },
        )
        err = ffi.new("char[256]")
        raw = lib.us_tls_ctx_new(conf, err, 256)
        if raw == ffi.NULL:
            raise ssl.SSLError(f"TLS configuration: {ffi.string(err).decode(errors='replace')}")
        ptr = ffi.gc(raw, lib.us_tls_ctx_free)
        for more_cert, more_key in self.more:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(more_cert, more_key)  # the messages
            paths = [ffi.new("char[]", os.fsencode(more_cert)), ffi.new("char[]", os.fsencode(more_key or more_cert))]
            conf.cert, conf.key = paths
            if lib.us_tls_ctx_add(ptr, conf, err, 256) < 0:
                raise ssl.SSLError(f"TLS certificate {more_cert}: {ffi.string(err).decode(errors='replace')}")
        lib.us_tls_ctx_tickets(ptr, self._ticket_secret, self._ticket_period, self.tickets)
        lib.us_tls_ctx_sni_strict(ptr, self.sni_strict)
        lib.us_tls_ctx_ktls(ptr, _KTLS_CORE[self.ktls] if self.ktls_usable()[0] else lib.US_KTLS_OFF)
        return ptr

    def ktls_usable(self) -> tuple[bool, str]:
        """(whether connections try kTLS, why not): "auto" asks the kernel
        once per process (ktls.probe), so a kernel without it costs a
        connection nothing."""
        if self.ktls == "off":
            return False, "--tls-ktls off"
        if self.ktls == "auto":
            return ktls_probe()
        return True, ""

    def reload(self) -> None:
        """Read the certificate, key and CA files again: the connections
        accepted from now on are served from them, those open keep theirs.
        On any error (a missing file, a key that does not match) nothing
        changes and CertificateReloadError says which file and why. The
        ticket secret stays, so sessions still resume."""
        for cert, key in ((self.cert, self.key), *self.more):
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            except (OSError, ssl.SSLError) as exc:
                raise CertificateReloadError(f"{cert}{f' with key {key}' if key else ''}: {_reason(exc)}") from None
        try:
            fresh = self._stdlib_context()
            ptr = self._native_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CertificateReloadError(f"{self.cert}: {_reason(exc)}") from None
        # the stdlib context in place: asyncio's servers (the other loops)
        # hold this object; its SSL objects already made keep their certificate
        ctx = self.context
        try:
            ctx.load_cert_chain(self.cert, self.key)
            if self.ca:  # added to the store: a CA dropped from the file stays trusted here until a restart
                ctx.load_verify_locations(self.ca)
        except (OSError, ssl.SSLError) as exc:  # the files changed again meanwhile
            raise CertificateReloadError(f"{self.cert}: {_reason(exc)}") from None
        _SERVED[ctx] = _SERVED[fresh]
        if fresh.sni_callback is not None:  # its other certificates' contexts are the fresh ones
            ctx.sni_callback = fresh.sni_callback
        self.ptr, self.plain = ptr, lib.us_tls_plain(ptr)

    def _stdlib_context(self) -> ssl.SSLContext:
        """The same configuration as an ssl.SSLContext: asyncio's SSLProtocol
        serves it where the core cannot (another loop), and it is the
        connection's 'sslcontext'."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        _SERVED[ctx] = _first_cert_der(self.cert)
        ctx.minimum_version = MIN_VERSIONS[self.min_version]
        # the core's list when none is given: the stdlib's own server default takes SHA-1 CBC suites
        ctx.set_ciphers(self.ciphers or ffi.string(lib.us_tls_default_ciphers()).decode())
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        if self.more or self.sni_strict:  # the same choice by SNI name for asyncio's SSLProtocol
            by_name: list[tuple[tuple[str, ...], ssl.SSLContext | None]] = [(_names(self.cert), None)]
            by_name += [(_names(c), _context_like(ctx, c, k)) for c, k in self.more]
            ctx.sni_callback = _sni_chooser(by_name, self.sni_strict)
        if self.ca:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        if self.tickets > 0:  # checked with the core's configuration, after this
            ctx.num_tickets = self.tickets
        return ctx

    def __repr__(self) -> str:
        return f"<CoreTLS cert={self.cert!r} ca={self.ca!r} min={self.min_version}>"


class CertificateReloadError(Exception):
    """CoreTLS.reload() found a file it cannot serve: the old certificates stay."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    if isinstance(exc, ssl.SSLError):
        return f"not a PEM certificate chain with its private key ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _context_like(base: ssl.SSLContext, cert: str, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    _SERVED[ctx] = _first_cert_der(cert)
    ctx.minimum_version = base.minimum_version
    return ctx


def _names(cert: str) -> tuple[str, ...]:
    """The DNS names a PEM certificate is for (its subjectAltName)."""
    decoded = _decode_cert(_first_cert_der(cert))
    return tuple(v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS")


def _sni_chooser(by_name: list[tuple[tuple[str, ...], ssl.SSLContext | None]], strict: bool = False) -> Any:
    """ssl's sni_callback choosing as the core does: the first certificate
    whose DNS names match (the default's first; None: keep the default).
    An unknown name, or none: the default, or with `strict` the handshake
    refused with unrecognized_name."""
    refuse = ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if strict else None

    def choose(obj: Any, name: str | None, _ctx: Any) -> int | None:
        if name is None:
            return refuse
        name = name.lower()
        for names, ctx in by_name:
            if any(_matches(n, name) for n in names):
                if ctx is not None:
                    obj.context = ctx
                return None
        return refuse

    return choose


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("*."):  # one leftmost label
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


@functools.cache
def ktls_probe() -> tuple[bool, str]:
    """ktls.probe(), once per process."""
    from . import ktls

    return ktls.probe()


def openssl_version() -> str:
    """The OpenSSL the core links (the interpreter's ssl module's own)."""
    return ffi.string(lib.us_tls_openssl_version()).decode()


class CoreSSLObject:
    """get_extra_info('ssl_object') of a core TLS connection: the parts of
    ssl.SSLObject a server's users read (version, cipher, ALPN, the peer's
    certificate). Answers None once the connection is gone."""

    __slots__ = ("_transport", "context")
    server_side = True
    server_hostname = None

    def __init__(self, transport: Any, context: ssl.SSLContext) -> None:
        self._transport = transport
        self.context = context

    def _tls(self) -> Any:
        return self._transport.tls_handle

    def version(self) -> str | None:
        t = self._tls()
        if t is None:
            return None
        v = lib.us_tls_version(t)
        return ffi.string(v).decode() if v != ffi.NULL else None

    def cipher(self) -> tuple[str, str, int] | None:
        t = self._tls()
        if t is None:
            return None
        proto = ffi.new("const char **")
        bits = ffi.new("int *")
        name = lib.us_tls_cipher(t, proto, bits)
        if name == ffi.NULL:
            return None
        return ffi.string(name).decode(), ffi.string(proto[0]).decode(), bits[0]

    def selected_alpn_protocol(self) -> str | None:
        t = self._tls()
        if t is None:
            return None
        out = ffi.new("const unsigned char **")
        n = lib.us_tls_alpn(t, out)
        return bytes(ffi.buffer(out[0], n)).decode("ascii", "replace") if n else None

    def compression(self) -> None:
        return None  # refused (SSL_OP_NO_COMPRESSION)

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The client's certificate (mTLS): DER with binary_form, else the
        stdlib's dict (empty when no certificate was asked for, as CPython's)."""
        der = peer_cert_der(self._tls())
        if binary_form:
            return der
        if der is None:
            return {} if self.context.verify_mode == ssl.CERT_NONE else None
        return _decode_cert(der)

    def cipher_id(self) -> int | None:
        """The suite's IANA number (0x1301 for TLS_AES_128_GCM_SHA256), as ASGI's TLS extension gives it."""
        t = self._tls()
        n = lib.us_tls_cipher_id(t) if t is not None else -1
        return n if n >= 0 else None

    def server_cert_der(self) -> bytes | None:
        """The certificate this server showed (the one the SNI name chose), DER."""
        return _cert_der(self._tls(), -1)

    def peer_chain_der(self) -> list[bytes]:
        """The certificates the client sent, its own first, DER (mTLS)."""
        chain: list[bytes] = []
        while (der := _cert_der(self._tls(), len(chain))) is not None:
            chain.append(der)
        return chain

    def tls_version_id(self) -> int | None:
        """The version as the ASGI TLS extension gives it (0x0304 for TLS 1.3)."""
        return _TLS_VERSION_ID.get(self.version() or "")


def peer_cert_der(t: Any) -> bytes | None:
    if t is None:
        return None
    n = lib.us_tls_peer_cert(t, ffi.NULL, 0)
    if n <= 0:
        return None
    buf = ffi.new("unsigned char[]", n)
    n = lib.us_tls_peer_cert(t, buf, n)
    return bytes(ffi.buffer(buf, n)) if n > 0 else None


def _cert_der(t: Any, which: int) -> bytes | None:
    """us_tls_cert's certificate `which` (-1 the server's, 0.. the client's chain), None when there is none."""
    if t is None:
        return None
    n = lib.us_tls_cert(t, which, ffi.NULL, 0)
    if n <= 0:
        return None
    buf = ffi.new("unsigned char[]", n)
    n = lib.us_tls_cert(t, which, buf, n)
    return bytes(ffi.buffer(buf, n)) if n > 0 else None


# -- what ASGI's TLS extension reads, from a core connection or from asyncio's SSLObject --------------
# the certificate each stdlib context of a CoreTLS serves (DER): ssl.SSLContext cannot say it
_SERVED: weakref.WeakKeyDictionary[ssl.SSLContext, bytes] = weakref.WeakKeyDictionary()


def server_cert_der(obj: Any) -> bytes | None:
    """The certificate the server showed on this connection, DER; None
    for an SSLObject of a context that is not a CoreTLS's."""
    if isinstance(obj, CoreSSLObject):
        return obj.server_cert_der()
    return _SERVED.get(obj.context)


def peer_chain_der(obj: Any) -> list[bytes]:
    """The certificates the client sent, its own first, DER. asyncio's
    SSLObject tells the whole chain from Python 3.13 (get_unverified_chain);
    before, only the client's own certificate."""
    if isinstance(obj, CoreSSLObject):
        return obj.peer_chain_der()
    if hasattr(obj, "get_unverified_chain"):
        chain = obj.get_unverified_chain() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    der = obj.getpeercert(binary_form=True)
    return [der] if der else []


def cipher_id(obj: Any) -> int | None:
    """The suite's IANA number (0x1301) of a core connection or of an SSLObject."""
    if isinstance(obj, CoreSSLObject):
        return obj.cipher_id()
    current = obj.cipher()
    if current is None:
        return None
    # the stdlib names the suite only; its context lists each one's id (OpenSSL's: 0x0300 and the IANA pair)
    return next((c["id"] & 0xFFFF for c in obj.context.get_ciphers() if c["name"] == current[0]), None)


def _first_cert_der(path: str) -> bytes:
    with open(path) as f:
        pem = f.read()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:end])


def _decode_cert(der: bytes) -> dict[str, Any]:
    # the stdlib's own decoder reads only a file: asked for rarely (not per
    # request), so a temporary file rather than a parser of our own
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(ssl.DER_cert_to_PEM_cert(der))
        f.flush()
        return ssl._ssl._test_decode_cert(f.name)  # type: ignore[attr-defined]


def tls_error(t: Any) -> ssl.SSLError:
    """The exception a failed core TLS connection ends with: OpenSSL's
    reason, and the alert number when one was sent or received."""
    buf = ffi.new("char[256]")
    alert = lib.us_tls_error(t, buf, 256)
    reason = ffi.string(buf).decode(errors="replace")
    exc = ssl.SSLError(1, f"[SSL] {reason}" + (f" (alert {alert})" if alert else ""))
    exc.reason = reason.upper().replace(" ", "_")
    return exc


__all__ = ["CoreTLS", "CertificateReloadError", "CoreSSLObject", "openssl_version", "DEFAULT_ALPN", "MIN_VERSIONS"]
