/* The handshake of a remote worker and its parent (core/tpar.h, "remote
 * workers"): mutual challenge-response with HMAC-SHA256 from libsodium.
 * Sans I/O: bytes in, bytes out. */
#include "tpar.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static const char LABEL_WORKER[] = "tpar-auth-1 worker";
static const char LABEL_PARENT[] = "tpar-auth-1 parent";

static int crypto_ready(void)
{
    return sodium_init() >= 0 ? 0 : -EIO; /* 1: already initialised */
}

int tpar_secret_new(uint8_t key[TPAR_SECRET_LEN], char hex[TPAR_SECRET_HEX + 1])
{
    if (crypto_ready() < 0)
        return -EIO;
    randombytes_buf(key, TPAR_SECRET_LEN);
    sodium_bin2hex(hex, TPAR_SECRET_HEX + 1, key, TPAR_SECRET_LEN);
    return 0;
}

int tpar_secret_from_env(uint8_t key[TPAR_SECRET_LEN])
{
    char *v = getenv(TPAR_SECRET_ENV);
    if (!v)
        return -ENOENT;
    size_t n = strlen(v), got = 0;
    const char *end = NULL;
    int rc = 0;
    if (n != TPAR_SECRET_HEX ||
        sodium_hex2bin(key, TPAR_SECRET_LEN, v, n, NULL, &got, &end) != 0 ||
        got != TPAR_SECRET_LEN || *end != '\0')
        rc = -EINVAL;
    /* In place: the initial environment's strings are what
     * /proc/PID/environ shows, and unsetenv only drops the pointer. */
    sodium_memzero(v, n);
    unsetenv(TPAR_SECRET_ENV);
    if (rc < 0)
        sodium_memzero(key, TPAR_SECRET_LEN);
    return rc;
}

/* HMAC(K, label | Np | Nw) */
static void mac(const tpar_auth *a, const char *label, uint8_t out[TPAR_AUTH_MAC_LEN])
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, a->key, TPAR_SECRET_LEN);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label));
    crypto_auth_hmacsha256_update(&st, a->np, TPAR_AUTH_NONCE_LEN);
    crypto_auth_hmacsha256_update(&st, a->nw, TPAR_AUTH_NONCE_LEN);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

/* The payload length of the AUTH frame expected at this step. */
static size_t step_len(int step)
{
    switch (step) {
    case TPAR_AUTH_CHALLENGE: return TPAR_AUTH_NONCE_LEN;
    case TPAR_AUTH_RESPONSE: return TPAR_AUTH_NONCE_LEN + TPAR_AUTH_MAC_LEN;
    case TPAR_AUTH_PROOF: return TPAR_AUTH_MAC_LEN;
    }
    return 0;
}

static int send_frame(tpar_auth *a, int step, const uint8_t *p, size_t n)
{
    return tpar_buf_frame(&a->out, TPAR_FRAME_AUTH, (uint8_t)step, p, n);
}

int tpar_auth_init(tpar_auth *a, int role, const uint8_t key[TPAR_SECRET_LEN])
{
    memset(a, 0, sizeof *a);
    if (crypto_ready() < 0)
        return -EIO;
    a->role = role;
    memcpy(a->key, key, TPAR_SECRET_LEN);
    if (role == TPAR_AUTH_WORKER) {
        a->step = TPAR_AUTH_CHALLENGE;
        return 0;
    }
    a->step = TPAR_AUTH_RESPONSE;
    randombytes_buf(a->np, sizeof a->np);
    int rc = send_frame(a, TPAR_AUTH_CHALLENGE, a->np, sizeof a->np);
    if (rc < 0)
        tpar_auth_clear(a);
    return rc;
}

size_t tpar_auth_want(const tpar_auth *a)
{
    if (!a->step)
        return 0;
    if (a->have < TPAR_FRAME_HEADER)
        return TPAR_FRAME_HEADER - a->have;
    return TPAR_FRAME_HEADER + step_len(a->step) - a->have;
}

/* The header in a->in is complete: is it the frame we expect? */
static int check_header(const tpar_auth *a)
{
    const uint8_t *h = a->in;
    uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
                   (uint32_t)h[3] << 24;
    if (len > TPAR_AUTH_FRAME_MAX)
        return TPAR_ETOOBIG;
    if (h[4] != TPAR_FRAME_AUTH || h[5] != a->step || h[6] || h[7] ||
        len != step_len(a->step))
        return TPAR_EBADFRAME;
    return 0;
}

/* A whole frame of the expected step is in a->in: act on it. */
static int step_done(tpar_auth *a)
{
    const uint8_t *p = a->in + TPAR_FRAME_HEADER;
    uint8_t want[TPAR_AUTH_MAC_LEN];
    int rc;
    a->have = 0;
    switch (a->step) {
    case TPAR_AUTH_CHALLENGE: /* worker: answer, and wait for the proof */
        memcpy(a->np, p, TPAR_AUTH_NONCE_LEN);
        randombytes_buf(a->nw, sizeof a->nw);
        uint8_t resp[TPAR_AUTH_NONCE_LEN + TPAR_AUTH_MAC_LEN];
        memcpy(resp, a->nw, TPAR_AUTH_NONCE_LEN);
        mac(a, LABEL_WORKER, resp + TPAR_AUTH_NONCE_LEN);
        if ((rc = send_frame(a, TPAR_AUTH_RESPONSE, resp, sizeof resp)) < 0)
            return rc;
        a->step = TPAR_AUTH_PROOF;
        return 0;
    case TPAR_AUTH_RESPONSE: /* parent: check, then prove */
        memcpy(a->nw, p, TPAR_AUTH_NONCE_LEN);
        mac(a, LABEL_WORKER, want);
        if (crypto_verify_32(want, p + TPAR_AUTH_NONCE_LEN) != 0)
            return TPAR_EAUTH;
        mac(a, LABEL_PARENT, want);
        if ((rc = send_frame(a, TPAR_AUTH_PROOF, want, sizeof want)) < 0)
            return rc;
        a->step = 0;
        return 1;
    case TPAR_AUTH_PROOF: /* worker: check */
        mac(a, LABEL_PARENT, want);
        if (crypto_verify_32(want, p) != 0)
            return TPAR_EAUTH;
        a->step = 0;
        return 1;
    }
    return TPAR_EBADFRAME;
}

int tpar_auth_feed(tpar_auth *a, const uint8_t *p, size_t n)
{
    if (n > tpar_auth_want(a))
        return TPAR_EBADFRAME; /* the caller's bug, or a handshake over */
    while (n) {
        size_t k = tpar_auth_want(a);
        if (k > n)
            k = n;
        int header_was_partial = a->have < TPAR_FRAME_HEADER;
        memcpy(a->in + a->have, p, k);
        a->have += k;
        p += k;
        n -= k;
        if (header_was_partial && a->have == TPAR_FRAME_HEADER) {
            int rc = check_header(a);
            if (rc < 0) {
                a->step = 0;
                return rc;
            }
        }
        if (a->have == TPAR_FRAME_HEADER + step_len(a->step)) {
            int rc = step_done(a);
            if (rc != 0) {
                if (rc < 0)
                    a->step = 0;
                return rc;
            }
        }
    }
    return 0;
}

void tpar_auth_clear(tpar_auth *a)
{
    tpar_buf_free(&a->out);
    sodium_memzero(a, sizeof *a);
}
