/* kTLS, send direction (ktls.c): after the handshake the server's write
 * key, IV and record sequence number are handed to the kernel (TCP_ULP
 * "tls", then TLS_TX), so plaintext writes and file sends leave as the plain
 * path's and the kernel makes the records. Receiving stays in OpenSSL.
 *
 * Ownership
 * - struct us_ktls: one connection's key capture and switch state, made by
 *   us_tls_new when its configuration asks for kTLS (us_tls_ctx_ktls) and
 *   freed with the connection (us_tls_free). Secrets are wiped once the keys
 *   are derived.
 * - The decision is made once per connection (us_tls_ktls_start), after the
 *   handshake and once every handshake record the arena held has been sent
 *   (data the kernel sees after TLS_TX is encrypted by it), before any
 *   application data: on (counted ktls_tx) or the OpenSSL path for good
 *   (counted ktls_fallback, the reason in us_tls_ktls_status).
 */
#ifndef URINGSERVE_KTLS_H
#define URINGSERVE_KTLS_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */
#define US_KTLS_OFF 0     /* never tried */
#define US_KTLS_AUTO 1    /* used where the kernel takes the keys, else the OpenSSL path */
#define US_KTLS_PRETEND 2 /* tests only: nothing is handed to the kernel, the switch is made as if it had taken
                           * the keys (writes leave as plaintext): the switch's own logic, on a kernel without kTLS */

/* a connection's kTLS state (us_tls_ktls_status) */
#define US_KTLS_NONE 0     /* the configuration does not ask for it */
#define US_KTLS_WANT 1     /* not decided yet */
#define US_KTLS_ON 2       /* the kernel encrypts what this connection sends */
#define US_KTLS_FALLBACK 3 /* OpenSSL encrypts (errno in *err says why) */

/* the server's write keys as handed to the kernel (us_tls_ktls_keys) */
struct us_ktls_keys {
    uint16_t version;   /* 0x0303, 0x0304 */
    uint16_t cipher;    /* linux/tls.h TLS_CIPHER_*: 51 AES-128-GCM, 52 AES-256-GCM, 54 CHACHA20-POLY1305 */
    uint32_t key_len;
    uint32_t iv_len;    /* 12: the record IV (TLS 1.3; TLS 1.2 ChaCha20), 4: TLS 1.2 GCM's salt */
    unsigned char key[32];
    unsigned char iv[12];
    uint64_t seq;       /* the sequence number of the next record the server writes */
};

/* asks (mode US_KTLS_*) every connection made from now on to switch */
void us_tls_ctx_ktls(struct us_tls_ctx *x, int mode);
/* decide for this connection (after us_tls_ready): 1 on, 0 the OpenSSL path,
 * -EAGAIN: records are still queued for the socket, call again once they
 * are sent (us_notify_below(0)); writes (us_tls_send) wait until decided */
int us_tls_ktls_start(struct us_tls *t);
int us_tls_ktls_status(struct us_tls *t, int *err);
/* on kTLS: close_notify as the kernel's alert record, sent now (0), or
 * -EAGAIN while bytes queued before it are unsent (again at EV_WRITABLE), or
 * -errno; -EINVAL when the connection is not on kTLS */
int us_tls_ktls_close_notify(struct us_tls *t);
/* the keys derived at the decision (tests): 0, or -ENOENT before */
int us_tls_ktls_keys(struct us_tls *t, struct us_ktls_keys *out);
/* CDEF END */

/* between tls.c and ktls.c */
#include <openssl/ssl.h>
struct us_ktls;
struct us_ring;
void ktls_ctx_setup(SSL_CTX *ctx);
struct us_ktls *ktls_new(SSL *ssl, int mode);
void ktls_free(struct us_ktls *k);
int ktls_state(const struct us_ktls *k);
int ktls_start(struct us_ktls *k, SSL *ssl, struct us_ring *r, uint32_t slot, uint32_t gen);
int ktls_status(const struct us_ktls *k, int *err);
int ktls_close_notify(struct us_ring *r, uint32_t slot, uint32_t gen);
int ktls_keys(const struct us_ktls *k, struct us_ktls_keys *out);

#endif
