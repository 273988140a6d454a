/* TLS in the core (tls.c): OpenSSL's record layer over the ring's own I/O.
 *
 * Ownership
 * - struct us_tls_ctx: one server configuration (an SSL_CTX) and the
 *   plaintext scratch every connection of it decrypts into. Made and freed
 *   by the caller (uringserve/tls.py); used from one thread (the loop's).
 * - struct us_tls: one connection's SSL object, made at accept and freed by
 *   the caller when the slot is closed (us_tls_free). Each live one is
 *   counted in its ring's stats (tls_live).
 * - Ciphertext in: read straight from the provided-buffer ring's data region
 *   (us_tls_recv takes an offset into us_data_region(), valid until the next
 *   us_wait). Ciphertext out: OpenSSL's records are copied into the send
 *   arena by us_send (the custom BIO's write), so they leave as every plain
 *   write does. Nothing is allocated per record.
 */
#ifndef URINGSERVE_TLS_H
#define URINGSERVE_TLS_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
struct us_tls_ctx;
struct us_tls;

/* the server's configuration; paths are PEM files */
struct us_tls_conf {
    const char *cert;        /* the certificate chain */
    const char *key;         /* its private key; NULL: in `cert` */
    const char *ca;          /* client certificates must be signed by it; NULL: none asked */
    const char *ciphers;     /* OpenSSL cipher list for TLS 1.2; NULL: the default */
    int min_version;         /* 0x0303 TLS 1.2, 0x0304 TLS 1.3 */
    const unsigned char *alpn; /* protocols offered, ALPN wire format (length-prefixed) */
    uint32_t alpn_len;
};

/* us_tls_recv's results beyond a plaintext length */
#define US_TLS_EOF -1000       /* the peer's close_notify: a clean end */
#define US_TLS_FAIL -1001      /* a protocol error: us_tls_error() says which; an alert was queued */
#define US_TLS_WANT_WRITE -1002 /* the arena is full mid-handshake: call again (len 0) after US_EV_ARENA */
#define US_TLS_AGAIN 4294967296 /* added to a length: more to come, call again with len 0 */

/* NULL on failure, with OpenSSL's reason in err */
struct us_tls_ctx *us_tls_ctx_new(const struct us_tls_conf *conf, char *err, size_t errlen);
/* another certificate (conf's cert and key; its other fields as the first's),
 * served to a client whose SNI name it holds; 0, or -errno with the reason in err */
int us_tls_ctx_add(struct us_tls_ctx *x, const struct us_tls_conf *conf, char *err, size_t errlen);
/* session tickets from a 32-byte secret shared by the workers: the keys of
 * each `period` seconds are derived from it (so every worker encrypts with
 * the same and a client resumes on any), a ticket is accepted for one
 * period more. `count`: the TLS 1.3 tickets a full handshake issues (a
 * resumed TLS 1.3 one issues one, replacing the ticket it used); -EINVAL
 * for period 0 or count 0 */
int us_tls_ctx_tickets(struct us_tls_ctx *x, const unsigned char *secret, uint32_t period, uint32_t count);
/* on: a ClientHello whose SNI name none of the certificates holds, or
 * without a name, is refused with unrecognized_name (112); off (the
 * default): such a client gets the first certificate */
void us_tls_ctx_sni_strict(struct us_tls_ctx *x, int on);
void us_tls_ctx_free(struct us_tls_ctx *x);
char *us_tls_plain(struct us_tls_ctx *x);      /* where us_tls_recv's plaintext is */

/* a connection's SSL object (server side), NULL: -ENOMEM */
struct us_tls *us_tls_new(struct us_tls_ctx *x, struct us_ring *r, uint32_t slot, uint32_t gen);
void us_tls_free(struct us_tls *t);
/* feed `len` bytes of ciphertext at `off` in the ring's data region (0, 0:
 * go on from where the last call stopped); returns the plaintext length at
 * us_tls_plain() (plus US_TLS_AGAIN when there is more), or US_TLS_* */
int64_t us_tls_recv(struct us_tls *t, uint32_t off, uint32_t len);
/* encrypt `data` into the connection's send queue; returns the plaintext
 * bytes taken (fewer when the arena is full: offer the rest again, from
 * there, after US_EV_ARENA; 0 before the handshake is done), or -errno
 * (-EPROTO: a protocol error, us_tls_error()) */
int64_t us_tls_send(struct us_tls *t, uint32_t slot, uint32_t gen, const char *data, size_t len);
int us_tls_close_notify(struct us_tls *t);     /* 1 queued, 0 not (not established, failed, or sent); reads go on */
int us_tls_ready(struct us_tls *t);            /* the handshake is done */
int us_tls_error(struct us_tls *t, char *buf, size_t len);  /* the last error's text; its alert in the result, or 0 */
const char *us_tls_version(struct us_tls *t);  /* "TLSv1.3", NULL before the handshake */
const char *us_tls_cipher(struct us_tls *t, const char **proto, int *bits);
int us_tls_alpn(struct us_tls *t, const unsigned char **proto); /* its length, 0: none */
int us_tls_peer_cert(struct us_tls *t, unsigned char *buf, int len); /* DER length (buf NULL: the size), 0: none */
/* a certificate, DER (its length; buf NULL or short: the length needed; 0: none):
 * which -1 the server's (the one the SNI name chose), 0 the client's own,
 * 1.. the rest of the chain the client sent, in its order */
int us_tls_cert(struct us_tls *t, int which, unsigned char *buf, int len);
int us_tls_cipher_id(struct us_tls *t);        /* the suite's IANA number (0x1301), -1 before the handshake */
const char *us_tls_openssl_version(void);
const char *us_tls_default_ciphers(void);     /* TLS 1.2's suites when none are given */
/* CDEF END */

struct us_ring;
#pragma GCC visibility push(hidden)
/* the TLS file path (send.c's on_fread): encrypt plaintext read from a file
 * into registered memory; its records go before the file segment
 * (queue_before_file). Returns the plaintext bytes whole records took
 * (fewer when the arena is full: the rest is read again later), or -errno */
int64_t tls_encrypt_file(struct us_tls *t, const char *data, size_t len);
/* no file segment is left in the connection's queue: a write held behind
 * them is woken (US_EV_ARENA) and a close_notify asked for meanwhile queued */
void tls_files_sent(struct us_tls *t);
int tls_established(struct us_tls *t);
#pragma GCC visibility pop

#endif
