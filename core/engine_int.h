/*
 * The engine's private structures, shared by its layers and by nothing else.
 *
 * Call flow of a received frame:
 *   ss_engine_input (engine.c) -> ss_arp_input (arp.c)
 *                              -> ss_ip_input (ipv4.c) -> ss_icmp_input (icmp.c)
 *                                                      -> ss_tcp_input (tcp_in.c)
 * and of a sent segment:
 *   ss_tcp_output / ss_tcp_send_* (tcp_out.c) -> ss_ip_output (ipv4.c)
 *     -> ss_arp_output (arp.c: resolve the next hop, or queue) -> cfg.tx
 */
#ifndef SS_ENGINE_INT_H
#define SS_ENGINE_INT_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <shardsock/engine.h>

#include "wire/wire.h"

#define SS_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
#define SS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SS_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Sequence-number comparisons modulo 2^32 (RFC 9293 3.4). */
#define SEQ_LT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) < 0)
#define SEQ_LEQ(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) <= 0)
#define SEQ_GT(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) > 0)
#define SEQ_GEQ(a, b) ((int32_t)((uint32_t)(a) - (uint32_t)(b)) >= 0)

/* ---- intrusive doubly linked list; an unlinked node points at itself ---- */
struct ss_list {
    struct ss_list *next, *prev;
};
static inline void ss_list_init(struct ss_list *l) { l->next = l->prev = l; }
static inline bool ss_list_empty(const struct ss_list *l) { return l->next == l; }
static inline void ss_list_add_tail(struct ss_list *head, struct ss_list *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
static inline void ss_list_del(struct ss_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = n;
}

/* ---- timer wheel (timer_wheel.c) ----
 * Two levels of 4096 slots: level 0 one millisecond a slot (the next 4.096
 * s), level 1 4.096 s a slot (about 4.6 hours); a level-1 slot cascades into
 * level 0 when its time comes.  Insert and cancel are O(1); the next
 * deadline is a scan of two bitmaps; no scan of all timers ever happens. */
#define SS_WHEEL_BITS 12
#define SS_WHEEL_SLOTS (1u << SS_WHEEL_BITS)
_Static_assert(SS_WHEEL_SLOTS == 64 * 64, "one summary word covers the bitmap");

struct ss_timer {
    struct ss_list link;
    uint64_t tick; /* the deadline in ms, rounded up */
    bool armed;
    uint8_t level;
    uint16_t slot;
};
struct ss_wheel_level {
    struct ss_list slot[SS_WHEEL_SLOTS];
    uint64_t busy[SS_WHEEL_SLOTS / 64]; /* bit set: the slot holds a timer */
    uint64_t summary;                   /* bit set: that word of busy is non-zero */
};
struct ss_wheel {
    struct ss_wheel_level level[2];
    /* Earliest tick placed in each level-1 slot since it was last empty; a
     * cancel may leave it early (an early wake-up), never late. */
    uint64_t level1_min[SS_WHEEL_SLOTS];
    uint64_t done; /* every tick up to this one has been run */
    uint32_t armed;
};
void ss_wheel_init(struct ss_wheel *w, uint64_t now_us);
void ss_timer_init(struct ss_timer *t);
void ss_timer_set(struct ss_wheel *w, struct ss_timer *t, uint64_t at_us);
void ss_timer_cancel(struct ss_wheel *w, struct ss_timer *t);
/* Moves every due timer onto out (a list of ss_timer.link) and disarms it. */
void ss_wheel_collect(struct ss_wheel *w, uint64_t now_us, struct ss_list *out);
/* When ss_wheel_collect must next run (a due timer or a cascade), in us. */
uint64_t ss_wheel_next(const struct ss_wheel *w);

/* ---- byte ring (bytering.c) ----
 * A power-of-two ring of bytes, allocated on first use; its owner releases it when it
 * empties, so an idle connection holds no buffer memory. */
struct ss_ring {
    uint8_t *buf;
    uint32_t cap;  /* fixed at creation; the allocation is made lazily */
    uint32_t head; /* offset of the first byte */
    uint32_t len;  /* bytes held from head */
};
void ss_ring_init(struct ss_ring *r, uint32_t cap);
void ss_ring_free(struct ss_ring *r);
static inline uint32_t ss_ring_space(const struct ss_ring *r) { return r->cap - r->len; }
/* Appends up to n bytes; returns how many (0 on allocation failure). */
uint32_t ss_ring_push(struct ss_ring *r, const void *data, uint32_t n);
/* Writes n bytes at off bytes past the end of the held data (out-of-order
 * arrival); the caller guarantees off + n <= space. */
int ss_ring_write_at(struct ss_ring *r, uint32_t off, const void *data, uint32_t n);
/* Makes n bytes written by ss_ring_write_at part of the held data. */
void ss_ring_commit(struct ss_ring *r, uint32_t n);
void ss_ring_peek(const struct ss_ring *r, uint32_t off, void *dst, uint32_t n);
void ss_ring_drop(struct ss_ring *r, uint32_t n);
/* Puts n bytes back in front of what the ring holds (the caller checked
 * the space); -1 when no buffer can be had. */
int ss_ring_unshift(struct ss_ring *r, const void *data, uint32_t n);

/* ---- SipHash-2-4 (siphash.c), the keyed hash of RFC 6528 and RFC 4987 ---- */
uint64_t ss_siphash(const uint64_t key[2], const void *data, size_t len);

/* ---- ARP cache (arp.c) ---- */
#define SS_ARP_ENTRIES 128

struct ss_pkt {
    struct ss_pkt *next;
    uint16_t len;
    uint8_t data[]; /* an IPv4 packet waiting for its next hop's MAC */
};
enum { SS_ARP_FREE = 0, SS_ARP_INCOMPLETE, SS_ARP_REACHABLE, SS_ARP_STATIC };
struct ss_arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;
    uint8_t tries;
    uint64_t deadline_us; /* INCOMPLETE: next request; REACHABLE: expiry */
    struct ss_pkt *queue, **queue_tail;
    uint32_t queued;
};

