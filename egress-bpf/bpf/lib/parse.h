/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Packet parsing shared by both programs: Ethernet, IPv4/IPv6, L4 ports. */
#ifndef TOLLGATE_PARSE_H
#define TOLLGATE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define TG_PARSE_OK 0
#define TG_PARSE_PASS_L2 1   /* ARP / neighbour discovery: always pass */
#define TG_PARSE_UNSUPPORTED 2

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
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04

/* Reads ports (or the ICMP echo id) at `off`, for L4 `proto`. */
static __always_inline int tg_parse_l4(struct __sk_buff *skb, __u32 off, struct tg_packet *p)
{
	switch (p->protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[14];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return TG_PARSE_UNSUPPORTED; /* truncated TCP header */
		__builtin_memcpy(&p->sport, &hdr[0], 2);
		__builtin_memcpy(&p->dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		return TG_PARSE_OK;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u16 ports[2];
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return TG_PARSE_UNSUPPORTED; /* truncated header */
		p->sport = ports[0];
		p->dport = ports[1];
		return TG_PARSE_OK;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 hdr[6];
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return TG_PARSE_UNSUPPORTED; /* truncated ICMP header */
		p->icmp_type = hdr[0];
		/* ICMPv6 neighbour discovery (133-137) and multicast listener
		 * discovery (130-132, 143) are link-local control traffic: they
		 * must always pass, like ARP. */
		if (p->protocol == IPPROTO_ICMPV6 &&
		    ((hdr[0] >= 133 && hdr[0] <= 137) || (hdr[0] >= 130 && hdr[0] <= 132) || hdr[0] == 143))
			return TG_PARSE_PASS_L2;
		/* Echo request/reply: the id plays the role of both ports, so a
		 * reply matches its request's conntrack entry reversed. */
		if ((p->protocol == IPPROTO_ICMP && (hdr[0] == 8 || hdr[0] == 0)) ||
		    (p->protocol == IPPROTO_ICMPV6 && (hdr[0] == 128 || hdr[0] == 129))) {
			__builtin_memcpy(&p->sport, &hdr[4], 2);
			p->dport = p->sport;
		}
		return TG_PARSE_OK;
	}
	default:
		return TG_PARSE_OK; /* other protocols: no ports */
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
		if (ip.ihl < 5)
			return TG_PARSE_UNSUPPORTED; /* malformed IPv4 header */
		p->family = 4;
		p->protocol = ip.protocol;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		/* Non-first fragments carry no L4 header: decided by L3 rules only. */
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			return TG_PARSE_OK;
		return tg_parse_l4(skb, ETH_HLEN + ip.ihl * 4, p);
	}
	if (eth_proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return TG_PARSE_UNSUPPORTED; /* truncated IPv6 header */
		p->family = 6;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		__u8 next = ip6.nexthdr;
		__u32 off = ETH_HLEN + sizeof(ip6);
		/* Skip a bounded number of extension headers. */
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (next != 0 && next != 43 && next != 60 && next != 44)
				break;
			__u8 ext[8];
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
				return TG_PARSE_UNSUPPORTED; /* truncated extension header */
			if (next == 44) {
				/* Fragment header: only the first fragment has ports. */
				__u16 frag;
				__builtin_memcpy(&frag, &ext[2], 2);
				next = ext[0];
				off += 8;
				if (bpf_ntohs(frag) & 0xfff8) {
					p->protocol = next;
					return TG_PARSE_OK;
				}
				continue;
			}
			next = ext[0];
			off += (ext[1] + 1) * 8;
		}
		p->protocol = next;
		return tg_parse_l4(skb, off, p);
	}
	return TG_PARSE_UNSUPPORTED; /* neither ARP, IPv4 nor IPv6 */
}

#endif
