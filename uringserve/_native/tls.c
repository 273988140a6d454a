/* TLS in the core: OpenSSL's record layer over the ring (see tls.h for who
 * owns what). The interpreter's ssl module links the same libssl, so there
 * is one OpenSSL in the process.
 *
 * One custom BIO per connection is both ends of its SSL object: reads take
 * ciphertext from the pointer us_tls_recv set (the ring's provided buffer,
 * no copy in between), writes go through us_send into the send arena. A
 * memory BIO pair would add a copy each way and a growing buffer. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h> /* X509_check_host */

#include "ring_internal.h"
#include "tls.h"
#include "ktls.h"

/* plaintext one us_tls_recv call hands out at most: the loop's largest
 * delivery (256 KiB) and a record OpenSSL held from before */
#define PLAIN_CAP ((256 + 32) * 1024)

/* certificates besides the default one, chosen by the client's SNI name */
#define MORE_CERTS 32

/* one rotation period's session-ticket keys, derived from the shared secret */
struct ticket_keys {
    uint64_t period;
    unsigned char name[16]; /* 8 bytes of HMAC, then the period: a ticket says which keys made it */
    unsigned char aes[32], hmac[32];
};

struct us_tls_ctx {
    SSL_CTX *ctx;                 /* the default certificate's, every connection starts on it */
    unsigned char secret[32];     /* us_tls_ctx_tickets: the same in every worker */
    uint32_t ticket_period;       /* seconds a key encrypts; it decrypts one period more. 0: OpenSSL's own keys */
    struct ticket_keys tk[2];     /* the last two periods derived (a cache) */
    SSL_CTX *more[MORE_CERTS];    /* us_tls_ctx_add: switched to when the SNI name is theirs */
    uint32_t nmore;
    int sni_strict;               /* us_tls_ctx_sni_strict: a name none of the certificates holds is refused */
    unsigned char alpn[256];
    uint32_t alpn_len;
    char *plain; /* PLAIN_CAP bytes, shared by the connections: copied out before the next call */
    int ktls;    /* us_tls_ctx_ktls: US_KTLS_* asked of new connections */
};

struct us_tls {
    SSL *ssl;
    struct us_tls_ctx *x;
    struct us_ring *r;
    uint32_t slot, gen;
    const char *in;  /* ciphertext not yet read by OpenSSL: in the ring's region until the next us_wait */
    size_t in_len;
    int dead;        /* a fatal error or a cut: no more I/O, no close_notify */
    int notified;    /* our close_notify is queued: nothing more is written; reading goes on (a half-close) */
    int file_held;   /* us_tls_send refused while a file was queued: woken when none is */
    int notify_held; /* close_notify asked for while a file was queued: sent after it */
    int send_err;    /* the errno us_send gave the BIO */
    int alert;       /* the alert the last failure sent or received, 0 none */
    char err[200];
    struct us_ktls *k; /* ktls.c: NULL when the configuration does not ask for kTLS */
};

static BIO_METHOD *bio_method;
static int64_t encrypt(struct us_tls *t, const char *data, size_t len);

static int bio_write(BIO *b, const char *data, int len)
{
    struct us_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->k && ktls_state(t->k) == US_KTLS_ON) {
        /* the kernel has the write keys: a record of OpenSSL's (an alert, a
         * KeyUpdate the client asked for) would be under stale ones */
        t->send_err = EKEYREJECTED;
        return -1;
    }
    /* a record made now goes ahead of file bytes not yet encrypted (the TLS file path) */
    int64_t n = queue_before_file(t->r, t->slot, t->gen, data, (size_t)len);
    if (n < 0) {
        t->send_err = (int)-n;
        return -1;
    }
    if (n == 0) {
        BIO_set_retry_write(b); /* the arena is full: OpenSSL keeps the record and is asked again */
        return -1;
    }
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
    struct us_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!t->in_len) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = t->in_len < (size_t)len ? t->in_len : (size_t)len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    /* OpenSSL flushes after each flight; the ring sends at its next enter */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int setup_bio_method(void)
{
    if (bio_method)
        return 1;
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "uringserve ring");
    if (!m || !BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return 0;
    }
    bio_method = m;
    return 1;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    struct us_tls_ctx *x = arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, x->alpn, x->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no protocol in common: go on without ALPN, as CPython's ssl */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int no_password(char *buf, int size, int rwflag, void *u)
{
    return 0; /* an encrypted key is refused, never prompted for on the server's terminal */
}

