/* kTLS, send direction: the server's write keys handed to the kernel after
 * the handshake (see ktls.h for who owns what).
 *
 * OpenSSL's own kTLS cannot engage here: it needs its socket BIO, and the
 * ring's I/O replaces it. OpenSSL 3.0 has no getter for the traffic keys, so
 * they are rebuilt from what it does give out: TLS 1.3 from the keylog
 * callback's SERVER_TRAFFIC_SECRET_0 (HKDF-Expand-Label "key"/"iv", RFC 8446
 * 7.3), TLS 1.2 from the session's master secret (the PRF's key expansion,
 * RFC 5246 6.3). The sequence number is counted exactly: every record
 * header OpenSSL writes under the application write keys (the message
 * callback), so TLS 1.3's NewSessionTickets and TLS 1.2's Finished count.
 *
 * Receiving stays in OpenSSL (no TLS_RX): with TLS_RX the kernel hands
 * non-data records (alerts, a KeyUpdate, post-handshake messages) to
 * recvmsg as a control message and fails a plain recv with EIO, and the
 * ring's multishot receive into provided buffers has no room for it.
 *
 * After the switch OpenSSL must write nothing (its write keys are stale):
 * tls.c's BIO cuts the connection if it tries (a KeyUpdate the client asks
 * for, an alert); close_notify is sent as a control record
 * (us_tls_ktls_close_notify, once the queue before it has drained). */
#define _GNU_SOURCE
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/ssl.h>

#include "ring_internal.h"
#include "tls.h"
#include "ktls.h"

#ifndef SOCKET_URING_OP_SETSOCKOPT
#define SOCKET_URING_OP_SETSOCKOPT 3 /* 6.7: setsockopt on a fixed file */
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif
#ifndef SOL_TLS
#define SOL_TLS 282
#endif

struct us_ktls {
    int mode;              /* US_KTLS_AUTO or US_KTLS_PRETEND */
    int state;             /* US_KTLS_WANT, _ON, _FALLBACK */
    int err;               /* why the fallback (errno) */
    int counting;          /* the application write keys are in use: seq counts records */
    int rekeyed;           /* OpenSSL sent a KeyUpdate before the switch: the captured secret is stale */
    uint64_t seq;          /* records written under the application write keys */
    unsigned char secret[48]; /* TLS 1.3 SERVER_TRAFFIC_SECRET_0 (wiped once derived) */
    size_t secret_len;
    struct us_ktls_keys keys;
    int derived;
};

static int ex_index = -1;

static int unhex(const char *s, size_t n, unsigned char *out, size_t cap)
{
    if (n % 2 || n / 2 > cap)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int v = 0;
        for (int j = 0; j < 2; j++) {
            char c = s[2 * i + j];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0)
                return -1;
            v = v << 4 | d;
        }
        out[i] = (unsigned char)v;
    }
    return (int)(n / 2);
}

/* NSS key log lines ("LABEL <client random> <secret>"): the one kept is the
 * server's first application traffic secret (TLS 1.3); its record numbers
 * start at 0 here (the server's Finished went under the handshake keys) */
static void keylog(const SSL *ssl, const char *line)
{
    static const char want[] = "SERVER_TRAFFIC_SECRET_0 ";
    struct us_ktls *k = ex_index >= 0 ? SSL_get_ex_data(ssl, ex_index) : NULL;
    if (!k || strncmp(line, want, sizeof(want) - 1) != 0)
        return;
    const char *rest = strchr(line + sizeof(want) - 1, ' ');
    if (!rest)
        return;
    rest++;
    int n = unhex(rest, strlen(rest), k->secret, sizeof(k->secret));
    k->secret_len = n > 0 ? (size_t)n : 0;
    k->counting = 1;
    k->seq = 0;
}

