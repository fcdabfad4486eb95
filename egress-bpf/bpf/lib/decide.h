/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The per-packet decision, shared by both attach points. Order:
 *   ARP/ND -> conntrack -> ICMP errors -> the HTTP proxy's marked connection
 *   (ingress) -> host-to-local -> deny rules -> FQDN allow-map (egress;
 *   expired = absent) -> identity policy -> default deny.
 * Audit mode passes what would be dropped and reports it.
 */
#ifndef TOLLGATE_DECIDE_H
#define TOLLGATE_DECIDE_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "tollgate.h"

#define TG_NS_PER_S 1000000000ULL

static __always_inline void tg_count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tg_counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline void tg_event(struct __sk_buff *skb, const struct tg_packet *p, __u8 dir,
				     __u32 identity, __u32 rule_id, __u8 verdict, __u8 reason)
{
	struct tg_flow_event *e = bpf_ringbuf_reserve(&tg_events, sizeof(*e), 0);
	if (!e) {
		tg_count(TG_CNT_EVENTS_LOST);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->ifindex = skb->ifindex;
	e->identity = identity;
	e->rule_id = rule_id;
	e->family = p->family;
	e->protocol = p->protocol;
	e->direction = dir;
	e->verdict = verdict;
	e->reason = reason;
	e->pad0 = 0;
	e->sport = p->sport;
	e->dport = p->dport;
	e->pad1 = 0;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u64 tg_ct_lifetime(const struct tg_ct_value *ct, __u8 protocol)
{
	if (ct->flags & TG_CT_CLOSING)
		return TG_CT_CLOSING_S * TG_NS_PER_S;
	return (protocol == IPPROTO_TCP ? TG_CT_TCP_S : TG_CT_OTHER_S) * TG_NS_PER_S;
}

static __always_inline void tg_ct_key(struct tg_ct_key *k, __u32 ifindex, const struct tg_packet *p, int reverse)
{
	k->ifindex = ifindex;
	k->family = p->family;
	k->protocol = p->protocol;
	k->pad = 0;
	if (reverse) {
		k->sport = p->dport;
		k->dport = p->sport;
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
	} else {
		k->sport = p->sport;
		k->dport = p->dport;
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
	}
}

/* A live conntrack entry for this packet (either direction), refreshed. */
static __always_inline struct tg_ct_value *tg_ct_lookup(__u32 ifindex, const struct tg_packet *p, __u64 now)
{
	struct tg_ct_key k = {};
#pragma unroll
	for (int reverse = 0; reverse < 2; reverse++) {
		tg_ct_key(&k, ifindex, p, reverse);
		struct tg_ct_value *ct = bpf_map_lookup_elem(&tg_conntrack, &k);
		if (!ct)
			continue;
		if (now - ct->last_seen_ns > tg_ct_lifetime(ct, p->protocol))
			continue; /* stale: as if absent; a new decision replaces it */
		ct->last_seen_ns = now;
		if (p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
			ct->flags |= TG_CT_CLOSING;
		return ct;
	}
	return 0;
}

static __always_inline void tg_ct_create(__u32 ifindex, const struct tg_packet *p, __u8 dir, __u64 now,
					 __u32 rule_id, __u8 flags, __u8 proxy, __u8 reason)
{
	struct tg_ct_key k = {};
	tg_ct_key(&k, ifindex, p, 0);
	struct tg_ct_value v = {
		.last_seen_ns = now,
		.created_ns = now,
		.rule_id = rule_id,
		.direction = dir,
		.flags = flags,
		.proxy = proxy,
		.reason = reason,
	};
	if (bpf_map_update_elem(&tg_conntrack, &k, &v, BPF_ANY) < 0)
		tg_count(TG_CNT_CONNTRACK_FULL);
}

static __always_inline __u32 tg_identity_of(const struct tg_packet *p, const __u8 *addr)
{
	struct tg_ipcache_key k = {};
	k.prefixlen = TG_IPCACHE_FIXED_BITS + (p->family == 4 ? 32 : 128);
	k.family = p->family;
	__builtin_memcpy(k.addr, addr, 16);
	struct tg_ipcache_value *v = bpf_map_lookup_elem(&tg_ipcache, &k);
	return v ? v->identity : TG_ID_WORLD;
}

static __always_inline struct tg_policy_value *tg_policy_lookup(void *map, __u32 ep, __u32 identity, __u8 dir,
								__u8 protocol, __u16 dport)
{
	struct tg_policy_key k = {
		.prefixlen = TG_POLICY_FIXED_BITS + 16,
		.endpoint = ep,
		.identity = identity,
		.direction = dir,
		.protocol = protocol,
		.dport = dport,
	};
	return bpf_map_lookup_elem(map, &k);
}

static __always_inline int tg_has_ports(__u8 protocol)
{
	return protocol == IPPROTO_TCP || protocol == IPPROTO_UDP || protocol == IPPROTO_SCTP;
}

/* The first match among (peer, any) x (protocol, all protocols). */
static __always_inline struct tg_policy_value *tg_rules(void *map, __u32 ep, __u32 identity, __u8 dir,
							const struct tg_packet *p, int prefer_plain)
{
	struct tg_policy_value *best = 0;
	__u32 ids[2] = {identity, TG_ID_ANY};
#pragma unroll
	for (int i = 0; i < 2; i++) {
#pragma unroll
		for (int j = 0; j < 2; j++) {
			__u8 proto = j == 0 ? p->protocol : TG_PROTO_ALL;
			if (j == 0 && !tg_has_ports(p->protocol))
				continue; /* port rules never cover ICMP or other protocols */
			struct tg_policy_value *v =
				tg_policy_lookup(map, ep, ids[i], dir, proto, j == 0 ? p->dport : 0);
			if (!v)
				continue;
			/* A plain allow beats a redirect: without L7 restriction
			 * everything on that port is allowed. */
			if (!best || (prefer_plain && v->action == TG_ACTION_ALLOW))
				best = v;
		}
	}
	return best;
}

static __always_inline int tg_fqdn_allows(__u32 ep, const struct tg_packet *p, __u64 now)
{
	struct tg_fqdn_key k = {};
	k.endpoint = ep;
	k.family = p->family;
	__builtin_memcpy(k.addr, p->daddr, 16);
	struct tg_fqdn_value *v = bpf_map_lookup_elem(&tg_fqdn, &k);
	if (!v)
		return 0;
	__u16 dport = bpf_ntohs(p->dport);
#pragma unroll
	for (int i = 0; i < TG_FQDN_GRANTS; i++) {
		if (i >= v->count)
			break;
		struct tg_fqdn_grant *g = &v->grants[i];
		if (g->expires_ns <= now)
			continue; /* expired is absent */
		if (g->protocol == TG_PROTO_ALL)
			return 1;
		if (!tg_has_ports(p->protocol))
			continue;
		if (g->protocol != TG_PROTO_ANY_L4 && g->protocol != p->protocol)
			continue;
		if (dport >= g->port_start && dport <= g->port_end)
			return 1;
	}
	return 0;
}

static __always_inline void tg_mark_for_proxy(struct __sk_buff *skb, __u8 proxy)
{
	__u32 mark = proxy == TG_PROXY_DNS ? TG_MARK_DNS : TG_MARK_HTTP;
	skb->mark = (skb->mark & ~TG_MARK_MASK) | mark;
}

static __always_inline int tg_handle(struct __sk_buff *skb, __u8 dir)
{
	struct tg_packet p = {};
	int parsed = tg_parse(skb, &p);
	if (parsed == TG_PARSE_PASS_L2) {
		tg_count(TG_CNT_PASS_L2);
		return TC_ACT_OK; /* ARP and ND: without them the pod has no gateway */
	}
	__u32 ifindex = skb->ifindex;
	struct tg_endpoint *ep = bpf_map_lookup_elem(&tg_endpoints, &ifindex);
	if (!ep) {
		/* Attached but unknown: fail closed. */
		tg_count(TG_CNT_DROP_NO_ENDPOINT);
		tg_event(skb, &p, dir, 0, 0, TG_VERDICT_DENIED, TG_REASON_NO_ENDPOINT);
		return TC_ACT_SHOT;
	}
	if (parsed != TG_PARSE_OK) {
		tg_count(TG_CNT_DROP_UNSUPPORTED);
		return TC_ACT_SHOT; /* not IP, or malformed */
	}
	__u64 now = bpf_ktime_get_ns();

	struct tg_ct_value *ct = tg_ct_lookup(ifindex, &p, now);
	if (ct) {
		tg_count(TG_CNT_PASS_CONNTRACK);
		if ((ct->flags & TG_CT_REDIRECT) && ct->direction == dir)
			tg_mark_for_proxy(skb, ct->proxy);
		return TC_ACT_OK; /* replies and established flows */
	}

	/* ICMP errors open nothing and carry path MTU discovery. */
	if ((p.protocol == IPPROTO_ICMP && (p.icmp_type == 3 || p.icmp_type == 11 || p.icmp_type == 12)) ||
	    (p.protocol == IPPROTO_ICMPV6 && p.icmp_type >= 1 && p.icmp_type <= 4)) {
		tg_count(TG_CNT_PASS_L2);
		return TC_ACT_OK;
	}

	__u32 identity = tg_identity_of(&p, dir == TG_DIR_EGRESS ? p.daddr : p.saddr);

	__u8 verdict = TG_VERDICT_DENIED, reason = TG_REASON_DEFAULT_DENY, proxy = TG_PROXY_NONE;
	__u32 rule_id = 0, counter = TG_CNT_DROP_DEFAULT_DENY;
	struct tg_policy_value *rule;

	if (dir == TG_DIR_INGRESS && (skb->mark & TG_MARK_MASK) == TG_MARK_FROM_PROXY) {
		verdict = TG_VERDICT_ALLOWED;
		reason = TG_REASON_PROXY;
		counter = TG_CNT_PASS_POLICY;
	} else if (dir == TG_DIR_INGRESS && ep->allow_host && identity == TG_ID_HOST) {
		verdict = TG_VERDICT_ALLOWED;
		reason = TG_REASON_HOST_TO_LOCAL;
		counter = TG_CNT_PASS_HOST;
	} else if ((rule = tg_rules(&tg_policy_deny, ifindex, identity, dir, &p, 0))) {
		reason = TG_REASON_DENY_RULE;
		rule_id = rule->rule_id;
		counter = TG_CNT_DROP_DENY;
	} else if (dir == TG_DIR_EGRESS && tg_fqdn_allows(ifindex, &p, now)) {
		verdict = TG_VERDICT_ALLOWED;
		reason = TG_REASON_FQDN;
		counter = TG_CNT_PASS_FQDN;
	} else if ((rule = tg_rules(&tg_policy_allow, ifindex, identity, dir, &p, 1))) {
		verdict = TG_VERDICT_ALLOWED;
		reason = TG_REASON_ALLOW_RULE;
		rule_id = rule->rule_id;
		counter = TG_CNT_PASS_POLICY;
		if (rule->action == TG_ACTION_REDIRECT && dir == TG_DIR_EGRESS) {
			verdict = TG_VERDICT_REDIRECTED;
			proxy = rule->proxy;
			counter = TG_CNT_REDIRECT;
		} else if (rule->action == TG_ACTION_REDIRECT) {
			/* L7 rules at ingress: nftables hands such flows to the
			 * HTTP proxy before routing, and the proxy's own connection
			 * carries TG_MARK_FROM_PROXY (above). One that got here
			 * otherwise skipped the L7 check: fail closed. */
			verdict = TG_VERDICT_DENIED;
			reason = TG_REASON_UNSUPPORTED;
			counter = TG_CNT_DROP_UNSUPPORTED;
		}
	} else if (!(dir == TG_DIR_EGRESS ? ep->enforce_egress : ep->enforce_ingress)) {
		verdict = TG_VERDICT_ALLOWED;
		reason = TG_REASON_NO_POLICY;
		counter = TG_CNT_PASS_NO_POLICY;
	}

	__u8 flags = 0;
	if (verdict == TG_VERDICT_DENIED && ep->audit) {
		verdict = TG_VERDICT_AUDIT;
		counter = TG_CNT_AUDIT;
		flags = TG_CT_AUDIT;
	}
	tg_count(counter);
	/* Flows allowed only because nothing enforces this direction are not
	 * reported: that would be an event per connection of every open pod. */
	if (reason != TG_REASON_NO_POLICY)
		tg_event(skb, &p, dir, identity, rule_id, verdict, reason);
	if (verdict == TG_VERDICT_DENIED)
		return TC_ACT_SHOT;
	if (proxy != TG_PROXY_NONE) {
		flags |= TG_CT_REDIRECT;
		tg_mark_for_proxy(skb, proxy);
	}
	tg_ct_create(ifindex, &p, dir, now, rule_id, flags, proxy, reason);
	return TC_ACT_OK;
}

#endif