static void last_error(char *err, size_t len, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, len, "%s: %s", what, reason ? reason : "unknown error");
    ERR_clear_error();
}

/* TLS 1.2's suites when none are given: forward secrecy and AEAD only (CPython's default list) */
static const char DEFAULT_CIPHERS[] = "ECDH+AESGCM:ECDH+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM";

/* a client whose SNI name no certificate holds (or who sent none): the
 * default certificate, as nginx's default server; with sni_strict the
 * handshake is refused with unrecognized_name (112), as nginx's
 * ssl_reject_handshake in the default server (which refuses a ClientHello
 * without a name too: a client connecting by address sends none) */
static int unknown_name(struct us_tls_ctx *x, int *alert)
{
    if (!x->sni_strict)
        return SSL_TLSEXT_ERR_OK;
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* the SNI name's certificate: the first whose names (SAN, else CN;
 * wildcards as RFC 6125) match. OpenSSL calls it for every ClientHello,
 * with a name or without. */
static int servername(SSL *ssl, int *alert, void *arg)
{
    struct us_tls_ctx *x = arg;
    if (!x->nmore && !x->sni_strict)
        return SSL_TLSEXT_ERR_OK; /* one certificate for every name */
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return unknown_name(x, alert);
    if (X509_check_host(SSL_CTX_get0_certificate(x->ctx), name, 0, 0, NULL) == 1)
        return SSL_TLSEXT_ERR_OK;
    for (uint32_t i = 0; i < x->nmore; i++) {
        if (X509_check_host(SSL_CTX_get0_certificate(x->more[i]), name, 0, 0, NULL) == 1) {
            SSL_set_SSL_CTX(ssl, x->more[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return unknown_name(x, alert);
}

void us_tls_ctx_sni_strict(struct us_tls_ctx *x, int on) { x->sni_strict = on != 0; }

/* one SSL_CTX of the configuration (every certificate's has the same settings) */
static SSL_CTX *make_ctx(struct us_tls_ctx *x, const struct us_tls_conf *conf, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    SSL_CTX_set_default_passwd_cb(ctx, no_password);
    /* renegotiation refused (a TLS 1.2 client asking gets no_renegotiation); no compression (CRIME) */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* a partial write returns what whole records took; the rest is offered
     * again from a Python bytes object, not at the same address */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* no server-side session cache (it would grow per handshake); tickets still resume */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!SSL_CTX_set_min_proto_version(ctx, conf->min_version ? conf->min_version : TLS1_2_VERSION)) {
        last_error(err, errlen, "minimum TLS version");
        goto fail;
    }
    if (!SSL_CTX_set_cipher_list(ctx, conf->ciphers ? conf->ciphers : DEFAULT_CIPHERS)) {
        last_error(err, errlen, "ciphers");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, conf->cert) != 1) {
        last_error(err, errlen, "certificate chain");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, conf->key ? conf->key : conf->cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        last_error(err, errlen, "private key");
        goto fail;
    }
    if (conf->ca) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(conf->ca);
        if (!names || SSL_CTX_load_verify_locations(ctx, conf->ca, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            last_error(err, errlen, "client CA");
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    if (x->alpn_len)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, x);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static int derive(const unsigned char *secret, const char *label, uint64_t period, unsigned char out[32])
{
    unsigned char msg[40];
    size_t n = strlen(label), outlen = 0;
    memcpy(msg, label, n);
    for (int i = 0; i < 8; i++)
        msg[n + i] = (unsigned char)(period >> (56 - 8 * i));
    return EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, 32, msg, n + 8, out, 32, &outlen) != NULL;
}

/* the keys of `period` (from the cache, else derived into it) */
static struct ticket_keys *keys_of(struct us_tls_ctx *x, uint64_t period)
{
    struct ticket_keys *k = &x->tk[period & 1];
    if (k->period == period && period)
        return k;
    unsigned char name[32];
    if (!derive(x->secret, "uringserve ticket name", period, name) ||
        !derive(x->secret, "uringserve ticket aes", period, k->aes) ||
        !derive(x->secret, "uringserve ticket hmac", period, k->hmac))
        return NULL;
    memcpy(k->name, name, 8);
    for (int i = 0; i < 8; i++)
        k->name[8 + i] = (unsigned char)(period >> (56 - 8 * i));
    k->period = period;
    return k;
}

/* OpenSSL's ticket callback: encrypt with this period's keys; decrypt with
 * this period's or the last one's; any other ticket: a full handshake (0).
 * A ticket taken asks for a new one (2) when it is the last period's, and
 * always over TLS 1.3: its clients use a ticket once (RFC 8446 C.4), so a
 * resumption that issued none would leave a client with one ticket fewer,
 * and every other connection of one reconnecting in turn a full handshake
 * (OpenSSL issues one ticket on a renewed resumption, as nginx's). TLS 1.2
 * clients reuse theirs: no renewal while the keys are current. */
static int ticket_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct us_tls_ctx *x = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    uint64_t now = (uint64_t)time(NULL) / x->ticket_period + 1; /* + 1: period 0 never occurs, the cache's empty */
    uint64_t period = now;
    int ret = 1;
    if (!enc) {
        period = 0;
        for (int i = 8; i < 16; i++)
            period = period << 8 | key_name[i];
        if (period != now && period + 1 != now)
            return 0;
        ret = period == now && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
    }
    struct ticket_keys *k = keys_of(x, period);
    if (!k || (!enc && CRYPTO_memcmp(k->name, key_name, 16) != 0))
        return k ? 0 : -1;
    if (enc) {
        memcpy(key_name, k->name, 16);
        if (RAND_bytes(iv, 16) <= 0)
            return -1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k->hmac, 32),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (!EVP_MAC_CTX_set_params(hctx, params))
        return -1;
    int ok = enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv)
                 : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv);
    return ok ? ret : -1;
}