/* ---- TCP control block ---- */
#define SS_OOO_MAX 8 /* out-of-order ranges kept per connection */
#define SS_SACK_MAX 8 /* SACKed ranges the sender keeps (tcp_sack.c) */

/* A SYN answered by an unacceptable ACK goes again this soon (Linux's
 * TCP_TIMEOUT_MIN, two jiffies). */
#define SS_SYN_RETRY_SOON_US 2000

enum ss_tcb_timer { SS_T_RTX, SS_T_PERSIST, SS_T_DELACK, SS_T_KEEP, SS_T_2MSL, SS_T_COUNT };

struct ss_tcb {
    struct ss_engine *e;
    int sid;           /* user socket id, -1 once closed by the user */
    uint8_t state;     /* enum ss_tcp_state; changed only by ss_tcp_set_state */
    /* ownership and links */
    bool hashed;       /* in the flow table */
    bool bound;        /* in the bind table */
    bool autobound;    /* port picked by connect, shareable by distinct 4-tuples */
    bool in_accept_q;
    bool ev_pending;
    bool reaping;      /* on the engine's reap list: freed at the end of the call */
    struct ss_list flow_link, bind_link, ev_link, reap_link;
    struct ss_list listen_link; /* in the listen table while in LISTEN */
    struct ss_list child_link;  /* in the listener's syn or accept list */
    struct ss_tcb *listener;    /* SYN-RECEIVED or unaccepted child's listener */
    /* listener only */
    struct ss_list syn_q, accept_q;
    uint32_t syn_len, accept_len, backlog;
    uint32_t ahead;    /* accepted ahead, not yet taken by the application (ss_tcp_set_ahead) */
    /* the connection */
    uint32_t lip, rip;
    uint16_t lport, rport;
    /* options and flags set by the user */
    bool nodelay, keepalive, reuseaddr, reuseport, linger_zero;
    uint16_t active;       /* listener: how many processes use it (SS_OPT_ACTIVE) */
    bool spawned;          /* listener: a process's local share of an inherited one */
    bool via_fallback;     /* child: its SYN was handed over by another instance */
    uint8_t cork;          /* SS_OPT_CORK bits */
    bool in_send;          /* output on behalf of ss_tcp_send (MSG_MORE applies) */
    uint32_t defer_accept_s; /* listener: TCP_DEFER_ACCEPT */
    uint64_t syn_us;       /* a passive child: when its SYN came (TCP_DEFER_ACCEPT) */
    uint32_t ka_idle_ms, ka_intvl_ms, ka_probes;
    uint16_t user_mss;
    /* shutdown and close */
    bool user_closed;  /* close() called: orphan */
    bool rd_shut;      /* SHUT_RD */
    bool wr_shut;      /* SHUT_WR or close: a FIN follows the data */
    bool fin_sent;     /* our FIN has a sequence number (snd_fin) */
    bool fin_rcvd;     /* the peer's FIN was consumed: end of stream */
    bool ooo_fin;      /* a FIN arrived out of order at ooo_fin_seq */
    int soft_error;    /* ICMP soft error, reported if the connection times out */
    int error;         /* pending SO_ERROR, negative errno */
    bool reset;        /* ended by RST: reads give ECONNRESET once, then 0 */
    /* send sequence space (RFC 9293 3.3.1) */
    uint32_t iss, snd_una, snd_nxt, snd_max, snd_wnd, snd_wl1, snd_wl2;
    uint32_t snd_fin;     /* sequence number of our FIN when fin_sent */
    uint32_t max_snd_wnd; /* largest window the peer offered (SWS, RFC 5961 5.2) */
    uint32_t buf_seq;     /* sequence number of the first byte in sndbuf */
    uint8_t snd_wscale, rcv_wscale;
    bool ws_ok, ts_ok, sack_ok, cookie;
    uint16_t peer_mss;
    uint32_t smss;        /* payload per segment, after options */
    /* receive sequence space */
    uint32_t irs, rcv_nxt, rcv_adv; /* rcv_adv: right edge we advertised */
    uint32_t last_ack_sent;
    uint32_t ooo_fin_seq;
    uint32_t ooo[SS_OOO_MAX][2];    /* out-of-order ranges [left, right), most recent first */
    uint32_t nooo;
    /* timestamps (RFC 7323) */
    uint32_t ts_recent, ts_offset;
    uint64_t ts_recent_us;
    /* round-trip timing (RFC 6298): one segment at a time, Karn's rule */
    uint32_t srtt_us, rttvar_us, rto_us;
    bool rtt_measured;    /* a first sample was taken (RFC 6298 2.2) */
    bool rtt_timing;
    uint32_t rtt_seq;
    uint64_t rtt_start_us;
    uint32_t backoff;     /* consecutive timeouts */
    /* congestion control (RFC 5681, NewReno RFC 6582) */
    uint32_t cwnd, ssthresh, recover, dupacks;
    uint32_t bytes_acked;  /* RFC 3465 congestion avoidance: acked since cwnd last grew */
    bool in_recovery;
    bool sack_recovery;   /* the recovery is RFC 6675's, not NewReno's */
    /* SACK scoreboard (tcp_sack.c): ranges the peer holds above SND.UNA,
     * ascending and disjoint; HighRxt of RFC 6675 */
    uint32_t sacked[SS_SACK_MAX][2];
    uint32_t nsacked;
    uint32_t high_rxt;
    /* delayed ACK */
    uint32_t unacked_segs; /* full-sized segments received since our last ACK */
    uint32_t rcv_mss;      /* largest segment seen, our "full-sized" (RFC 5681 4.2) */
    bool ack_now;
    bool partial_ack_seen; /* RFC 6582 "impatient" timer reset, first partial ACK only */
    uint32_t persist_backoff;
    /* keepalive */
    uint32_t ka_sent;
    uint64_t last_rcv_us;
    /* buffers */
    struct ss_ring sndbuf, rcvbuf;
    /* timers: one wheel entry at the earliest armed deadline */
    uint64_t deadline[SS_T_COUNT];
    struct ss_timer timer;
};