/* every record header OpenSSL writes, and the handshake messages */
static void on_msg(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl, void *arg)
{
    struct us_ktls *k = arg;
    const unsigned char *p = buf;
    if (!write_p || !len)
        return;
    if (content_type == SSL3_RT_HANDSHAKE && p[0] == SSL3_MT_KEY_UPDATE)
        k->rekeyed = 1;
    if (content_type != SSL3_RT_HEADER)
        return;
    if (k->counting)
        k->seq++;
    else if (p[0] == SSL3_RT_CHANGE_CIPHER_SPEC && SSL_version(ssl) != TLS1_3_VERSION)
        k->counting = 1; /* TLS 1.2: the records after the server's ChangeCipherSpec, its Finished first, are 0, 1, ... */
}

void ktls_ctx_setup(SSL_CTX *ctx)
{
    if (ex_index < 0)
        ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX_set_keylog_callback(ctx, keylog);
}

struct us_ktls *ktls_new(SSL *ssl, int mode)
{
    struct us_ktls *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    k->mode = mode;
    k->state = US_KTLS_WANT;
    if (ex_index < 0 || !SSL_set_ex_data(ssl, ex_index, k)) {
        free(k);
        return NULL;
    }
    SSL_set_msg_callback(ssl, on_msg);
    SSL_set_msg_callback_arg(ssl, k);
    return k;
}

void ktls_free(struct us_ktls *k)
{
    if (k)
        OPENSSL_clear_free(k, sizeof(*k));
}

int ktls_state(const struct us_ktls *k) { return k ? k->state : US_KTLS_NONE; }

/* HKDF-Expand-Label(secret, label, "", len), RFC 8446 7.1 */
static int expand_label(const char *md, const unsigned char *secret, size_t slen, const char *label,
                        unsigned char *out, size_t len)
{
    unsigned char info[2 + 1 + 6 + 16 + 1];
    size_t ll = strlen(label), n = 0;
    info[n++] = (unsigned char)(len >> 8);
    info[n++] = (unsigned char)len;
    info[n++] = (unsigned char)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* no context */
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, slen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    int ok = kctx && EVP_KDF_derive(kctx, out, len, params) > 0;
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return ok;
}

/* TLS 1.2's key block: PRF(master, "key expansion", server_random + client_random) */
static int key_block(const char *md, const unsigned char *master, size_t mlen, const unsigned char *sr,
                     const unsigned char *cr, unsigned char *out, size_t len)
{
    static const char label[] = "key expansion";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)master, mlen),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)label, sizeof(label) - 1),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)sr, SSL3_RANDOM_SIZE),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)cr, SSL3_RANDOM_SIZE),
        OSSL_PARAM_construct_end(),
    };
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
    EVP_KDF_CTX *kctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    int ok = kctx && EVP_KDF_derive(kctx, out, len, params) > 0;
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return ok;
}

/* the server's write keys from what was captured: 0 or an errno */
static int derive(struct us_ktls *k, SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    if (!c)
        return EPROTO;
    struct us_ktls_keys *kk = &k->keys;
    memset(kk, 0, sizeof(*kk));
    switch (SSL_CIPHER_get_cipher_nid(c)) {
    case NID_aes_128_gcm: kk->cipher = TLS_CIPHER_AES_GCM_128; kk->key_len = 16; break;
    case NID_aes_256_gcm: kk->cipher = TLS_CIPHER_AES_GCM_256; kk->key_len = 32; break;
    case NID_chacha20_poly1305: kk->cipher = TLS_CIPHER_CHACHA20_POLY1305; kk->key_len = 32; break;
    default: return EOPNOTSUPP; /* a suite the kernel has no struct for (CCM is left out here) */
    }
    const EVP_MD *mdp = SSL_CIPHER_get_handshake_digest(c);
    const char *md = mdp ? EVP_MD_get0_name(mdp) : NULL;
    if (!md)
        return EOPNOTSUPP;
    int version = SSL_version(ssl);
    if (k->rekeyed)
        return EKEYEXPIRED;
    if (version == TLS1_3_VERSION) {
        if (!k->secret_len)
            return ENOKEY; /* the keylog line never came */
        kk->iv_len = 12;
        if (!expand_label(md, k->secret, k->secret_len, "key", kk->key, kk->key_len) ||
            !expand_label(md, k->secret, k->secret_len, "iv", kk->iv, kk->iv_len))
            return EPROTO;
    } else if (version == TLS1_2_VERSION) {
        unsigned char master[SSL_MAX_MASTER_KEY_LENGTH], cr[SSL3_RANDOM_SIZE], sr[SSL3_RANDOM_SIZE];
        unsigned char block[2 * 32 + 2 * 12];
        size_t mlen = SSL_SESSION_get_master_key(SSL_get_session(ssl), master, sizeof(master));
        SSL_get_client_random(ssl, cr, sizeof(cr));
        SSL_get_server_random(ssl, sr, sizeof(sr));
        /* AEAD suites: no MAC keys; client key, server key, client IV, server IV */
        kk->iv_len = kk->cipher == TLS_CIPHER_CHACHA20_POLY1305 ? 12 : 4;
        size_t need = 2 * (size_t)kk->key_len + 2 * (size_t)kk->iv_len;
        int ok = mlen && key_block(md, master, mlen, sr, cr, block, need);
        if (ok) {
            memcpy(kk->key, block + kk->key_len, kk->key_len);
            memcpy(kk->iv, block + 2 * kk->key_len + kk->iv_len, kk->iv_len);
        }
        OPENSSL_cleanse(master, sizeof(master));
        OPENSSL_cleanse(block, sizeof(block));
        if (!ok)
            return EPROTO;
    } else {
        return EOPNOTSUPP;
    }
    if (!k->counting)
        return EPROTO; /* never saw where the application keys began: no exact sequence number */
    kk->version = (uint16_t)version;
    kk->seq = k->seq;
    k->derived = 1;
    return 0;
}

