/*
 * shardsock counters: the one list of every counter an instance keeps.
 *
 * This header is part of the ABI shared by the engine, the instance daemon,
 * the preload library and Python (read through cffi from the same file, after
 * the preprocessor has expanded the lists below).  Each counter is a uint64_t
 * that only its instance writes; readers may see a value one update old.
 *
 * SS_COUNTERS(X) expands X(name, description) once per counter.  Drops carry
 * the prefix drop_ and name their reason, so "every frame is accounted for"
 * is a sum over this list.
 */
#ifndef SHARDSOCK_COUNTERS_H
#define SHARDSOCK_COUNTERS_H

#ifndef SS_CDEF
#include <stdint.h>
#endif

#define SS_COUNTERS(X)                                                              \
    /* link layer */                                                                \
    X(eth_rx_frames, "frames received")                                             \
    X(eth_rx_bytes, "bytes received, ethernet header included")                     \
    X(eth_tx_frames, "frames sent")                                                 \
    X(eth_tx_bytes, "bytes sent, ethernet header included")                         \
    X(drop_eth_short, "frame shorter than an ethernet header")                      \
    X(drop_eth_not_ours, "destination MAC neither ours nor broadcast")              \
    X(drop_eth_type, "ethertype neither IPv4 nor ARP")                              \
    /* ARP */                                                                       \
    X(arp_rx, "ARP packets received")                                               \
    X(arp_tx_requests, "ARP requests sent (gratuitous ones included)")              \
    X(arp_tx_replies, "ARP replies sent")                                           \
    X(arp_cache_updates, "ARP cache entries created or refreshed")                  \
    X(arp_resolve_failed, "next hops that never answered; queued packets dropped")  \
    X(drop_arp_malformed, "ARP packet truncated or not Ethernet/IPv4")              \
    X(drop_arp_not_ours, "ARP request for an address that is not ours")             \
    X(drop_arp_queue_full, "packets dropped waiting for ARP: queue full")           \
    X(drop_arp_no_space, "ARP cache full of unresolved entries")                    \
    /* IPv4 */                                                                      \
    X(ip_rx_packets, "IPv4 packets received")                                       \
    X(ip_tx_packets, "IPv4 packets sent")                                           \
    X(ip_loop_packets, "IPv4 packets to 127.0.0.0/8, looped back inside the stack")  \
    X(drop_ip_loop_full, "looped-back packets dropped: the loopback queue full")      \
    X(ip_options_skipped, "IPv4 packets whose options were skipped")                \
    X(drop_ip_short, "IPv4 packet shorter than its header")                         \
    X(drop_ip_version, "IP version not 4")                                          \
    X(drop_ip_hdrlen, "IPv4 header length below 20 or beyond the packet")           \
    X(drop_ip_len, "IPv4 total length inconsistent with the frame")                 \
    X(drop_ip_checksum, "IPv4 header checksum wrong")                               \
    X(drop_ip_bad_src, "source address broadcast, multicast, zero or loopback")     \
    X(drop_ip_not_ours, "destination address not ours")                             \
    X(drop_ip_fragment, "IPv4 fragments (reassembly is not done)")                  \
    X(drop_ip_proto, "IP protocol neither TCP nor ICMP")                            \
    X(drop_ip_no_route, "no route to the destination")                              \
    /* ICMP */                                                                      \
    X(icmp_rx, "ICMP messages received")                                            \
    X(icmp_echo_replies, "ICMP echo replies sent")                                  \
    X(icmp_dest_unreach, "ICMP destination unreachable received for TCP")           \
    X(icmp_frag_needed, "ICMP fragmentation needed acted on (RFC 1191)")            \
    X(icmp_hard_errors, "ICMP port/protocol unreachable acted on (RFC 1122)")       \
    X(drop_icmp_short, "ICMP message truncated")                                    \
    X(drop_icmp_checksum, "ICMP checksum wrong")                                    \
    X(drop_icmp_type, "ICMP type not handled")                                      \
    X(drop_icmp_no_conn, "ICMP error for no connection or outside its window")      \
    /* TCP: wire */                                                                 \
    X(tcp_rx_segments, "TCP segments received and validated")                       \
    X(tcp_tx_segments, "TCP segments sent")                                         \
    X(drop_tcp_short, "TCP segment shorter than its header")                        \
    X(drop_tcp_doff, "TCP data offset below 5 or beyond the segment")               \
    X(drop_tcp_checksum, "TCP checksum wrong")                                      \
    X(drop_tcp_options, "TCP option with an illegal length")                        \
    X(drop_tcp_flags, "illegal TCP flag combination or port zero")                  \
    /* TCP: demultiplexing and state */                                             \
    X(tcp_rst_tx, "resets sent")                                                    \
    X(tcp_rst_rx, "resets accepted")                                                \
    X(drop_tcp_no_socket, "segment for no connection or listener")                  \
    X(drop_tcp_bad_rst, "reset outside the window or not exactly at RCV.NXT")       \
    X(drop_tcp_bad_ack, "unacceptable ACK (RFC 5961 section 5 or RFC 9293)")        \
    X(drop_tcp_out_of_window, "segment outside the receive window")                 \
    X(drop_tcp_paws, "segment rejected by PAWS (RFC 7323)")                         \
    X(drop_tcp_state, "segment not acceptable in the connection's state")           \
    X(drop_tcp_ooo_full, "out-of-order segment with no room to keep it")            \
    X(drop_tcp_listen_overflow, "SYN dropped: accept queue full")                   \
    X(drop_tcp_accept_overflow, "final ACK dropped: accept queue full")             \
    X(tcp_challenge_acks, "challenge ACKs sent (RFC 5961)")                         \
    X(tcp_challenge_ack_limited, "challenge ACKs suppressed by the rate limit")     \
    X(tcp_passive_opens, "connections opened by a peer's SYN")                      \
    X(tcp_active_opens, "connections opened by connect")                            \
    X(tcp_estab_resets, "established connections reset")                            \
    X(tcp_attempt_fails, "connection attempts failed")                              \
    X(tcp_timeouts, "connections aborted by retransmission or keepalive timeout")   \
    X(tcp_retransmits, "segments retransmitted")                                    \
    X(tcp_rto_expired, "retransmission timer expiries")                             \
    X(tcp_fast_retransmits, "fast retransmits (RFC 5681)")                          \
    X(tcp_partial_acks, "NewReno partial ACKs (RFC 6582)")                          \
    X(tcp_sack_recoveries, "loss recoveries driven by SACK (RFC 6675)")             \
    X(tcp_dsack_rx, "D-SACK blocks received: the peer got a segment twice (RFC 2883)") \
    X(drop_tcp_bad_sack, "SACK blocks ignored: empty or beyond what was sent")       \
    X(tcp_sack_reneging, "scoreboards dropped: the peer discarded data it had SACKed") \
    X(tcp_dup_acks_rx, "duplicate ACKs received")                                   \
    X(tcp_ooo_segments, "out-of-order segments queued")                             \
    X(tcp_delayed_acks, "ACKs sent by the delayed-ACK timer")                       \
    X(tcp_zero_window_probes, "zero-window probes sent")                            \
    X(tcp_cork_timeouts, "corked partial segments sent because they waited an RTO") \
    X(tcp_defer_accept_drops, "bare ACKs ignored while the listener defers accept")  \
    X(tcp_keepalive_probes, "keepalive probes sent")                                \
    X(tcp_syncookies_sent, "SYN cookies sent (SYN queue full)")                     \
    X(tcp_syncookies_ok, "connections completed from a valid SYN cookie")           \
    X(tcp_syncookies_failed, "ACKs with an invalid SYN cookie")                     \
    X(tcp_timewait_reuse, "TIME-WAIT pairs reused by a new SYN")                    \
    X(tcp_timewait_reuse_connect, "TIME-WAIT pairs taken over by connect (tcp_tw_reuse)") \
    X(tcp_rst_on_close, "resets sent because data was unread or arrived after close") \
    /* the instance around the engine */                                            \
    X(dev_rx_errors, "device read errors")                                          \
    X(dev_tx_errors, "device write errors (frame lost)")                            \
    X(fwd_frames, "frames forwarded to the instance that owns the flow")            \
    X(drop_fwd_full, "frames dropped: forwarding ring to the owner full")           \
    X(fwd_rx_frames, "frames received from another instance that owns their flow")  \
    X(fwd_dir_full, "connections not published: the group's flow directory full")   \
    X(fwd_syn_fallback, "SYNs handed to another instance's listener in use: none in use here") \
    X(accept_local, "connections accepted whose SYN this instance received")         \
    X(accept_global, "connections accepted whose SYN another instance handed over")  \
    X(accept_queue_moved, "queued connections moved to another listener when theirs closed") \
    X(accept_ahead, "connections placed in a process's accept queue before its accept()") \
    X(accept_ahead_undone, "connections a closing listener's process never took, back in the engine's queue") \
    X(accept_ahead_reset, "untaken connections reset: their bytes no longer fit the receive buffer") \
    X(chan_attaches, "application processes attached")                              \
    X(chan_detaches, "application processes detached (exited, crashed or broke the rules)") \
    X(chan_corrupt, "channels detached because the application corrupted them")     \
    /* the library's sockets left to the kernel, by reason (SS_OP_FALLBACK) */      \
    X(fallback_address, "sockets left to the kernel: bound to an address not the stack's") \
    X(fallback_port, "sockets left to the kernel: the stack could not bind the port") \
    X(fallback_listen_unbound, "sockets left to the kernel: listen() without bind()") \
    X(fallback_destination, "sockets left to the kernel: destination not behind the stack") \
    X(fallback_fd_table, "sockets left to the kernel: descriptor beyond the library's table") \
    X(fallback_option, "sockets left to the kernel: an option the stack cannot honour") \
    X(fallback_not_tcp, "sockets of attached processes that are not TCP (UDP, AF_UNIX...)") \
    X(neigh_shared_hits, "next hops resolved from the group's shared ARP table")

/* TCP states, RFC 9293 section 3.3.2, in the order of its diagram. */
#define SS_TCP_STATES(X) \
    X(CLOSED)            \
    X(LISTEN)            \
    X(SYN_SENT)          \
    X(SYN_RECEIVED)      \
    X(ESTABLISHED)       \
    X(FIN_WAIT_1)        \
    X(FIN_WAIT_2)        \
    X(CLOSE_WAIT)        \
    X(CLOSING)           \
    X(LAST_ACK)          \
    X(TIME_WAIT)

enum ss_tcp_state {
#define SS_X_STATE(name) SS_TCP_##name,
    SS_TCP_STATES(SS_X_STATE)
#undef SS_X_STATE
    SS_TCP_NSTATES
};

struct ss_counters {
#define SS_X_COUNTER(name, desc) uint64_t name;
    SS_COUNTERS(SS_X_COUNTER)
#undef SS_X_COUNTER
    /* Gauges: connections in each TCP state right now. */
    uint64_t tcp_state[SS_TCP_NSTATES];
};

/* The list above as data: name and description of counter i, in struct
 * order, for tools that print them. */
int ss_counter_count(void);
const char *ss_counter_name(int i);
const char *ss_counter_desc(int i);

#endif