/* ---- the instance ---- */
#define SS_BIND_BUCKETS 1024

struct ss_engine {
    struct ss_engine_config cfg;
    struct ss_counters *ctr; /* cfg.counters, or own_ctr */
    struct ss_counters own_ctr;
    uint64_t now_us;  /* time of the call being served */
    /* the received frame being served, for forwarding to its flow's owner */
    const uint8_t *in_frame;
    size_t in_len;
    bool in_forwarded; /* it came from another instance: never forward it */
    bool in_loopback;  /* it was looped back here: 127.0.0.0/8 addresses are ours */
    /* packets to 127.0.0.0/8, as Ethernet frames to ourselves, input by
     * the next ss_engine_poll (the engine's lo) */
    struct ss_pkt *loop_head, *loop_tail;
    uint32_t loop_len;
    uint16_t ip_id;
    /* ARP */
    struct ss_arp_entry arp[SS_ARP_ENTRIES];
    uint32_t narp;
    struct ss_timer arp_timer;
    /* sockets */
    struct ss_tcb **socks;   /* by socket id */
    int *free_ids;
    uint32_t nfree;
    uint32_t ntcb;           /* all control blocks, orphans included */
    struct ss_list *flows;   /* flow table buckets */
    uint32_t flow_mask;
    struct ss_list binds[SS_BIND_BUCKETS];   /* every socket with a local port */
    struct ss_list listens[SS_BIND_BUCKETS]; /* listeners only, by port */
    struct ss_list events;
    struct ss_list reap;     /* orphans whose connection ended during this call */
    uint32_t port_next;
    uint64_t last_cookie_us; /* when a SYN cookie was last sent; 0: never */
    /* timers */
    struct ss_wheel wheel;
    /* RFC 5961 section 7 rate limit */
    uint64_t challenge_window_us;
    uint32_t challenge_count;
    /* output */
    uint8_t frame[16384];    /* scratch for the frame being built */
};

