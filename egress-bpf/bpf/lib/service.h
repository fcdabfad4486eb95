/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Service translation, as Cilium's per-packet load balancer does it
 * (bpf/lib/lb.h, lb4_local / lb4_rev_nat): a pod's packet to a Service
 * frontend (ClusterIP:port) is rewritten to one of the frontend's backends
 * *before* the policy decides, so the policy sees the backend's identity and
 * port (a `toEndpoints` rule covers a Service whose backends it selects, a
 * DNS rule covers queries sent to the kube-dns ClusterIP). kube-proxy then
 * sees a packet to a pod address and leaves it alone. Replies come back from
 * the backend and get the frontend as their source again on the way into
 * the pod.
 *
 * TCP and UDP only (SCTP's CRC32c cannot be patched incrementally: SCTP to
 * a frontend is left to kube-proxy and decided as sent). A fragmented
 * datagram to a frontend is dropped: its later fragments carry no ports to
 * rewrite. ICMP errors about a translated flow reach the pod as the
 * backend sent them (not reverse-translated).
 */
#ifndef TOLLGATE_SERVICE_H
#define TOLLGATE_SERVICE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "tollgate.h"
#include "tuple.h"

_Static_assert((TG_SVC_BACKENDS & (TG_SVC_BACKENDS - 1)) == 0, "TG_SVC_BACKENDS is a power of two");

#define TG_SVC_NONE 0       /* not to a frontend */
#define TG_SVC_TRANSLATED 1 /* sent to a backend; the packet now names it */
#define TG_SVC_NO_BACKEND -1
#define TG_SVC_REWRITE_FAILED -2

/* Rewrites the packet's destination (dst != 0) or source address and port,
 * with the IPv4 header checksum and the L4 checksum (whose pseudo-header
 * covers the addresses) patched incrementally. */
static __always_inline int tg_rewrite(struct __sk_buff *skb, const struct tg_packet *p, int dst, const __u8 *addr,
				      __u16 port)
{
	__u32 csum_off = p->l4_off + (p->protocol == IPPROTO_TCP ? 16 : 6);
	/* A UDP/IPv4 checksum of 0 means "none": it stays 0. */
	__u64 l4_flags = p->protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	const __u8 *old_addr = dst ? p->daddr : p->saddr;
	__u16 old_port = dst ? p->dport : p->sport;

	if (p->family == 4) {
		__u32 old4, new4;
		__builtin_memcpy(&old4, old_addr, 4);
		__builtin_memcpy(&new4, addr, 4);
		__u32 addr_off = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
		if (bpf_l4_csum_replace(skb, csum_off, old4, new4, l4_flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old4, new4, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new4, 4, 0) < 0)
			return -1;
	} else {
		__u32 old6[4], new6[4];
		__builtin_memcpy(old6, old_addr, 16);
		__builtin_memcpy(new6, addr, 16);
		__u32 addr_off =
			ETH_HLEN + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__s64 diff = bpf_csum_diff(old6, 16, new6, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, l4_flags | BPF_F_PSEUDO_HDR) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, new6, 16, 0) < 0)
			return -1;
	}
	if (old_port != port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, port, l4_flags | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, p->l4_off + (dst ? 2 : 0), &port, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/*
 * A packet the pod sends: if it goes to a Service frontend, it is sent to a
 * backend (the same one for every packet of the flow while that backend
 * stays in the Service), and `p` names the backend from then on.
 */
static __always_inline int tg_service_translate(struct __sk_buff *skb, __u32 ifindex, struct tg_packet *p)
{
	if (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP)
		return TG_SVC_NONE;
	struct tg_service_key sk = {
		.family = p->family,
		.protocol = p->protocol,
		.port = p->dport,
	};
	__builtin_memcpy(sk.addr, p->daddr, 16);
	struct tg_service_value *svc = bpf_map_lookup_elem(&tg_services, &sk);
	if (!svc)
		return TG_SVC_NONE;
	if (p->frag != TG_FRAG_NONE)
		return TG_SVC_NO_BACKEND; /* later fragments could not follow */
	__u32 count = svc->count;
	if (count == 0 || count > TG_SVC_BACKENDS)
		return TG_SVC_NO_BACKEND;

	struct tg_ct_key flow = {};
	tg_ct_key(&flow, ifindex, p, 0);
	struct tg_backend *b = 0;
	struct tg_lb_flow *known = bpf_map_lookup_elem(&tg_lb_flows, &flow);
	if (known && known->slot < count) {
		/* The mask bounds the index for the verifier (a power of two). */
		b = &svc->backends[known->slot & (TG_SVC_BACKENDS - 1)];
		/* The backend left the Service (or moved): choose again. */
		if (!tg_addr_eq(b->addr, known->addr) || b->port != known->port)
			b = 0;
	}
	int chosen = 0;
	if (!b) {
		__u32 slot = bpf_get_prandom_u32() % count;
		/* The verifier cannot follow the modulo (a divide, multiply and
		 * subtract): the barrier keeps clang from dropping the mask that
		 * bounds the index for it. */
		asm volatile("" : "+r"(slot));
		slot &= TG_SVC_BACKENDS - 1;
		b = &svc->backends[slot];
		struct tg_lb_flow lb = {.port = b->port, .slot = slot};
		__builtin_memcpy(lb.addr, b->addr, 16);
		bpf_map_update_elem(&tg_lb_flows, &flow, &lb, BPF_ANY);
		chosen = 1;
	}
	__u8 backend[16];
	__builtin_memcpy(backend, b->addr, 16);
	__u16 backend_port = b->port;

	/* Where the replies must appear to come from: the frontend. */
	struct tg_ct_key translated = flow;
	__builtin_memcpy(translated.daddr, backend, 16);
	translated.dport = backend_port;
	if (chosen || !bpf_map_lookup_elem(&tg_rev_nat, &translated)) {
		struct tg_rev_nat rev = {.port = p->dport};
		__builtin_memcpy(rev.addr, p->daddr, 16);
		bpf_map_update_elem(&tg_rev_nat, &translated, &rev, BPF_ANY);
	}

	if (tg_rewrite(skb, p, 1, backend, backend_port) < 0)
		return TG_SVC_REWRITE_FAILED;
	__builtin_memcpy(p->daddr, backend, 16);
	p->dport = backend_port;
	return TG_SVC_TRANSLATED;
}

/*
 * A packet to the pod that passed: a reply of a translated flow gets the
 * frontend back as its source. 0 if nothing was to be done or it was done.
 */
static __always_inline int tg_service_reverse(struct __sk_buff *skb, __u32 ifindex, struct tg_packet *p)
{
	if (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP)
		return 0;
	if (p->frag != TG_FRAG_NONE || p->icmp_error)
		return 0;
	struct tg_ct_key k = {};
	tg_ct_key(&k, ifindex, p, 1);
	struct tg_rev_nat *rev = bpf_map_lookup_elem(&tg_rev_nat, &k);
	if (!rev)
		return 0;
	__u8 frontend[16];
	__builtin_memcpy(frontend, rev->addr, 16);
	__u16 port = rev->port;
	return tg_rewrite(skb, p, 0, frontend, port);
}

#endif
