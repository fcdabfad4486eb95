/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Packet parsing shared by both programs: Ethernet, IPv4/IPv6 (IPv6
 * extension headers, fragments of both), L4 ports, and the packet an ICMP
 * error quotes.
 *
 * Fail closed: a packet whose L4 header cannot be reached (an IPv6 header
 * chain longer than TG_IPV6_EXT_MAX, a next header that is neither an
 * extension header nor TCP/UDP/SCTP/ICMPv6, a truncated header) is
 * TG_PARSE_NO_L4 and dropped: it must never be decided by a rule without
 * ports because its ports could not be read. egress-bpf/src/fake/packet.rs
 * mirrors this parser.
 */
#ifndef TOLLGATE_PARSE_H
#define TOLLGATE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "tollgate.h"

#define TG_PARSE_OK 0
#define TG_PARSE_PASS_L2 1     /* ARP / neighbour discovery: always pass */
#define TG_PARSE_UNSUPPORTED 2 /* neither ARP nor IP, or no IP header: no addresses */
#define TG_PARSE_NO_L4 3       /* IP with its addresses, but the L4 header cannot be reached */

#define TG_FRAG_NONE 0
#define TG_FRAG_FIRST 1 /* offset 0, more to come: carries the L4 header */
#define TG_FRAG_LATER 2 /* offset > 0: no L4 header; ports from the first (tg_frags) */

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif

struct tg_packet {
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u16 sport; /* network byte order */
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 frag;       /* TG_FRAG_* */
	__u8 icmp_error; /* an ICMP error; `quoted` is the packet it quotes */
	__u16 pad;
	__u32 frag_id; /* as on the wire */
	__u32 l4_off;  /* where the L4 header starts (TG_PARSE_OK, not a later fragment) */
	/* The quoted packet's tuple as a conntrack key (ifindex left 0). */
	struct tg_ct_key quoted;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04

static __always_inline int tg_is_icmp_error(__u8 protocol, __u8 type)
{
	/* Destination unreachable (packet too big), time exceeded, parameter problem. */
	if (protocol == IPPROTO_ICMP)
		return type == 3 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

static __always_inline int tg_is_echo(__u8 protocol, __u8 type)
{
	if (protocol == IPPROTO_ICMP)
		return type == 8 || type == 0;
	return type == 128 || type == 129;
}

/*
 * The tuple of the packet an ICMP error quotes at `off` (RFC 792: its IP
 * header and first 8 bytes; RFC 4443: as much as fits), as the conntrack
 * key the flow it belongs to would have. -1 if it cannot belong to any
 * tracked flow: not the outer family, a later fragment, an error about an
 * error, truncated.
 */
static __always_inline int tg_parse_quoted(struct __sk_buff *skb, __u32 off, struct tg_packet *p)
{
	struct tg_ct_key *k = &p->quoted;
	__u32 l4;
	if (p->family == 4) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1; /* truncated quote */
		if (ip.version != 4 || ip.ihl < 5)
			return -1; /* not an IPv4 packet */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			return -1; /* a later fragment carries no ports */
		k->protocol = ip.protocol;
		__builtin_memcpy(k->saddr, &ip.saddr, 4);
		__builtin_memcpy(k->daddr, &ip.daddr, 4);
		l4 = off + ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1; /* truncated quote */
		if (ip6.version != 6)
			return -1; /* not an IPv6 packet */
		/* Extension headers in a quote are not walked: such a quote
		 * matches no conntrack entry (its protocol is the header's). */
		k->protocol = ip6.nexthdr;
		__builtin_memcpy(k->saddr, &ip6.saddr, 16);
		__builtin_memcpy(k->daddr, &ip6.daddr, 16);
		l4 = off + sizeof(ip6);
	}
	k->family = p->family;
	switch (k->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
			return -1; /* truncated quote */
		k->sport = ports[0];
		k->dport = ports[1];
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[6];
		if (k->protocol != (p->family == 4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
			return -1; /* ICMP of the other family */
		if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
			return -1; /* truncated quote */
		if (tg_is_icmp_error(k->protocol, hdr[0]))
			return -1; /* no error is ever sent about an error */
		if (tg_is_echo(k->protocol, hdr[0])) {
			__builtin_memcpy(&k->sport, &hdr[4], 2);
			k->dport = k->sport;
		}
		return 0;
	}
	default:
		return 0; /* other protocols are tracked without ports */
	}
}

/* Reads ports (or the ICMP echo id, or the quoted packet of an ICMP error)
 * at `off`, for L4 `p->protocol`. */
static __always_inline int tg_parse_l4(struct __sk_buff *skb, __u32 off, struct tg_packet *p)
{
	p->l4_off = off;
	switch (p->protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return TG_PARSE_NO_L4; /* truncated TCP header */
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		return TG_PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return TG_PARSE_NO_L4; /* truncated header */
		p->sport = ports[0];
		p->dport = ports[1];
		return TG_PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[6];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return TG_PARSE_NO_L4; /* truncated ICMP header */
		p->icmp_type = hdr[0];
		/* ICMPv6 neighbour discovery (133-137) and multicast listener
		 * discovery (130-132, 143) are link-local control traffic: they
		 * must always pass, like ARP. */
		if (p->protocol == IPPROTO_ICMPV6 &&
		    ((hdr[0] >= 133 && hdr[0] <= 137) || (hdr[0] >= 130 && hdr[0] <= 132) || hdr[0] == 143))
			return TG_PARSE_PASS_L2;
		if (tg_is_icmp_error(p->protocol, hdr[0])) {
			/* Errors are never fragmented (RFC 1812, 4443): one that
			 * is cannot be matched to its flow. */
			if (p->frag != TG_FRAG_NONE)
				return TG_PARSE_NO_L4;
			p->icmp_error = 1;
			/* A quote that belongs to no flow leaves `quoted` zero
			 * (family 0), which matches no conntrack entry. */
			if (tg_parse_quoted(skb, off + 8, p) < 0)
				__builtin_memset(&p->quoted, 0, sizeof(p->quoted));
			return TG_PARSE_OK;
		}
		/* Echo request/reply: the id plays the role of both ports, so a
		 * reply matches its request's conntrack entry reversed. */
		if (tg_is_echo(p->protocol, hdr[0])) {
			__builtin_memcpy(&p->sport, &hdr[4], 2);
			p->dport = p->sport;
		}
		return TG_PARSE_OK;
	}
	default:
		return TG_PARSE_OK; /* other protocols: no ports */
	}
}

/* IPv6 extension headers (IANA "IPv6 Extension Header Types"), all of which
 * the walk below can skip; ESP (50) is not one: nothing after it is readable. */
static __always_inline int tg_ipv6_is_ext(__u8 next)
{
	return next == 0 || next == 43 || next == 44 || next == 51 || next == 60 || next == 135 ||
	       next == 139 || next == 140 || next == 253 || next == 254;
}

static __always_inline int tg_parse_ipv6(struct __sk_buff *skb, struct tg_packet *p)
{
	struct ipv6hdr ip6;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
		return TG_PARSE_UNSUPPORTED; /* truncated IPv6 header */
	if (ip6.version != 6)
		return TG_PARSE_UNSUPPORTED; /* malformed IPv6 header */
	p->family = 6;
	__builtin_memcpy(p->saddr, &ip6.saddr, 16);
	__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	__u8 next = ip6.nexthdr;
	__u32 off = ETH_HLEN + sizeof(ip6);
#pragma unroll
	for (int i = 0; i < TG_IPV6_EXT_MAX; i++) {
		if (!tg_ipv6_is_ext(next))
			break;
		__u8 ext[8];
		if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
			return TG_PARSE_NO_L4; /* truncated extension header */
		if (next == 44) {
			__u16 frag;
			__builtin_memcpy(&frag, &ext[2], 2);
			frag = bpf_ntohs(frag);
			__builtin_memcpy(&p->frag_id, &ext[4], 4);
			if (frag & 0xfff8) {
				/* A later fragment: no L4 header here; its
				 * protocol and ports are the first fragment's. */
				p->frag = TG_FRAG_LATER;
				p->protocol = ext[0];
				return TG_PARSE_OK;
			}
			/* Offset 0 without more fragments is an atomic fragment
			 * (RFC 6946): a whole packet. */
			if (frag & 1)
				p->frag = TG_FRAG_FIRST;
			off += 8;
		} else if (next == 51) {
			off += ((__u32)ext[1] + 2) * 4; /* AH counts 4-byte units */
		} else {
			off += ((__u32)ext[1] + 1) * 8;
		}
		next = ext[0];
	}
	p->protocol = next;
	switch (next) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
	case IPPROTO_ICMPV6:
		return tg_parse_l4(skb, off, p);
	default:
		/* More extension headers than walked, no next header (59),
		 * ESP, or a next header that is neither an extension header nor
		 * a protocol the policy decides on (Cilium drops them all:
		 * bpf/lib/ipv6.h, DROP_INVALID_EXTHDR; conntrack.h,
		 * DROP_CT_UNKNOWN_PROTO). */
		return TG_PARSE_NO_L4;
	}
}

