/* Byte rings for the send and receive buffers of a connection. */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

void ss_ring_init(struct ss_ring *r, uint32_t cap)
{
    uint32_t c = 1;
    while (c < cap)
        c <<= 1;
    r->buf = NULL;
    r->cap = c;
    r->head = r->len = 0;
}

void ss_ring_free(struct ss_ring *r)
{
    free(r->buf);
    r->buf = NULL;
    r->head = r->len = 0;
}

static int ensure(struct ss_ring *r)
{
    if (!r->buf)
        r->buf = malloc(r->cap);
    return r->buf ? 0 : -1;
}

static void copy_in(struct ss_ring *r, uint32_t pos, const uint8_t *src, uint32_t n)
{
    uint32_t at = pos & (r->cap - 1);
    uint32_t first = SS_MIN(n, r->cap - at);
    memcpy(r->buf + at, src, first);
    memcpy(r->buf, src + first, n - first);
}

uint32_t ss_ring_push(struct ss_ring *r, const void *data, uint32_t n)
{
    n = SS_MIN(n, ss_ring_space(r));
    if (!n || ensure(r) < 0)
        return 0;
    copy_in(r, r->head + r->len, data, n);
    r->len += n;
    return n;
}

int ss_ring_write_at(struct ss_ring *r, uint32_t off, const void *data, uint32_t n)
{
    if (ensure(r) < 0)
        return -1;
    copy_in(r, r->head + r->len + off, data, n);
    return 0;
}

void ss_ring_commit(struct ss_ring *r, uint32_t n) { r->len += n; }

void ss_ring_peek(const struct ss_ring *r, uint32_t off, void *dst, uint32_t n)
{
    uint32_t at = (r->head + off) & (r->cap - 1);
    uint32_t first = SS_MIN(n, r->cap - at);
    memcpy(dst, r->buf + at, first);
    memcpy((uint8_t *)dst + first, r->buf, n - first);
}

int ss_ring_unshift(struct ss_ring *r, const void *data, uint32_t n)
{
    if (ensure(r) < 0)
        return -1;
    /* out-of-order bytes sit at positions relative to head + len, which
     * this leaves where it was */
    r->head = (r->head - n) & (r->cap - 1);
    r->len += n;
    copy_in(r, r->head, data, n);
    return 0;
}

void ss_ring_drop(struct ss_ring *r, uint32_t n)
{
    r->head = (r->head + n) & (r->cap - 1);
    r->len -= n;
    /* head is not rewound when the ring empties: out-of-order bytes may
     * already sit beyond the end, at positions relative to head + len. */
}
