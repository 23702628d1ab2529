/* The Internet checksum (RFC 1071): one's-complement sum of 16-bit words.
 * Summed here 32 bits at a time into 64 bits and folded at the end; the sum
 * is byte-order independent (RFC 1071 section 2(B)), so words are loaded in
 * host order and the folded result is stored as is. */
#include <string.h>

#include "wire.h"

uint64_t ss_csum_add(uint64_t sum, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    uint32_t w;
    while (len >= 4) {
        memcpy(&w, p, 4);
        sum += w;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
        p += 2;
        len -= 2;
    }
    if (len) {
        /* The odd byte is the high half of a word padded with zero. */
        uint8_t last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    return sum;
}

uint16_t ss_csum_fold(uint64_t sum)
{
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffffffu) + (sum >> 32);
    sum = (sum & 0xffffu) + (sum >> 16);
    sum = (sum & 0xffffu) + (sum >> 16);
    return (uint16_t)~sum;
}

uint64_t ss_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len)
{
    uint8_t ph[12];
    ss_wr32(ph, src);
    ss_wr32(ph + 4, dst);
    ph[8] = 0;
    ph[9] = proto;
    ss_wr16(ph + 10, len);
    return ss_csum_add(0, ph, sizeof ph);
}