/* engine.c */
void ss_engine_tx(struct ss_engine *e, const uint8_t *frame, size_t len);
void ss_tcb_notify(struct ss_tcb *t);
/* For a TCP segment that matches no connection here: true when another
 * instance owns the flow (syn: listens on the port) and the frame being
 * served went to it (or was dropped because its ring was full; counted
 * either way). */
/* mode: SS_FWD_FLOW (the flow's owner), SS_FWD_LISTENER (any listener),
 * SS_FWD_ACTIVE (a listener in use). */
enum { SS_FWD_FLOW, SS_FWD_LISTENER, SS_FWD_ACTIVE };
bool ss_engine_forward(struct ss_engine *e, uint32_t rip, uint16_t rport, uint16_t lport, int mode);
/* Frees the orphans that ended during the current call. */
void ss_engine_reap(struct ss_engine *e);

/* arp.c */
void ss_arp_input(struct ss_engine *e, const uint8_t *pkt, size_t len, const struct ss_eth_repr *eth);
/* frame holds an IPv4 packet at SS_ETH_HLEN, ip_len bytes long, for next hop nh. */
void ss_arp_output(struct ss_engine *e, uint8_t *frame, size_t ip_len, uint32_t nh);
void ss_arp_announce(struct ss_engine *e);
void ss_arp_timer(struct ss_engine *e);
void ss_arp_destroy(struct ss_engine *e);

/* ipv4.c */
void ss_ip_input(struct ss_engine *e, const uint8_t *pkt, size_t len);
/* The frame scratch holds the transport payload at SS_ETH_HLEN + SS_IP_HLEN,
 * payload_len bytes; adds the IPv4 header and sends.  Returns 0 or -errno. */
int ss_ip_output(struct ss_engine *e, uint32_t src, uint32_t dst, uint8_t proto, size_t payload_len);
#define SS_IP_LOOPBACK(a) (((a) >> 24) == 127)
#define SS_IP_LOOPBACK_SRC 0x7f000001u /* 127.0.0.1: Linux's source towards 127.0.0.0/8 */
#define SS_LOOP_QUEUE_MAX 1024
void ss_ip_loop_drain(struct ss_engine *e);
void ss_engine_input_looped(struct ss_engine *e, const uint8_t *frame, size_t len);
bool ss_ip_routable(const struct ss_engine *e, uint32_t dst);

