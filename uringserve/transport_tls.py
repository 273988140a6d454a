"""TLSTransport: a UringTransport whose bytes are TLS records, decrypted and
encrypted by the core (_native/tls.c), not by asyncio's SSLProtocol.

Read: the loop hands `receive` an offset range of the ring's data region
(`receive_from` is a `range`, so the loop's slice costs no copy); one call
into C feeds that ciphertext to OpenSSL straight from the provided buffer,
runs the handshake or decrypts every whole record, and leaves the plaintext
in the configuration's scratch, which becomes one `bytes` for the protocol:
one Python call per read completion, none per record.

Write: `write()` is UringTransport's, with the core's raw send replaced by
us_tls_send (encrypt into the send arena; what the arena cannot take waits
in `_pending` as plaintext and is offered again after US_EV_ARENA, as a plain
write waits). Writes before the handshake is done wait the same way and are
flushed when it is.

kTLS (send direction, ktls.c): when the configuration asks for it, the
connection decides once, after the handshake and once the handshake's
records have left the arena (before that, writes wait in `_pending`, woken
by EV_WRITABLE at an empty queue), whether the kernel takes its write keys.
Then us_tls_send queues plaintext as a plain write (the kernel makes the
records); otherwise it stays on OpenSSL's path for good.

Files: write_file() (static files, ASGI zerocopysend/pathsend, WSGI's
file_wrapper, loop.sendfile()) queues the range in the core as over plain
HTTP; the ring reads it into the send arena and, at each read's completion,
the core encrypts that plaintext into records queued before the rest of the
file and frees the chunk (send.c's on_tls_fread): no byte of the file
passes through Python. Writes made while a file is queued wait here until
its last record is made (the core refuses them, then wakes them with
US_EV_ARENA), and so does close_notify (in the core). Before the handshake
is done a range waits with the writes made then.

Close: close() queues close_notify before the slot's graceful close; the
peer's close_notify, or a FIN (a cut record included), is eof_received();
a protocol error (an alert queued, sent before the close) is
connection_lost(ssl.SSLError). The SSL object is freed when the core reports
the slot closed (`_slot_closed`), counted in the ring's stats (tls_live).
"""

from __future__ import annotations

import asyncio
import errno
from asyncio import constants
from typing import Any

from ._native import ffi, lib
from .ring import DECLINE_NEVER
from .tls import CoreSSLObject, CoreTLS, peer_cert_der, tls_error
from .transport import UringTransport
from .transport_base import TransportLoop
from .transport_reading import discard
from .transport_writing import _FILE_SEGMENT_MAX, _file_range

_AGAIN = lib.US_TLS_AGAIN
_EOF = lib.US_TLS_EOF
_FAIL = lib.US_TLS_FAIL
_WANT_WRITE = lib.US_TLS_WANT_WRITE
_NEVER_IN_PLACE = 1 << 62  # ciphertext is copied into the arena by the core: no write is sent in place
_recv = lib.us_tls_recv
_unpack = ffi.unpack


