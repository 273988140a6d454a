"""A TLS client for test_ktls.py, run in its own process so that an
OPENSSL_CONF can choose TLS 1.3's suite (Python's ssl cannot): it sends a
request, reads `want` bytes of plaintext, and prints as JSON every byte the
server sent (the records, for the test to decrypt), the plaintext, the
version and suite, and how the connection ended.

usage: ktls_client.py PORT CAFILE VERSION(1.2|1.3) CIPHERS WANT [resume]
(resume: a first connection, then the one reported, resuming its session)"""

from __future__ import annotations

import json
import socket
import ssl
import sys


def main() -> None:
    port, cafile, version, ciphers, want = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    ctx = ssl.create_default_context(cafile=cafile)
    v = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = v
    if version == "1.2":
        ctx.set_ciphers(ciphers)
    session = None
    if sys.argv[6:] == ["resume"]:
        session = connect(ctx, int(port), want, None)["session"]
    got = connect(ctx, int(port), want, session)
    del got["session"]
    print(json.dumps(got))


def connect(ctx: ssl.SSLContext, port: int, want: int, session: ssl.SSLSession | None) -> dict:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1", session=session)
    raw = bytearray()

    def pull() -> bool:
        data = sock.recv(65536)
        raw.extend(data)
        inc.write(data) if data else inc.write_eof()
        return bool(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                sock.sendall(out.read())
            if not pull():
                raise SystemExit("closed during the handshake") from None
    obj.write(b"GO")
    sock.sendall(out.read())
    plain = bytearray()
    ending = "open"
    while len(plain) < want:
        try:
            plain.extend(obj.read(65536))
        except ssl.SSLWantReadError:
            if not pull():
                ending = "eof"
                break
        except ssl.SSLError as exc:
            ending = f"error: {exc.reason}"
            break
    sock.close()
    return {
        "raw": raw.hex(),
        "plain": plain.hex(),
        "version": obj.version(),
        "cipher": obj.cipher()[0],
        "ending": ending,
        "resumed": obj.session_reused,
        "session": obj.session,
    }


if __name__ == "__main__":
    main()