static void be64(unsigned char *out, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(v >> (56 - 8 * i));
}

/* linux/tls.h's crypto_info for the keys; its length */
static size_t crypto_info(const struct us_ktls_keys *kk, void *buf)
{
    if (kk->cipher == TLS_CIPHER_CHACHA20_POLY1305) {
        struct tls12_crypto_info_chacha20_poly1305 *ci = buf;
        ci->info.version = kk->version;
        ci->info.cipher_type = kk->cipher;
        memcpy(ci->iv, kk->iv, 12);
        memcpy(ci->key, kk->key, 32);
        be64(ci->rec_seq, kk->seq);
        return sizeof(*ci);
    }
    /* AES-GCM, 128 and 256 laid out alike: TLS 1.3's 12-byte IV is the
     * salt (4) and iv (8); TLS 1.2's salt is the implicit part and iv the
     * first explicit nonce, which the kernel counts up per record: the
     * sequence number, as RFC 5288 3 suggests (OpenSSL's own records started
     * from a random 64-bit value, so they do not meet it) */
    struct tls12_crypto_info_aes_gcm_256 *ci = buf;
    unsigned char *key = ci->key, *salt = ci->salt, *rec = ci->rec_seq;
    if (kk->cipher == TLS_CIPHER_AES_GCM_128) {
        struct tls12_crypto_info_aes_gcm_128 *c1 = buf;
        key = c1->key, salt = c1->salt, rec = c1->rec_seq;
    }
    ci->info.version = kk->version;
    ci->info.cipher_type = kk->cipher;
    memcpy(salt, kk->iv, 4);
    if (kk->version == TLS1_3_VERSION)
        memcpy(ci->iv, kk->iv + 4, 8);
    else
        be64(ci->iv, kk->seq);
    memcpy(key, kk->key, kk->key_len);
    be64(rec, kk->seq);
    return kk->cipher == TLS_CIPHER_AES_GCM_128 ? sizeof(struct tls12_crypto_info_aes_gcm_128)
                                                : sizeof(struct tls12_crypto_info_aes_gcm_256);
}

/* setsockopt on the connection: with fixed files (no fd of ours) through
 * the ring (IORING_OP_URING_CMD SOCKET_URING_OP_SETSOCKOPT, 6.7), waited
 * for as us_fd_install does; 0 or an errno */