class TLSTransport(UringTransport):
    """One TLS connection served by the core (see the module's docstring)."""

    __slots__ = ("_tls", "_tls_conf", "_span", "_plain", "_ktls_undecided", "_ktls_owed")
    # loop.sendfile(): the core's TLS file path (sendfile() below), asyncio's read-and-write where it cannot
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = False

    def bulk_memory(self) -> Any:
        """Never bulk: the ciphertext is decrypted by the core from the ring's buffers."""
        return DECLINE_NEVER

    def __init__(
        self,
        loop: TransportLoop,
        slot: int,
        gen: int,
        protocol: asyncio.BaseProtocol,
        peer: bytes,
        listener_sock: Any,
        server: Any,
        conf: CoreTLS,
    ) -> None:
        ring = loop.ring
        tls = lib.us_tls_new(conf.ptr, ring.handle, slot, gen)
        if tls == ffi.NULL:
            raise MemoryError("no memory for a TLS connection")
        self._tls = tls
        # the native configuration this SSL object was made from, kept alive
        # while the connection is: CoreTLS.reload() replaces conf.ptr
        self._tls_conf = conf.ptr
        self._span = range(len(ring.data_bytes))
        self._plain = conf.plain
        self._ktls_undecided = lib.us_tls_ktls_status(tls, ffi.NULL) == lib.US_KTLS_WANT
        self._ktls_owed = False  # on kTLS, close_notify waits for the bytes before it
        super().__init__(loop, slot, gen, protocol, peer, listener_sock, server)
        self._raw_send = lib.us_tls_send
        self._handle = tls
        self._inplace_min = _NEVER_IN_PLACE
        self._extra_cache["sslcontext"] = conf.context
        self._extra_cache["ssl_object"] = CoreSSLObject(self, conf.context)

    def _update_receiver(self) -> None:
        if self._closing:
            self.receive, self.receive_from = discard, self._ring.data_view
        else:
            self.receive, self.receive_from = self._on_records, self._span

    def _on_records(self, span: range) -> None:
        """`receive`: ciphertext at span in the ring's data region."""
        ret = _recv(self._tls, span.start, span.stop - span.start)
        if self._ktls_undecided and lib.us_tls_ready(self._tls):
            self._ktls_decide()  # before the protocol hears of the first data (and writes)
        while ret >= 0:
            if ret < _AGAIN:
                if ret:
                    self._on_data(_unpack(self._plain, ret))
                break
            if ret > _AGAIN:
                self._on_data(_unpack(self._plain, ret - _AGAIN))
            if self._tls is None:
                return
            ret = _recv(self._tls, 0, 0)
        else:
            self._tls_status(ret)
            return
        if self._pending and not self._closing and not self._ktls_undecided and lib.us_tls_ready(self._tls):
            # writes made before the handshake was done
            self._loop.arena_waits.discard(self._slot)
            self._flush_pending()

    def _ktls_decide(self) -> None:
        """Whether the kernel takes this connection's write keys (ktls.c),
        once the handshake's records have been sent."""
        if lib.us_tls_ktls_start(self._tls) == -errno.EAGAIN:
            self._ring.notify_below(self._slot, self._gen, 0)  # on_writable asks again
            return
        self._ktls_undecided = False
        if self._closing and lib.us_tls_ktls_status(self._tls, ffi.NULL) == lib.US_KTLS_ON:
            self._ktls_owed = True  # closed while undecided: close_notify after what waits

    def _ktls_close_notify(self) -> None:
        """On kTLS: close_notify as the kernel's alert record, once every
        byte queued before it is sent (the core's graceful close waits for
        EV_WRITABLE, asked for here, and closes after it)."""
        if self._pending or self._tls is None:
            self._ring.notify_below(self._slot, self._gen, 0)
            return
        if lib.us_tls_ktls_close_notify(self._tls) == -errno.EAGAIN:
            self._ring.notify_below(self._slot, self._gen, 0)
            return
        self._ktls_owed = False  # sent, or it cannot be (the connection ends with the FIN)

    def _maybe_resume_protocol(self) -> None:
        # on_writable's first step (the loop calls UringTransport's on_writable)
        if self._ktls_owed:
            self._ktls_close_notify()
        if self._ktls_undecided and self._tls is not None and (self._pending or not self._closing):
            if lib.us_tls_ready(self._tls):
                self._ktls_decide()
            if not self._ktls_undecided and self._pending:
                self._loop.arena_waits.discard(self._slot)
                self._flush_pending()
        super()._maybe_resume_protocol()

    def _tls_status(self, ret: int) -> None:
        if self._closing:
            return
        if ret == _EOF:  # close_notify: a clean end, as a FIN
            self.on_eof(0, self._gen)
        elif ret == _WANT_WRITE:  # the handshake's flight waits for the arena
            self._loop.arena_waits.add(self._slot, self._resume_handshake)
        elif ret == _FAIL:
            # the alert OpenSSL queued leaves before the close (a graceful one)
            self._exc = tls_error(self._tls)
            self.close()
        else:
            self._fatal_error(OSError(-ret, f"TLS receive: {errno.errorcode.get(-ret, ret)}"), "TLS receive failed")

    def _resume_handshake(self) -> None:
        if self._tls is not None and not self._closing:
            self._on_records(range(0))

    def _send_copy(self, data: Any) -> int:
        if self._tls is None:
            return -errno.EPIPE
        buf = ffi.from_buffer(data)
        n = lib.us_tls_send(self._tls, self._slot, self._gen, buf, len(buf))
        if n == -errno.EPROTO:
            self._exc = tls_error(self._tls)
        return n

    def write_file(self, fd: int, offset: int, count: int, *, fixed: bool = False, owner: Any = None) -> int:
        """UringTransport.write_file(): the core encrypts the file as the ring
        reads it (see the module's docstring). 0 where the core cannot (no
        segment free, an arena of one chunk): then write the bytes."""
        cfg = self._ring.config
        if cfg.arena_bytes // cfg.chunk_size < 2:  # type: ignore[operator]  # validated: an int
            return 0  # a plaintext chunk and one for its records
        tls = self._tls
        if tls is not None and count > 0 and not self._pending and not self._closing and not lib.us_tls_ready(tls):
            # before the handshake: waits with the writes made then, flushed when it is done
            return self._pend_file(fd, fixed, offset, min(count, _FILE_SEGMENT_MAX), fd if owner is None else owner)
        return super().write_file(fd, offset, count, fixed=fixed, owner=owner)

    async def sendfile(self, file: Any, offset: int, count: int | None) -> int:
        """loop.sendfile() through the core's TLS file path. As
        UringTransport's, but counted in plaintext queued (the kernel's count
        is of ciphertext); asyncio's fallback (read and write()) where the
        core cannot take the file."""
        fileno, left = _file_range(file, offset, count)
        if not left:
            return 0
        resume_reading = self.is_reading()
        self.pause_reading()
        sent = 0
        try:
            await self._wait_empty()
            self._set_sendfile_active(True)  # write() refuses until done
            while sent < left:
                if self.is_closing():
                    raise ConnectionError("the transport closed during sendfile()")
                n = self.write_file(fileno, offset + sent, left - sent, owner=file)
                if not n:
                    if not sent:
                        raise asyncio.SendfileNotAvailableError("the core cannot take the file now")
                    await self._segment_freed()
                    continue
                await self._wait_empty()  # what is queued is sent: the range is the peer's
                sent += n
        finally:
            self._set_sendfile_active(False)
            if resume_reading:
                self.resume_reading()
            file.seek(offset + sent)
        return sent

    async def _segment_freed(self) -> None:
        """Until the core frees a segment (US_EV_ARENA) or the connection goes."""
        freed = self._loop.create_future()

        def wake() -> None:
            if not freed.done():
                freed.set_result(None)

        self._loop.arena_waits.add(self._slot, wake)
        try:
            await asyncio.wait_for(freed, 1.0)  # a bound only: the event comes when any segment frees
        except TimeoutError:
            pass

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close (asyncio's SSL transport says the same)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot write EOF; close() sends close_notify")

    def write_close_notify(self) -> bool:
        """TLS's own half-close (RFC 8446 6.1), for a server that closes while
        the client may still be sending (HTTP's lingering close): close_notify
        after everything written, then the TCP FIN; what the client sends
        after is still read. False where it cannot be done (the handshake not
        finished, or the kernel sending: kTLS): close() or a wait instead.
        Not write_eof(), whose contract over TLS (asyncio's) is to refuse."""
        tls = self._tls
        if self._closing or self._eof_written or tls is None or not lib.us_tls_ready(tls) or self._ktls_undecided:
            return False
        if lib.us_tls_ktls_status(tls, ffi.NULL) == lib.US_KTLS_ON:
            return False
        UringTransport.write_eof(self)  # its FIN goes through _shutdown_write: close_notify first
        return True

    def _shutdown_write(self) -> None:
        if self._tls is not None:
            lib.us_tls_close_notify(self._tls)
        super()._shutdown_write()

    def close(self) -> None:
        if not self._closing and self._tls is not None:
            if not lib.us_tls_ready(self._tls):
                # plaintext written for a peer that never finished its
                # handshake (a 408 at the header timeout) can never be sent:
                # dropped, or the close would wait for it forever
                self._drop_pending()
                self._loop.arena_waits.discard(self._slot)
            elif lib.us_tls_ktls_status(self._tls, ffi.NULL) == lib.US_KTLS_ON:
                self._ktls_owed = True
                self._ktls_close_notify()
            elif not self._pending:
                lib.us_tls_close_notify(self._tls)
        super().close()

    def _last_words(self) -> None:
        # close() came while writes waited (behind a file or a full arena): its close_notify after them
        if self._tls is not None and lib.us_tls_ready(self._tls):
            lib.us_tls_close_notify(self._tls)

    def _slot_closed(self) -> None:
        tls, self._tls = self._tls, None
        self._write_fast = False  # the raw send's handle goes with it
        self._conn_lost += 1
        if tls is not None:
            lib.us_tls_free(tls)

    def loop_closing(self) -> None:
        super().loop_closing()
        self._slot_closed()

    @property
    def tls_handle(self) -> Any:
        """The connection's SSL object in the core (a cffi pointer), None once the slot is closed."""
        return self._tls

    def peer_cert_der(self) -> bytes | None:
        """The client's certificate, DER (mTLS), or None."""
        return peer_cert_der(self._tls)

    def __repr__(self) -> str:
        return "<TLSTransport" + super().__repr__()[len("<UringTransport") :]
