/*
 * The afxdp backend's XDP program: hands the stack's own traffic to the
 * AF_XDP socket of the queue it arrived on and passes everything else to
 * the kernel, so the host keeps its network on the same interface.
 *
 * The stack's traffic is IPv4 TCP and ICMP to the stack's address and ARP
 * whose target protocol address is the stack's address.  The address sits
 * in ss_cfg[0] (network order), written by instance 0 before it attaches
 * the program; 0 means "not yet": everything passes.  An XSK receives only
 * from the queue it is bound to, so the program redirects to the entry of
 * ctx->rx_queue_index and nowhere else; a queue without a socket passes.
 *
 * Built by the Makefile with clang -target bpf; afxdp.c loads it with
 * libbpf (never libxdp's dispatcher: only one program may be attached).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u32);
} ss_xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} ss_cfg SEC(".maps");

/* An ARP packet for Ethernet and IPv4 (RFC 826); linux/if_arp.h pulls in
 * libc headers that do not build for the bpf target. */
struct arp_eth_ipv4 {
    __be16 htype, ptype;
    __u8 hlen, plen;
    __be16 op;
    __u8 sha[6];
    __u8 spa[4];
    __u8 tha[6];
    __u8 tpa[4];
} __attribute__((packed));

SEC("xdp")
int ss_xdp_redirect(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 key = 0, dst;
    if ((void *)(eth + 1) > end)
        return XDP_PASS;
    __u32 *stack = bpf_map_lookup_elem(&ss_cfg, &key);
    if (!stack || !*stack)
        return XDP_PASS;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return XDP_PASS;
        if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_ICMP)
            return XDP_PASS;
        dst = ip->daddr;
    } else if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
        struct arp_eth_ipv4 *a = (void *)(eth + 1);
        if ((void *)(a + 1) > end)
            return XDP_PASS;
        if (a->htype != bpf_htons(1) || a->ptype != bpf_htons(ETH_P_IP) || a->hlen != 6 || a->plen != 4)
            return XDP_PASS;
        __builtin_memcpy(&dst, a->tpa, 4);
    } else {
        return XDP_PASS;
    }
    if (dst != *stack)
        return XDP_PASS;
    return bpf_redirect_map(&ss_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "GPL";