static void use_tickets(struct us_tls_ctx *x, SSL_CTX *ctx)
{
    SSL_CTX_set_app_data(ctx, x);
    if (x->ticket_period)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
}

int us_tls_ctx_tickets(struct us_tls_ctx *x, const unsigned char *secret, uint32_t period, uint32_t count)
{
    if (!period || !count)
        return -EINVAL;
    memcpy(x->secret, secret, 32);
    x->ticket_period = period;
    memset(x->tk, 0, sizeof(x->tk));
    /* every connection starts on x->ctx and keeps its count after an SNI
     * switch: the other certificates' contexts are set alike for clarity */
    SSL_CTX_set_num_tickets(x->ctx, count);
    use_tickets(x, x->ctx);
    for (uint32_t i = 0; i < x->nmore; i++) {
        SSL_CTX_set_num_tickets(x->more[i], count);
        use_tickets(x, x->more[i]);
    }
    return 0;
}

struct us_tls_ctx *us_tls_ctx_new(const struct us_tls_conf *conf, char *err, size_t errlen)
{
    ERR_clear_error();
    if (!setup_bio_method()) {
        last_error(err, errlen, "BIO method");
        return NULL;
    }
    if (conf->alpn_len > sizeof(((struct us_tls_ctx *)0)->alpn)) {
        snprintf(err, errlen, "ALPN list longer than %zu bytes", sizeof(((struct us_tls_ctx *)0)->alpn));
        return NULL;
    }
    struct us_tls_ctx *x = calloc(1, sizeof(*x));
    char *plain = malloc(PLAIN_CAP);
    if (!x || !plain) {
        snprintf(err, errlen, "out of memory");
        free(plain);
        free(x);
        return NULL;
    }
    x->plain = plain;
    memcpy(x->alpn, conf->alpn, conf->alpn_len);
    x->alpn_len = conf->alpn_len;
    x->ctx = make_ctx(x, conf, err, errlen);
    if (!x->ctx) {
        free(plain);
        free(x);
        return NULL;
    }
    SSL_CTX_set_tlsext_servername_callback(x->ctx, servername);
    SSL_CTX_set_tlsext_servername_arg(x->ctx, x);
    ERR_clear_error();
    return x;
}

