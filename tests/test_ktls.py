"""kTLS, send direction (_native/ktls.c): the write keys, IV and record
sequence number the core would hand the kernel after the handshake, the
switch itself, and the fallback to OpenSSL's path.

This kernel has no CONFIG_TLS, so the kernel never encrypts here. What is
proven instead: the keys the core derives (from the keylog's TLS 1.3
traffic secret, from TLS 1.2's master secret) and the sequence number it
counts decrypt, byte for byte, the records OpenSSL sent under those keys,
for each suite the kernel takes and both versions; a connection whose
kernel refuses the "tls" ULP keeps working on OpenSSL's path and is counted;
"off" never tries; and in the test-only "pretend" mode (the switch made
without telling the kernel) what follows the handshake leaves as plaintext,
after every handshake record, as the kernel would be handed it."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, TLSFiles, make_tls_files
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from uringserve import diagnose, ktls
from uringserve._native import ffi, lib
from uringserve.tls import CoreTLS

HERE = Path(__file__).resolve().parent
RESPONSE = os.urandom(100) + os.urandom(20000) + os.urandom(5)  # three writes, the second two records
SUITES = {  # (version, OpenSSL suite name for the client, the kernel's TLS_CIPHER_*)
    "1.3-aes128": ("1.3", "TLS_AES_128_GCM_SHA256", 51),
    "1.3-aes256": ("1.3", "TLS_AES_256_GCM_SHA384", 52),
    "1.3-chacha": ("1.3", "TLS_CHACHA20_POLY1305_SHA256", 54),
    "1.2-aes128": ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", 51),
    "1.2-aes256": ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", 52),
    "1.2-chacha": ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", 54),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


class Responder(asyncio.Protocol):
    """Answers the client's first bytes with RESPONSE in three writes, then
    keeps the connection's kTLS outcome (status, errno, keys) once decided."""

    made: list[Responder] = []
    close_after = False  # close once the response is written (set on the class, before the client connects)

    def __init__(self) -> None:
        self.transport: Any = None
        self.status_at_data = -1
        self.outcome: asyncio.Future[tuple[int, int, Any]] = asyncio.get_running_loop().create_future()
        Responder.made.append(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.status_at_data = lib.us_tls_ktls_status(self.transport.tls_handle, ffi.NULL)
        for i, j in ((0, 100), (100, 20100), (20100, len(RESPONSE))):
            self.transport.write(RESPONSE[i:j])
        asyncio.get_running_loop().create_task(self._outcome())
        if self.close_after:
            self.transport.close()

    async def _outcome(self) -> None:
        # looked at every loop iteration: the decision comes in the one that
        # flushes the response, the connection's end (its SSL object freed) later
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        err = ffi.new("int *")
        keys = ffi.new("struct us_ktls_keys *")
        while (t := self.transport.tls_handle) is not None and loop.time() < deadline:
            status = lib.us_tls_ktls_status(t, err)
            if status != lib.US_KTLS_WANT:
                got = lib.us_tls_ktls_keys(t, keys)
                self.outcome.set_result((status, err[0], keys if got == 0 else None))
                return
            await asyncio.sleep(0)
        self.outcome.set_result((-1, 0, None))  # closed (or never decided) before it was seen


def ktls_stats(h: Any) -> tuple[int, int]:
    s = h.loop.ring_stats()
    return s["ktls_tx"], s["ktls_fallback"]


def run_client(port: int, files: TLSFiles, version: str, suite: str, tmp: Path, *more: str) -> dict[str, Any]:
    env = dict(os.environ)
    if version == "1.3":  # Python's ssl cannot choose TLS 1.3's suite; OpenSSL's configuration can
        conf = tmp / "openssl.cnf"
        conf.write_text(
            "openssl_conf = init\n[init]\nssl_conf = ssl_sect\n[ssl_sect]\nsystem_default = sys\n"
            f"[sys]\nCiphersuites = {suite}\n"
        )
        env["OPENSSL_CONF"] = str(conf)
    cmd = [PY, str(HERE / "ktls_client.py"), str(port), str(files.cacert), version, suite, str(len(RESPONSE)), *more]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def records(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of each whole record in `raw`."""
    out, i = [], 0
    while i + 5 <= len(raw):
        n = int.from_bytes(raw[i + 3 : i + 5], "big")
        out.append((raw[i : i + 5], raw[i + 5 : i + 5 + n]))
        i += 5 + n
    assert i == len(raw), "the server's bytes end mid-record"
    return out


def aead(keys: Any) -> Any:
    key = bytes(ffi.buffer(keys.key, keys.key_len))
    return ChaCha20Poly1305(key) if keys.cipher == 54 else AESGCM(key)


def open_13(keys: Any, seq: int, header: bytes, body: bytes) -> tuple[int, bytes] | None:
    """A TLS 1.3 record under the keys at `seq`: (inner type, content), None if it is not theirs."""
    iv = bytes(ffi.buffer(keys.iv, 12))
    nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
    try:
        inner = aead(keys).decrypt(nonce, body, header)
    except Exception:
        return None
    inner = inner.rstrip(b"\0")
    return inner[-1], inner[:-1]


def open_12(keys: Any, seq: int, header: bytes, body: bytes) -> bytes | None:
    """A TLS 1.2 AEAD record under the keys at `seq` (RFC 5288, RFC 7905), None if it is not theirs."""
    if keys.cipher == 54:
        iv = bytes(ffi.buffer(keys.iv, 12))
        nonce, ct = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True)), body
    else:
        nonce, ct = bytes(ffi.buffer(keys.iv, 4)) + body[:8], body[8:]
    aad = seq.to_bytes(8, "big") + header[:3] + (len(ct) - 16).to_bytes(2, "big")
    try:
        return aead(keys).decrypt(nonce, ct, aad)
    except Exception:
        return None


def check_keys_decrypt(raw: bytes, keys: Any, version: str) -> None:
    """Every record the server sent under its application write keys
    decrypts with the derived key and IV at the sequence numbers counted
    from 0, and the first carrying application data is at keys.seq."""
    recs = records(raw)
    if version == "1.3":
        # the records before are under the handshake keys: the first that opens at 0 starts the run
        start = next(i for i, (hd, body) in enumerate(recs) if hd[0] == 23 and open_13(keys, 0, hd, body))
        opened = [open_13(keys, seq, hd, body) for seq, (hd, body) in enumerate(recs[start:])]
        assert all(o is not None for o in opened), "a record after the first does not open at its number"
        kinds = [o[0] for o in opened]  # type: ignore[index]
        first_data = kinds.index(23)
        assert first_data == keys.seq, (kinds, keys.seq)
        assert all(k == 22 for k in kinds[:first_data])  # NewSessionTickets
        assert b"".join(o[1] for o in opened if o[0] == 23) == RESPONSE  # type: ignore[index]
    else:
        ccs = next(i for i, (hd, _) in enumerate(recs) if hd[0] == 20)
        after = recs[ccs + 1 :]
        opened = [open_12(keys, seq, hd, body) for seq, (hd, body) in enumerate(after)]
        assert all(o is not None for o in opened), "a record after the ChangeCipherSpec does not open at its number"
        assert after[0][0][0] == 22 and opened[0][0] == 20  # type: ignore[index]  # the Finished, at 0
        first_data = next(i for i, (hd, _) in enumerate(after) if hd[0] == 23)
        assert first_data == keys.seq == 1
        assert b"".join(o for (hd, _), o in zip(after, opened, strict=True) if hd[0] == 23) == RESPONSE  # type: ignore[misc]


@pytest.mark.parametrize("suite", list(SUITES))
def test_derived_keys_and_sequence_decrypt_what_the_server_sent(h, files, suite, tmp_path) -> None:
    """Mode "try" (auto without the process-wide probe): each connection
    asks the kernel; here it refuses the ULP (ENOENT), the connection goes
    on with OpenSSL and is counted, and the keys derived for the kernel
    open OpenSSL's records byte-exactly."""
    if not h.uring:
        pytest.skip("kTLS is the core's (the ring's TLSTransport)")
    version, name, cipher = SUITES[suite]
    conf = CoreTLS(str(files.cert), str(files.key), ktls="try")

    async def main() -> None:
        Responder.made = []
        server = await h.loop.create_server(Responder, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        before = ktls_stats(h)
        got = await asyncio.to_thread(run_client, port, files, version, name, tmp_path)
        status, err, keys = await Responder.made[0].outcome
        assert bytes.fromhex(got["plain"]) == RESPONSE
        assert got["cipher"] == name and got["version"] == f"TLSv{version}"
        assert keys is not None, (status, err)
        assert keys.cipher == cipher and keys.version == (0x0304 if version == "1.3" else 0x0303)
        check_keys_decrypt(bytes.fromhex(got["raw"]), keys, version)
        available, _ = ktls.probe()
        if available:  # the kernel took them (and made the records the test opened)
            assert (status, ktls_stats(h)) == (lib.US_KTLS_ON, (before[0] + 1, before[1]))
        else:
            assert (status, err) == (lib.US_KTLS_FALLBACK, errno.ENOENT)
            assert ktls_stats(h) == (before[0], before[1] + 1)
        server.close()
        await server.wait_closed()

    h.run(main())


def test_with_regular_fds_the_socket_option_is_a_plain_setsockopt(files, tmp_path) -> None:
    """Slots as regular fds (the ablation, fixed_files off): the same
    decision through setsockopt(2) on the connection's fd."""
    from conftest import LoopHarness

    from uringserve.loop import UringEventLoop
    from uringserve.ring import RingConfig

    h = LoopHarness("uring", UringEventLoop(RingConfig(fixed_files=False)))
    conf = CoreTLS(str(files.cert), str(files.key), ktls="try")

    async def main() -> None:
        Responder.made = []
        server = await h.loop.create_server(Responder, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        got = await asyncio.to_thread(run_client, port, files, "1.3", "TLS_AES_128_GCM_SHA256", tmp_path)
        assert bytes.fromhex(got["plain"]) == RESPONSE
        status, err, keys = await Responder.made[0].outcome
        check_keys_decrypt(bytes.fromhex(got["raw"]), keys, "1.3")
        if not ktls.probe()[0]:
            assert (status, err) == (lib.US_KTLS_FALLBACK, errno.ENOENT)
        server.close()
        await server.wait_closed()

    try:
        h.run(main())
    finally:
        h.loop.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_resumed_session_derives_keys_that_decrypt_too(h, files, version, tmp_path) -> None:
    """An abbreviated handshake (a session ticket): TLS 1.2's server sends
    its ChangeCipherSpec and Finished first, TLS 1.3's secret comes from the
    PSK; the keys and the record number are still exact."""
    if not h.uring:
        pytest.skip("kTLS is the core's")
    name = {"1.2": "ECDHE-ECDSA-AES128-GCM-SHA256", "1.3": "TLS_AES_128_GCM_SHA256"}[version]
    conf = CoreTLS(str(files.cert), str(files.key), ktls="try")

    async def main() -> None:
        Responder.made = []
        server = await h.loop.create_server(Responder, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        got = await asyncio.to_thread(run_client, port, files, version, name, tmp_path, "resume")
        assert got["resumed"] and bytes.fromhex(got["plain"]) == RESPONSE
        _, _, keys = await Responder.made[1].outcome
        assert keys is not None
        check_keys_decrypt(bytes.fromhex(got["raw"]), keys, version)
        server.close()
        await server.wait_closed()

    h.run(main())


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_off_never_tries_and_auto_asks_only_a_kernel_that_has_it(h, files, mode, tmp_path) -> None:
    if not h.uring:
        pytest.skip("kTLS is the core's")
    conf = CoreTLS(str(files.cert), str(files.key), ktls=mode)
    available, why = ktls.probe()
    tries = mode == "auto" and available
    assert conf.ktls_usable() == (tries, "--tls-ktls off" if mode == "off" else why)

    async def main() -> None:
        Responder.made = []
        server = await h.loop.create_server(Responder, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        before = ktls_stats(h)
        got = await asyncio.to_thread(run_client, port, files, "1.3", "TLS_AES_128_GCM_SHA256", tmp_path)
        assert bytes.fromhex(got["plain"]) == RESPONSE
        status, _, keys = await Responder.made[0].outcome
        if tries:
            assert status == lib.US_KTLS_ON and ktls_stats(h) == (before[0] + 1, before[1])
        else:  # no key capture, no setsockopt, nothing counted
            assert (status, keys, ktls_stats(h)) == (lib.US_KTLS_NONE, None, before)
        server.close()
        await server.wait_closed()

    h.run(main())


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_after_the_switch_writes_leave_as_plaintext_behind_every_handshake_record(h, files, version) -> None:
    """Test-only "pretend": the switch made without telling the kernel, so
    the client sees what the kernel would be handed: the handshake's
    records (TLS 1.3's tickets included) whole and first, then the
    application's bytes as written, then close_notify's two bytes (sent
    with the alert record type in a cmsg, once the response has left)."""
    if not h.uring:
        pytest.skip("kTLS is the core's")
    conf = CoreTLS(str(files.cert), str(files.key), ktls="pretend")
    ctx = ssl.create_default_context(cafile=str(files.cacert))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[f"TLSv{version.replace('.', '_')}"]

    def client(port: int) -> bytes:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if out.pending:
                    sock.sendall(out.read())
                inc.write(sock.recv(65536))
        obj.write(b"GO")
        sock.sendall(out.read())
        rest = bytearray(inc.read())  # what came with the handshake's last flight, not yet read by the SSLObject
        while data := sock.recv(65536):
            rest.extend(data)
        sock.close()
        return bytes(rest)

    async def main() -> None:
        Responder.made = []
        server = await h.loop.create_server(Responder, "127.0.0.1", 0, ssl=conf)
        port = server.sockets[0].getsockname()[1]
        before = ktls_stats(h)
        Responder.close_after = True
        try:
            rest = await asyncio.to_thread(client, port)
        finally:
            Responder.close_after = False
        # then close_notify as the kernel's alert record would carry it (a
        # control record, its type in a cmsg a plain socket ignores), after every byte
        assert rest.endswith(RESPONSE + b"\x01\x00")
        head = rest[: -len(RESPONSE) - 2]
        if version == "1.3":  # the NewSessionTickets, whole records, sent before the switch
            assert head and all(hd[0] == 23 for hd, _ in records(head))
            # they were still queued when the client's request came with its Finished: not decided yet
            assert Responder.made[0].status_at_data == lib.US_KTLS_WANT
        else:
            assert head == b""
        status, _, keys = await Responder.made[0].outcome
        assert status == lib.US_KTLS_ON and ktls_stats(h) == (before[0] + 1, before[1])
        assert keys.seq == (len(records(head)) if version == "1.3" else 1)
        server.close()
        await server.wait_closed()

    h.run(main())


def test_tls_ktls_option_reaches_the_core_and_refuses_a_bad_mode(files) -> None:
    with pytest.raises(ValueError, match="kTLS mode 'on'"):
        CoreTLS(str(files.cert), str(files.key), ktls="on")
    out = subprocess.run(
        [
            PY,
            "-m",
            "uringserve",
            "run",
            "apps.http:app",
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
            "--tls-ktls",
            "sometimes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "--tls-ktls" in out.stderr and "Traceback" not in out.stderr


def test_doctor_says_whether_connections_would_use_ktls() -> None:
    out = subprocess.run([PY, "-m", "uringserve", "doctor", "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    k = checks["kTLS (TCP_ULP tls)"]
    available, why = ktls.probe()
    assert k["ok"] is available and k["detail"] == why
    if available:
        assert k["where"] == diagnose.KTLS_USED
    else:
        assert k["where"] == diagnose.KTLS_FALLBACK


def test_the_ktls_counters_are_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from uringserve.metrics import Metrics

    class Conns:
        def counts(self) -> dict[str, int]:
            return {"open": 0, "accepted": 0}

    class Server:
        connections = Conns()

    class Loop:
        def ring_stats(self) -> dict[str, int]:
            return {"ktls_tx": 3, "ktls_fallback": 2}

    registry = CollectorRegistry()
    Metrics(registry).sample(Server(), Loop())
    text = generate_latest(registry).decode()
    assert "uringserve_ring_ktls_tx_total 3.0" in text and "uringserve_ring_ktls_fallback_total 2.0" in text