static __always_inline int tg_parse(struct __sk_buff *skb, struct tg_packet *p)
{
	__u16 eth_proto;
	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &eth_proto, 2) < 0)
		return TG_PARSE_UNSUPPORTED; /* runt frame */
	eth_proto = bpf_ntohs(eth_proto);
	if (eth_proto == ETH_P_ARP)
		return TG_PARSE_PASS_L2;
	if (eth_proto == ETH_P_IP) {
		struct iphdr ip;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return TG_PARSE_UNSUPPORTED; /* truncated IPv4 header */
		if (ip.version != 4 || ip.ihl < 5)
			return TG_PARSE_UNSUPPORTED; /* malformed IPv4 header */
		p->family = 4;
		p->protocol = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		__u16 frag = bpf_ntohs(ip.frag_off);
		p->frag_id = ip.id;
		if (frag & 0x1fff) {
			/* A later fragment: ports from the first (tg_frags). */
			p->frag = TG_FRAG_LATER;
			return TG_PARSE_OK;
		}
		if (frag & 0x2000)
			p->frag = TG_FRAG_FIRST;
		return tg_parse_l4(skb, ETH_HLEN + ip.ihl * 4, p);
	}
	if (eth_proto == ETH_P_IPV6)
		return tg_parse_ipv6(skb, p);
	return TG_PARSE_UNSUPPORTED; /* neither ARP, IPv4 nor IPv6 */
}

#endif