int us_tls_ctx_add(struct us_tls_ctx *x, const struct us_tls_conf *conf, char *err, size_t errlen)
{
    if (x->nmore == MORE_CERTS) {
        snprintf(err, errlen, "more than %d certificates", MORE_CERTS + 1);
        return -E2BIG;
    }
    ERR_clear_error();
    SSL_CTX *ctx = make_ctx(x, conf, err, errlen);
    if (!ctx)
        return -EINVAL;
    use_tickets(x, ctx);
    if (x->ktls)
        ktls_ctx_setup(ctx);
    x->more[x->nmore++] = ctx;
    ERR_clear_error();
    return 0;
}

void us_tls_ctx_free(struct us_tls_ctx *x)
{
    if (!x)
        return;
    SSL_CTX_free(x->ctx);
    for (uint32_t i = 0; i < x->nmore; i++)
        SSL_CTX_free(x->more[i]);
    free(x->plain);
    free(x);
}

char *us_tls_plain(struct us_tls_ctx *x) { return x->plain; }

struct us_tls *us_tls_new(struct us_tls_ctx *x, struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct us_tls *t = calloc(1, sizeof(*t));
    SSL *ssl = SSL_new(x->ctx);
    BIO *b = BIO_new(bio_method);
    if (!t || !ssl || !b) {
        BIO_free(b);
        SSL_free(ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(ssl, b, b); /* one reference, both directions: the SSL owns the BIO */
    SSL_set_accept_state(ssl);
    t->ssl = ssl;
    t->x = x;
    t->r = r;
    t->slot = slot;
    t->gen = gen;
    t->k = x->ktls ? ktls_new(ssl, x->ktls) : NULL; /* NULL (no memory): this one stays on OpenSSL's path */
    struct conn *c = conn_get(r, slot, gen);
    if (c) { /* the file path finds the SSL object by the slot (send.c's on_fread) */
        c->tls = t;
        c->is_tls = 1;
    }
    r->st.tls_live++;
    return t;
}

void us_tls_free(struct us_tls *t)
{
    if (!t)
        return;
    if (t->slot < t->r->conn.size && t->r->conn.table[t->slot].tls == t)
        t->r->conn.table[t->slot].tls = NULL; /* is_tls stays: a file read that completes now fails */
    t->r->st.tls_live--;
    SSL_free(t->ssl);
    ktls_free(t->k);
    free(t);
}

/* a fatal error: its text (OpenSSL's reason) and the alert, and no more I/O */
static void fail(struct us_tls *t, int sslerr)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    if (sslerr == SSL_ERROR_SYSCALL && t->send_err)
        snprintf(t->err, sizeof(t->err), "send: %s", strerror(t->send_err));
    else if (sslerr == SSL_ERROR_SYSCALL)
        snprintf(t->err, sizeof(t->err), "unexpected end of stream");
    else
        snprintf(t->err, sizeof(t->err), "%s", reason ? reason : "protocol error");
    if (e && ERR_GET_LIB(e) == ERR_LIB_SSL) {
        int rs = ERR_GET_REASON(e);
        /* SSL_R_SSLV3_ALERT_* and SSL_R_TLSV1_ALERT_* are 1000 + the alert received */
        t->alert = rs >= 1000 && rs < 1256 ? rs - 1000 : 0;
    }
    t->dead = 1;
    ERR_clear_error();
}

int64_t us_tls_recv(struct us_tls *t, uint32_t off, uint32_t len)
{
    if (t->dead)
        return US_TLS_FAIL;
    if (len) {
        size_t region;
        char *base = us_data_region(t->r, &region);
        if ((size_t)off + len > region)
            return -EINVAL;
        t->in = base + off;
        t->in_len = len;
    }
    ERR_clear_error();
    char *out = t->x->plain;
    size_t used = 0;
    for (;;) {
        if (used == PLAIN_CAP)
            return (int64_t)used + US_TLS_AGAIN;
        size_t n;
        if (SSL_read_ex(t->ssl, out + used, PLAIN_CAP - used, &n)) {
            used += n;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_READ)
            break; /* everything given is consumed: a record may be half here */
        if (e == SSL_ERROR_WANT_WRITE) {
            if (t->in_len) {
                /* unread ciphertext lives in a buffer the ring takes back at
                 * the next us_wait: it cannot wait for the arena */
                snprintf(t->err, sizeof(t->err), "send arena full with ciphertext still to read");
                t->dead = 1;
                t->in_len = 0;
                return used ? (int64_t)used + US_TLS_AGAIN : US_TLS_FAIL;
            }
            if (used)
                return (int64_t)used + US_TLS_AGAIN;
            return US_TLS_WANT_WRITE;
        }
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->in_len = 0;
            t->dead = 1; /* close_notify received: nothing more is read; ours is not owed */
            return used ? (int64_t)used + US_TLS_AGAIN : US_TLS_EOF;
        }
        fail(t, e);
        t->in_len = 0;
        return used ? (int64_t)used + US_TLS_AGAIN : US_TLS_FAIL;
    }
    t->in_len = 0;
    return (int64_t)used;
}

