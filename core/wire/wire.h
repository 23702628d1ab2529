/*
 * Wire formats: parse and emit for Ethernet II, ARP, IPv4, ICMP and TCP.
 *
 * Pure functions over bytes; no protocol state.  A parse function checks
 * lengths before it reads anything and fills a "repr", the validated form of
 * the header; an emit function writes exactly the header's length.  Every
 * multi-byte field of a repr is in host byte order.
 */
#ifndef SS_WIRE_H
#define SS_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* ---- checksum (RFC 1071) ---- */
uint64_t ss_csum_add(uint64_t sum, const void *buf, size_t len);
uint16_t ss_csum_fold(uint64_t sum); /* the complemented 16-bit result, ready to store */
uint64_t ss_csum_pseudo(uint32_t src, uint32_t dst, uint8_t proto, uint16_t len);

/* ---- Ethernet II ---- */
#define SS_ETH_HLEN 14
#define SS_ETHERTYPE_IPV4 0x0800
#define SS_ETHERTYPE_ARP 0x0806

struct ss_eth_repr {
    uint8_t dst[6];
    uint8_t src[6];
    uint16_t type;
};
int ss_eth_parse(const uint8_t *buf, size_t len, struct ss_eth_repr *r); /* 0, or -1 if short */
void ss_eth_emit(uint8_t *buf, const struct ss_eth_repr *r);

/* ---- ARP (RFC 826), Ethernet/IPv4 only ---- */
#define SS_ARP_LEN 28
#define SS_ARP_REQUEST 1
#define SS_ARP_REPLY 2

struct ss_arp_repr {
    uint16_t op;
    uint8_t sha[6];
    uint32_t spa;
    uint8_t tha[6];
    uint32_t tpa;
};
int ss_arp_parse(const uint8_t *buf, size_t len, struct ss_arp_repr *r); /* 0, or -1 malformed */
void ss_arp_emit(uint8_t *buf, const struct ss_arp_repr *r);

/* ---- IPv4 (RFC 791) ---- */
#define SS_IP_HLEN 20
#define SS_IPPROTO_ICMP 1
#define SS_IPPROTO_TCP 6
#define SS_IP_DF 0x4000
#define SS_IP_MF 0x2000
#define SS_IP_OFFMASK 0x1fff

enum ss_ip_err { SS_IP_OK = 0, SS_IP_SHORT, SS_IP_VERSION, SS_IP_HDRLEN, SS_IP_LEN, SS_IP_CHECKSUM };

struct ss_ip_repr {
    uint32_t src, dst;
    uint8_t proto, ttl, tos;
    uint16_t id;
    uint16_t frag;      /* flags and fragment offset, as on the wire */
    uint16_t hdr_len;   /* bytes, options included */
    uint16_t total_len; /* bytes, header included */
};
/* Returns enum ss_ip_err; trailing bytes past total_len (ethernet padding)
 * are allowed and ignored. */
int ss_ip_parse(const uint8_t *buf, size_t len, struct ss_ip_repr *r);
/* Writes a 20-byte header (no options) with its checksum. */
void ss_ip_emit(uint8_t *buf, const struct ss_ip_repr *r);

/* ---- ICMP (RFC 792) ---- */
#define SS_ICMP_HLEN 8
#define SS_ICMP_ECHO_REPLY 0
#define SS_ICMP_DEST_UNREACH 3
#define SS_ICMP_ECHO_REQUEST 8
#define SS_ICMP_CODE_PROTO_UNREACH 2
#define SS_ICMP_CODE_PORT_UNREACH 3
#define SS_ICMP_CODE_FRAG_NEEDED 4

enum ss_icmp_err { SS_ICMP_OK = 0, SS_ICMP_SHORT, SS_ICMP_CHECKSUM };

struct ss_icmp_repr {
    uint8_t type, code;
    uint32_t rest; /* the 4 bytes after the checksum: echo id/seq, next-hop MTU */
    const uint8_t *payload;
    size_t payload_len;
};
int ss_icmp_parse(const uint8_t *buf, size_t len, struct ss_icmp_repr *r);
/* Header at buf, payload already at buf + 8; computes the checksum. */
void ss_icmp_emit(uint8_t *buf, const struct ss_icmp_repr *r);

/* ---- TCP (RFC 9293, options RFC 7323 and RFC 2018) ---- */
#define SS_TCP_HLEN 20
#define SS_TH_FIN 0x01
#define SS_TH_SYN 0x02
#define SS_TH_RST 0x04
#define SS_TH_PSH 0x08
#define SS_TH_ACK 0x10
#define SS_TH_URG 0x20
#define SS_TCP_MAX_SACK 4

enum ss_tcp_err { SS_TCP_OK = 0, SS_TCP_SHORT, SS_TCP_DOFF, SS_TCP_CHECKSUM, SS_TCP_OPTIONS, SS_TCP_FLAGS };

struct ss_tcp_repr {
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint8_t flags;
    uint16_t wnd;
    uint16_t urp;
    uint16_t hdr_len; /* bytes, options included */
    /* options */
    uint8_t has_mss, has_ws, sack_ok, has_ts, nsack;
    uint16_t mss;
    uint8_t ws;
    uint32_t tsval, tsecr;
    uint32_t sack[SS_TCP_MAX_SACK][2]; /* [left, right) */
    /* payload */
    const uint8_t *payload;
    uint32_t len;
};
/* Validates the segment (header, checksum over the pseudo-header, options,
 * flags) and fills r.  Returns enum ss_tcp_err. */
int ss_tcp_parse(const uint8_t *buf, size_t len, uint32_t src, uint32_t dst, struct ss_tcp_repr *r);
/* Header length that ss_tcp_emit() will write for r's options. */
size_t ss_tcp_hdr_len(const struct ss_tcp_repr *r);
/* Writes the header at buf; r->len payload bytes must already be at
 * buf + ss_tcp_hdr_len(r).  Computes the checksum.  Returns the header length. */
size_t ss_tcp_emit(uint8_t *buf, const struct ss_tcp_repr *r, uint32_t src, uint32_t dst);

/* Byte-order helpers that do not depend on alignment. */
static inline uint16_t ss_rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t ss_rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void ss_wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void ss_wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

#endif