static int set_opt(struct us_ring *r, uint32_t slot, uint32_t gen, int level, int name, const void *val,
                   uint32_t len)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return EBADF;
    if (!conn_fixed(r))
        return setsockopt(c->fd, level, name, val, len) < 0 ? errno : 0;
    uint64_t ud = UD(OP_SOCKOPT, slot, c->gen, 0);
    struct io_uring_sqe *sqe = prep(r, ud, (int)slot, 1, NULL, 0);
    if (!sqe)
        return EBUSY;
    sqe->cmd_op = SOCKET_URING_OP_SETSOCKOPT;
    sqe->addr = (uint64_t)(uint32_t)level | (uint64_t)(uint32_t)name << 32; /* level, optname */
    sqe->file_index = len;                                                  /* optlen */
    sqe->addr3 = (uint64_t)(uintptr_t)val;                                  /* optval */
    int res = sync_op(r, ud);
    return res < 0 ? -res : 0;
}

int ktls_start(struct us_ktls *k, SSL *ssl, struct us_ring *r, uint32_t slot, uint32_t gen)
{
    if (!k || k->state != US_KTLS_WANT)
        return k && k->state == US_KTLS_ON;
    if (!SSL_is_init_finished(ssl))
        return -EAGAIN;
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    /* ciphertext OpenSSL wrote (Finished, tickets) still in the arena would be encrypted again */
    if (c->q.queued || (c->flags & F_SEND_INFLIGHT))
        return -EAGAIN;
    int err = derive(k, ssl);
    OPENSSL_cleanse(k->secret, sizeof(k->secret));
    k->secret_len = 0;
    SSL_set_msg_callback(ssl, NULL); /* nothing more to count */
    if (!err && k->mode != US_KTLS_PRETEND) {
        err = set_opt(r, slot, gen, SOL_TCP, TCP_ULP, "tls", 3);
        if (!err) {
            /* a failure here leaves the ULP in its pass-through state: the OpenSSL path still works */
            unsigned char info[sizeof(struct tls12_crypto_info_aes_gcm_256) + 16];
            size_t n = crypto_info(&k->keys, info);
            err = set_opt(r, slot, gen, SOL_TLS, TLS_TX, info, (uint32_t)n);
            OPENSSL_cleanse(info, sizeof(info));
        }
    }
    if (err) {
        k->state = US_KTLS_FALLBACK;
        k->err = err;
        r->st.ktls_fallback++;
        return 0;
    }
    k->state = US_KTLS_ON;
    r->st.ktls_tx++;
    return 1;
}

int ktls_close_notify(struct us_ring *r, uint32_t slot, uint32_t gen)
{
    struct conn *c = conn_get(r, slot, gen);
    if (!c)
        return -EBADF;
    if (c->q.queued || (c->flags & F_SEND_INFLIGHT))
        return -EAGAIN; /* after every byte queued before it */
    /* an alert record (warning, close_notify) the kernel encrypts: a
     * control record, its type in a cmsg (linux/tls.h TLS_SET_RECORD_TYPE) */
    static const unsigned char alert[2] = {1, 0};
    union {
        char buf[CMSG_SPACE(1)];
        struct cmsghdr align;
    } ctl;
    memset(&ctl, 0, sizeof(ctl));
    struct iovec iov = {.iov_base = (void *)alert, .iov_len = sizeof(alert)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf)};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(1);
    *CMSG_DATA(cm) = 21; /* alert */
    int res;
    if (!conn_fixed(r)) {
        res = (int)sendmsg(c->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        res = res < 0 ? -errno : res;
    } else {
        uint64_t ud = UD(OP_ALERT, slot, c->gen, 0);
        struct io_uring_sqe *sqe = prep(r, ud, (int)slot, 1, &msg, 1);
        if (!sqe)
            return -EBUSY;
        sqe->msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL; /* a full socket fails now rather than be waited for */
        res = sync_op(r, ud);
    }
    return res == (int)sizeof(alert) ? 0 : res < 0 ? res : -EIO;
}

int ktls_status(const struct us_ktls *k, int *err)
{
    if (err)
        *err = k ? k->err : 0;
    return ktls_state(k);
}

int ktls_keys(const struct us_ktls *k, struct us_ktls_keys *out)
{
    if (!k || !k->derived)
        return -ENOENT;
    *out = k->keys;
    return 0;
}