/* a file segment is queued: its bytes are encrypted as they are read, so
 * nothing written later may be encrypted before they are */
static int file_queued(struct us_tls *t)
{
    struct conn *c = conn_get(t->r, t->slot, t->gen);
    return c && c->q.fseg != NONE;
}

int64_t us_tls_send(struct us_tls *t, uint32_t slot, uint32_t gen, const char *data, size_t len)
{
    if (t->dead || t->notified)
        return -EPIPE;
    if (!SSL_is_init_finished(t->ssl))
        return 0; /* held by the caller until the handshake is done */
    if (t->k) {
        int ks = ktls_state(t->k);
        if (ks == US_KTLS_WANT)
            return 0; /* held until us_tls_ktls_start decides */
        if (ks == US_KTLS_ON)
            return us_send(t->r, slot, gen, data, len); /* plaintext: the kernel makes the records */
    }
    if (file_queued(t)) {
        t->file_held = 1; /* held by the caller (as for a full arena) until tls_files_sent() */
        return 0;
    }
    return encrypt(t, data, len);
}

int64_t tls_encrypt_file(struct us_tls *t, const char *data, size_t len)
{
    if (t->dead)
        return -EPIPE;
    int64_t n = encrypt(t, data, len);
    if (n > 0)
        t->r->st.tls_file_bytes += (uint64_t)n;
    return n;
}

void tls_files_sent(struct us_tls *t)
{
    if (t->file_held) {
        /* the caller's held writes: woken as by freed chunks, at the end of this us_wait round */
        t->file_held = 0;
        t->r->send.arena_waiting = 1;
        t->r->send.arena_freed = 1;
    }
    if (t->notify_held) {
        t->notify_held = 0;
        us_tls_close_notify(t);
    }
}

int tls_established(struct us_tls *t) { return SSL_is_init_finished(t->ssl); }

/* as much of `data` as whole records the arena takes; -errno on a failure */
static int64_t encrypt(struct us_tls *t, const char *data, size_t len)
{
    ERR_clear_error();
    size_t done = 0;
    while (done < len) {
        size_t n;
        if (SSL_write_ex(t->ssl, data + done, len - done, &n)) {
            done += n;
            continue;
        }
        int e = SSL_get_error(t->ssl, 0);
        if (e == SSL_ERROR_WANT_WRITE)
            break; /* a record waits in OpenSSL for the arena: offered again from `done` */
        int err = t->send_err;
        fail(t, e);
        return err ? -err : -EPROTO;
    }
    return (int64_t)done;
}

int us_tls_close_notify(struct us_tls *t)
{
    if (t->dead || t->notified || !SSL_is_init_finished(t->ssl))
        return 0;
    if (t->k && ktls_state(t->k) == US_KTLS_ON)
        return 0; /* OpenSSL's write keys are stale: us_tls_ktls_close_notify sends it */
    if (file_queued(t)) {
        t->notify_held = 1; /* after the file's last record (tls_files_sent) */
        return 1;
    }
    ERR_clear_error();
    int ret = SSL_shutdown(t->ssl); /* 0: ours is queued, the peer's not read yet */
    ERR_clear_error();
    /* what the peer sends after it is still read (TLS 1.3 allows a half-close,
     * RFC 8446 6.1): a client's close_notify is its EOF, not a failure */
    t->notified = 1;
    return ret >= 0;
}

int us_tls_ready(struct us_tls *t) { return SSL_is_init_finished(t->ssl); }