/* icmp.c */
void ss_icmp_input(struct ss_engine *e, const struct ss_ip_repr *ip, const uint8_t *pkt, size_t len);

/* tcp.c: control blocks, tables, state */
struct ss_tcb *ss_tcb_alloc(struct ss_engine *e);
void ss_tcb_free(struct ss_tcb *t);
void ss_tcp_set_state(struct ss_tcb *t, int state);
struct ss_tcb *ss_flow_lookup(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport);
void ss_flow_insert(struct ss_tcb *t);
struct ss_tcb *ss_listener_lookup(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport);
void ss_bind_insert(struct ss_tcb *t);
/* Ends the connection: error (negative errno or 0) becomes SO_ERROR,
 * the state becomes CLOSED and an orphan is freed. */
void ss_tcp_done(struct ss_tcb *t, int error);
void ss_tcp_child_established(struct ss_tcb *t);
uint32_t ss_tcp_isn(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport);
uint32_t ss_tcp_ts_offset(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport);
uint32_t ss_tcp_rcv_window(const struct ss_tcb *t);
void ss_tcp_init_conn(struct ss_tcb *t);

/* tcp_in.c */
void ss_tcp_input(struct ss_engine *e, const struct ss_ip_repr *ip, struct ss_tcp_repr *seg);
void ss_tcp_listen_input(struct ss_tcb *l, const struct ss_ip_repr *ip, struct ss_tcp_repr *seg, uint32_t min_iss);
void ss_tcp_icmp_error(struct ss_engine *e, uint32_t lip, uint16_t lport, uint32_t rip, uint16_t rport,
                       uint32_t seq, uint8_t code, uint16_t mtu);

/* tcp_out.c */
void ss_tcp_output(struct ss_tcb *t);
void ss_tcp_send_ack(struct ss_tcb *t);
void ss_tcp_send_challenge_ack(struct ss_tcb *t);
void ss_tcp_send_syn(struct ss_tcb *t);
void ss_tcp_send_rst_for(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg);
void ss_tcp_send_rst(struct ss_tcb *t);
void ss_tcp_send_keepalive(struct ss_tcb *t);
void ss_tcp_send_probe(struct ss_tcb *t);
/* Returns the sequence space it resent. */
uint32_t ss_tcp_retransmit_first(struct ss_tcb *t);
void ss_tcp_send_cookie_synack(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg,
                               uint32_t cookie, uint16_t mss);

/* tcp_sack.c */
void ss_sack_prune(struct ss_tcb *t);
/* Takes the segment's SACK blocks; returns how many bytes are newly SACKed. */
uint32_t ss_sack_update(struct ss_tcb *t, const struct ss_tcp_repr *s);
bool ss_sack_is_lost(const struct ss_tcb *t, uint32_t seq);
/* SACKed bytes below upto. */
uint32_t ss_sack_bytes(const struct ss_tcb *t, uint32_t upto);
/* Resending from *seq after a timeout: moves *seq past a SACKed range it is
 * in, and returns how many bytes may go before the next one. */
uint32_t ss_sack_resend_span(const struct ss_tcb *t, uint32_t *seq);
uint32_t ss_sack_pipe(const struct ss_tcb *t);
uint32_t ss_sack_next_hole(const struct ss_tcb *t, uint32_t mss, bool lost_only, uint32_t *seq);

/* tcp_timer.c */
void ss_tcp_timer_set(struct ss_tcb *t, int which, uint64_t at_us);
void ss_tcp_timer_clear(struct ss_tcb *t, int which);
void ss_tcp_timers_run(struct ss_tcb *t);
void ss_tcp_rtt_sample(struct ss_tcb *t, uint32_t rtt_us);
void ss_tcp_arm_rtx(struct ss_tcb *t);
void ss_tcp_handshake_rto(struct ss_tcb *t);

/* tcp_syncookie.c (RFC 4987) */
uint32_t ss_syncookie_make(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg,
                           uint16_t *mss_inout);
/* The MSS encoded in a valid cookie, or 0. */
uint16_t ss_syncookie_check(struct ss_engine *e, const struct ss_ip_repr *ip, const struct ss_tcp_repr *seg);

#endif