int us_tls_error(struct us_tls *t, char *buf, size_t len)
{
    snprintf(buf, len, "%s", t->err[0] ? t->err : "no error");
    return t->alert;
}

const char *us_tls_version(struct us_tls *t)
{
    return SSL_is_init_finished(t->ssl) ? SSL_get_version(t->ssl) : NULL;
}

const char *us_tls_cipher(struct us_tls *t, const char **proto, int *bits)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    if (!c)
        return NULL;
    *proto = SSL_CIPHER_get_version(c);
    *bits = SSL_CIPHER_get_bits(c, NULL);
    return SSL_CIPHER_get_name(c);
}

int us_tls_alpn(struct us_tls *t, const unsigned char **proto)
{
    unsigned int len = 0;
    SSL_get0_alpn_selected(t->ssl, proto, &len);
    return (int)len;
}

int us_tls_peer_cert(struct us_tls *t, unsigned char *buf, int len)
{
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (!cert)
        return 0;
    int need = i2d_X509(cert, NULL);
    if (!buf || need <= 0 || need > len)
        return need;
    unsigned char *p = buf;
    return i2d_X509(cert, &p);
}

static int der_of(X509 *cert, unsigned char *buf, int len)
{
    int need = i2d_X509(cert, NULL);
    if (!buf || need <= 0 || need > len)
        return need;
    unsigned char *p = buf;
    return i2d_X509(cert, &p);
}

int us_tls_cert(struct us_tls *t, int which, unsigned char *buf, int len)
{
    X509 *cert = NULL;
    if (which < 0) {
        cert = SSL_get_certificate(t->ssl); /* the SNI name's once the servername callback switched */
    } else {
        X509 *leaf = SSL_get0_peer_certificate(t->ssl);
        /* a server's peer chain leaves the client's own certificate out
         * (OpenSSL's "inconsistency" with the client side): it comes first,
         * and is skipped in the chain should a later OpenSSL include it */
        STACK_OF(X509) *chain = SSL_get_peer_cert_chain(t->ssl);
        if (!leaf)
            return 0;
        int n = chain ? sk_X509_num(chain) : 0, skip = n && X509_cmp(sk_X509_value(chain, 0), leaf) == 0;
        if (which == 0)
            cert = leaf;
        else if (which - 1 + skip < n)
            cert = sk_X509_value(chain, which - 1 + skip);
    }
    return cert ? der_of(cert, buf, len) : 0;
}

int us_tls_cipher_id(struct us_tls *t)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    return c ? SSL_CIPHER_get_protocol_id(c) : -1;
}

const char *us_tls_openssl_version(void) { return OpenSSL_version(OPENSSL_VERSION); }

const char *us_tls_default_ciphers(void) { return DEFAULT_CIPHERS; }

/* ---- kTLS (ktls.c does the work; these reach into the connection) ---- */

void us_tls_ctx_ktls(struct us_tls_ctx *x, int mode)
{
    x->ktls = mode;
    if (!mode)
        return;
    ktls_ctx_setup(x->ctx);
    for (uint32_t i = 0; i < x->nmore; i++)
        ktls_ctx_setup(x->more[i]);
}

int us_tls_ktls_start(struct us_tls *t)
{
    if (t->dead)
        return ktls_state(t->k) == US_KTLS_ON;
    int ret = ktls_start(t->k, t->ssl, t->r, t->slot, t->gen);
    if (ktls_state(t->k) == US_KTLS_ON) {
        /* the kernel encrypts: files take the plain path (read, then sent as they are) */
        struct conn *c = conn_get(t->r, t->slot, t->gen);
        if (c)
            c->is_tls = 0;
    }
    return ret;
}

int us_tls_ktls_status(struct us_tls *t, int *err) { return ktls_status(t->k, err); }

int us_tls_ktls_close_notify(struct us_tls *t)
{
    if (!t->k || ktls_state(t->k) != US_KTLS_ON)
        return -EINVAL;
    return t->dead ? -EPIPE : ktls_close_notify(t->r, t->slot, t->gen);
}

int us_tls_ktls_keys(struct us_tls *t, struct us_ktls_keys *out) { return ktls_keys(t->k, out); }
