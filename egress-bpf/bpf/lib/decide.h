/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The per-packet decision, shared by both attach points. Order:
 *   ARP/ND -> endpoint -> source address (egress) -> L4 reachable (IPv6
 *   header chain, fragments) -> ICMP errors: pass only if the packet they
 *   quote belongs to a tracked flow ("related") -> conntrack: replies pass,
 *   the flow's own packets are decided again after a policy change ->
 *   new flow: the HTTP proxy's marked connection (ingress) -> host-to-local
 *   -> deny rules -> FQDN allow-map (egress; expired = absent) -> identity
 *   policy -> default deny.
 * Audit mode passes what the policy would drop and reports it; spoofed and
 * unparseable packets are dropped in audit mode too (they are not policy).
 * egress-bpf/src/fake/ mirrors this decision.
 */
#ifndef TOLLGATE_DECIDE_H
#define TOLLGATE_DECIDE_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "service.h"
#include "tollgate.h"
#include "tuple.h"

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

/* The entry under `k` unless it has been idle past its lifetime (then it is
 * as if absent: a new decision replaces it). Another CPU may have stamped
 * it after `now` was read: that is not idle. */
static __always_inline struct tg_ct_value *tg_ct_live(const struct tg_ct_key *k, __u8 protocol, __u64 now)
{
	struct tg_ct_value *ct = bpf_map_lookup_elem(&tg_conntrack, k);
	if (!ct)
		return 0;
	__u64 seen = ct->last_seen_ns;
	if (seen < now && now - seen > tg_ct_lifetime(ct, protocol))
		return 0;
	return ct;
}

/*
 * The live conntrack entry of this packet's flow. Its reply direction is
 * looked up first, as Cilium's SCOPE_BIDIR lookup does (bpf/lib/conntrack.h,
 * ct_lookup_select_tuple_type: "RELATED or REPLY state takes precedence"):
 * `*reply` says which matched.
 */
static __always_inline struct tg_ct_value *tg_ct_lookup(__u32 ifindex, const struct tg_packet *p, __u64 now,
							int *reply)
{
	struct tg_ct_key k = {};
#pragma unroll
	for (int reverse = 1; reverse >= 0; reverse--) {
		tg_ct_key(&k, ifindex, p, reverse);
		struct tg_ct_value *ct = tg_ct_live(&k, p->protocol, now);
		if (ct) {
			*reply = reverse;
			return ct;
		}
	}
	return 0;
}

static __always_inline void tg_ct_touch(struct tg_ct_value *ct, const struct tg_packet *p, __u64 now)
{
	ct->last_seen_ns = now;
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		ct->flags |= TG_CT_CLOSING;
}

static __always_inline void tg_ct_create(__u32 ifindex, const struct tg_packet *p, __u8 dir, __u64 now,
					 __u32 rule_id, __u8 flags, __u8 proxy, __u8 reason, __u32 rev)
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
		.policy_rev = rev,
	};
	if (bpf_map_update_elem(&tg_conntrack, &k, &v, BPF_ANY) < 0)
		tg_count(TG_CNT_CONNTRACK_FULL);
}

/*
 * An ICMP error is "related" (Cilium: CT_RELATED, bpf/lib/conntrack.h) when
 * the packet it quotes belongs to a live flow of this endpoint, in either
 * direction, and it goes back to that packet's sender, as every error does.
 * Cilium relates an error to any flow between the two addresses; Tollgate
 * asks for the quoted flow itself, so an error cannot carry data for a flow
 * that does not exist. The entry is not refreshed: errors keep no flow alive.
 */
static __always_inline int tg_icmp_related(__u32 ifindex, struct tg_packet *p, __u64 now)
{
	struct tg_ct_key *k = &p->quoted;
	if (k->family != p->family || !tg_addr_eq(p->daddr, k->saddr))
		return 0;
	k->ifindex = ifindex;
	if (tg_ct_live(k, k->protocol, now))
		return 1;
	struct tg_ct_key r = *k;
	r.sport = k->dport;
	r.dport = k->sport;
	__builtin_memcpy(r.saddr, k->daddr, 16);
	__builtin_memcpy(r.daddr, k->saddr, 16);
	return tg_ct_live(&r, r.protocol, now) != 0;
}

/* Whether the endpoint may send from the packet's source: one of its own
 * addresses, or IPv6 link-local (Cilium: is_valid_lxc_src_ip, bpf/lib/lxc.h). */
static __always_inline int tg_own_source(__u32 ifindex, const struct tg_packet *p)
{
	if (p->family == 6 && p->saddr[0] == 0xfe && (p->saddr[1] & 0xc0) == 0x80)
		return 1; /* fe80::/10 */
	struct tg_endpoint_addr k = {};
	k.ifindex = ifindex;
	k.family = p->family;
	__builtin_memcpy(k.addr, p->saddr, 16);
	return bpf_map_lookup_elem(&tg_endpoint_addrs, &k) != 0;
}

static __always_inline void tg_frag_key(struct tg_frag_key *k, __u32 ifindex, const struct tg_packet *p)
{
	k->ifindex = ifindex;
	k->family = p->family;
	k->id = p->frag_id;
	__builtin_memcpy(k->saddr, p->saddr, 16);
	__builtin_memcpy(k->daddr, p->daddr, 16);
}

/* A later fragment takes the protocol and ports of its datagram's first
 * fragment, which passed; 0 if there was none (or it was dropped). */
static __always_inline int tg_frag_resolve(__u32 ifindex, struct tg_packet *p)
{
	struct tg_frag_key k = {};
	tg_frag_key(&k, ifindex, p);
	struct tg_frag_value *v = bpf_map_lookup_elem(&tg_frags, &k);
	if (!v)
		return 0;
	/* IPv4 repeats the protocol in every fragment; IPv6 names the first
	 * header after the fragment header, which may be another extension. */
	if (p->family == 4 && p->protocol != v->protocol)
		return 0;
	p->protocol = v->protocol;
	p->sport = v->sport;
	p->dport = v->dport;
	return 1;
}

/* Called with the verdict of every first fragment: the later ones follow it. */
static __always_inline void tg_frag_record(__u32 ifindex, const struct tg_packet *p, int passed)
{
	if (p->frag != TG_FRAG_FIRST)
		return;
	struct tg_frag_key k = {};
	tg_frag_key(&k, ifindex, p);
	if (!passed) {
		bpf_map_delete_elem(&tg_frags, &k);
		return;
	}
	struct tg_frag_value v = {
		.sport = p->sport,
		.dport = p->dport,
		.protocol = p->protocol,
	};
	bpf_map_update_elem(&tg_frags, &k, &v, BPF_ANY);
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

/* Whether rules name this protocol's "ports": TCP, UDP and SCTP ports, and
 * ICMP/ICMPv6 types (an `icmps` rule is a rule on the ICMP protocol whose
 * port is the type, as in Cilium, pkg/policy/api/icmp.go). */
static __always_inline int tg_has_rule_ports(const struct tg_packet *p)
{
	return tg_has_ports(p->protocol) || (p->family == 4 && p->protocol == IPPROTO_ICMP) ||
	       (p->family == 6 && p->protocol == IPPROTO_ICMPV6);
}

/* The port rules match, network byte order: the port, or the ICMP type. */
static __always_inline __u16 tg_rule_port(const struct tg_packet *p)
{
	return tg_has_ports(p->protocol) ? p->dport : bpf_htons(p->icmp_type);
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
			if (j == 0 && !tg_has_rule_ports(p))
				continue; /* port rules never cover other protocols */
			struct tg_policy_value *v =
				tg_policy_lookup(map, ep, ids[i], dir, proto, j == 0 ? tg_rule_port(p) : 0);
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

/* The entry the endpoint's toFQDNs rules have for this packet's port
 * (TG_ID_FQDN_RULE, protocol-specific first). */
static __always_inline struct tg_policy_value *tg_fqdn_rule(__u32 ep, __u8 dir, const struct tg_packet *p)
{
	struct tg_policy_value *v = 0;
	if (tg_has_rule_ports(p))
		v = tg_policy_lookup(&tg_policy_allow, ep, TG_ID_FQDN_RULE, dir, p->protocol, tg_rule_port(p));
	if (!v)
		v = tg_policy_lookup(&tg_policy_allow, ep, TG_ID_FQDN_RULE, dir, TG_PROTO_ALL, 0);
	return v;
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
	__u16 dport = bpf_ntohs(tg_rule_port(p));
#pragma unroll
	for (int i = 0; i < TG_FQDN_GRANTS; i++) {
		if (i >= v->count)
			break;
		struct tg_fqdn_grant *g = &v->grants[i];
		if (g->expires_ns <= now)
			continue; /* expired is absent */
		if (g->protocol == TG_PROTO_ALL)
			return 1;
		if (!tg_has_rule_ports(p))
			continue;
		if (g->protocol == TG_PROTO_ANY_L4 ? !tg_has_ports(p->protocol) : g->protocol != p->protocol)
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

/* Whether a pod's DNS datagram, about to be handed to the DNS proxy, is
 * over its endpoint's budget (struct tg_settings). The proxy's sockets are
 * shared by every pod on the node: a pod sending faster than the proxy
 * reads would fill them and other pods' queries would be lost in the
 * kernel, so the excess is dropped here, on the flooding pod's own
 * interface, before it is queued anywhere. The budget is a GCRA (one
 * timestamp per endpoint): `dns_burst_ns` worth back to back, then one per
 * interval. The read-modify-write is not atomic: CPUs racing on one
 * endpoint's entry can each let one more through, never fewer. */
static __always_inline int tg_dns_over_budget(__u32 ifindex, const struct tg_packet *p, __u8 dir, __u8 proxy,
					      __u64 now)
{
	if (proxy != TG_PROXY_DNS || dir != TG_DIR_EGRESS || p->protocol != IPPROTO_UDP)
		return 0;
	__u32 zero = 0;
	struct tg_settings *s = bpf_map_lookup_elem(&tg_settings, &zero);
	if (!s || !s->dns_interval_ns)
		return 0;
	__u64 *spent = bpf_map_lookup_elem(&tg_dns_budget, &ifindex);
	__u64 next = (spent && *spent > now ? *spent : now) + s->dns_interval_ns;
	if (next - now > s->dns_burst_ns)
		return 1;
	if (spent)
		*spent = next;
	else
		bpf_map_update_elem(&tg_dns_budget, &ifindex, &next, BPF_ANY);
	return 0;
}

static __always_inline __u32 tg_current_rev(void)
{
	__u32 zero = 0;
	__u32 *rev = bpf_map_lookup_elem(&tg_policy_rev, &zero);
	return rev ? *rev : 0;
}

struct tg_decision {
	__u32 identity; /* of the peer */
	__u32 rule_id;
	__u32 counter;
	__u8 verdict;
	__u8 reason;
	__u8 proxy;
	__u8 pad;
};

/* What the policy says of this packet's flow (its first packet, or any
 * packet of it after a policy change). */
static __always_inline void tg_decide(struct __sk_buff *skb, const struct tg_endpoint *ep, __u32 ifindex,
				      const struct tg_packet *p, __u8 dir, __u64 now, struct tg_decision *d)
{
	struct tg_policy_value *rule;
	d->identity = tg_identity_of(p, dir == TG_DIR_EGRESS ? p->daddr : p->saddr);
	d->verdict = TG_VERDICT_DENIED;
	d->reason = TG_REASON_DEFAULT_DENY;
	d->proxy = TG_PROXY_NONE;
	d->rule_id = 0;
	d->counter = TG_CNT_DROP_DEFAULT_DENY;

	if (dir == TG_DIR_INGRESS && (skb->mark & TG_MARK_MASK) == TG_MARK_FROM_PROXY) {
		d->verdict = TG_VERDICT_ALLOWED;
		d->reason = TG_REASON_PROXY;
		d->counter = TG_CNT_PASS_POLICY;
	} else if (dir == TG_DIR_INGRESS && ep->allow_host && d->identity == TG_ID_HOST) {
		d->verdict = TG_VERDICT_ALLOWED;
		d->reason = TG_REASON_HOST_TO_LOCAL;
		d->counter = TG_CNT_PASS_HOST;
	} else if ((rule = tg_rules(&tg_policy_deny, ifindex, d->identity, dir, p, 0))) {
		d->reason = TG_REASON_DENY_RULE;
		d->rule_id = rule->rule_id;
		d->counter = TG_CNT_DROP_DENY;
	} else if (dir == TG_DIR_EGRESS && tg_fqdn_allows(ifindex, p, now)) {
		d->verdict = TG_VERDICT_ALLOWED;
		d->reason = TG_REASON_FQDN;
		d->counter = TG_CNT_PASS_FQDN;
		/* L7 rules (HTTP, serverNames) under a toFQDNs rule: its port
		 * entry under TG_ID_FQDN_RULE says "redirect", and the proxy then
		 * checks the flow against the names the pod learned. */
		rule = tg_fqdn_rule(ifindex, dir, p);
		if (rule && rule->action == TG_ACTION_REDIRECT) {
			d->verdict = TG_VERDICT_REDIRECTED;
			d->proxy = rule->proxy;
			d->rule_id = rule->rule_id;
			d->counter = TG_CNT_REDIRECT;
		}
	} else if ((rule = tg_rules(&tg_policy_allow, ifindex, d->identity, dir, p, 1))) {
		d->verdict = TG_VERDICT_ALLOWED;
		d->reason = TG_REASON_ALLOW_RULE;
		d->rule_id = rule->rule_id;
		d->counter = TG_CNT_PASS_POLICY;
		if (rule->action == TG_ACTION_REDIRECT && dir == TG_DIR_EGRESS) {
			d->verdict = TG_VERDICT_REDIRECTED;
			d->proxy = rule->proxy;
			d->counter = TG_CNT_REDIRECT;
		} else if (rule->action == TG_ACTION_REDIRECT) {
			/* L7 rules at ingress: nftables hands such flows to the
			 * HTTP proxy before routing, and the proxy's own connection
			 * carries TG_MARK_FROM_PROXY (above). One that got here
			 * otherwise skipped the L7 check: fail closed. */
			d->verdict = TG_VERDICT_DENIED;
			d->reason = TG_REASON_UNSUPPORTED;
			d->counter = TG_CNT_DROP_UNSUPPORTED;
		}
	} else if (!(dir == TG_DIR_EGRESS ? ep->enforce_egress : ep->enforce_ingress)) {
		d->verdict = TG_VERDICT_ALLOWED;
		d->reason = TG_REASON_NO_POLICY;
		d->counter = TG_CNT_PASS_NO_POLICY;
	}
}

/* A drop that is not a policy verdict (audit mode does not pass it). */
static __always_inline int tg_drop(struct __sk_buff *skb, const struct tg_packet *p, __u8 dir, __u32 counter,
				   __u8 reason)
{
	tg_count(counter);
	tg_event(skb, p, dir, 0, 0, TG_VERDICT_DENIED, reason);
	tg_frag_record(skb->ifindex, p, 0);
	return TC_ACT_SHOT;
}

/*
 * A packet of a tracked flow. Replies pass: the flow was allowed and the
 * policy of the other direction does not apply to them (Cilium: CT_REPLY
 * skips policy, bpf/bpf_lxc.c). The flow's own packets are decided again
 * whenever the policy changed since the flow was last allowed, as Cilium
 * checks every CT_ESTABLISHED packet (bpf/bpf_lxc.c, policy_can_egress6/4
 * and policy_can_ingress6/4 under "case CT_ESTABLISHED"), so that a new
 * deny rule or a removed allow cuts an open connection. The revision spares
 * the lookups while nothing changed: the decision depends only on the maps
 * the revision covers, and on FQDN grants, which one exception makes moot:
 * a flow an FQDN grant admitted stays allowed after the grant expires, while
 * a toFQDNs rule of the endpoint still opens its port (TG_ID_FQDN_RULE
 * entries) and no deny rule covers it: expiry alone keeps flows (zombies, as
 * in Cilium), a removed toFQDNs rule or a new deny cuts them. A cut flow
 * loses its entry (Cilium keeps it, so the peer's packets still pass as
 * replies until it expires). The cut happens at the flow's first packet in
 * its own direction after the change; until then the peer's replies pass.
 */
static __always_inline int tg_established(struct __sk_buff *skb, const struct tg_endpoint *ep, __u32 ifindex,
					  const struct tg_packet *p, __u8 dir, __u64 now, struct tg_ct_value *ct,
					  int reply)
{
	__u32 rev = tg_current_rev();
	if (!reply && ct->policy_rev != rev) {
		struct tg_decision d;
		tg_decide(skb, ep, ifindex, p, dir, now, &d);
		tg_count(TG_CNT_CT_RECHECK);
		if (d.verdict == TG_VERDICT_DENIED && d.reason == TG_REASON_DEFAULT_DENY &&
		    ct->reason == TG_REASON_FQDN && dir == TG_DIR_EGRESS &&
		    tg_rules(&tg_policy_allow, ifindex, TG_ID_FQDN_RULE, dir, p, 0)) {
			d.verdict = TG_VERDICT_ALLOWED;
			d.reason = TG_REASON_FQDN;
		}
		if (d.verdict == TG_VERDICT_DENIED) {
			if (!ep->audit) {
				/* Cut: the entry goes, so that the peer's packets are
				 * no longer replies either but new flows, decided by
				 * this endpoint's policy for their direction. */
				struct tg_ct_key k = {};
				tg_ct_key(&k, ifindex, p, 0);
				bpf_map_delete_elem(&tg_conntrack, &k);
				tg_count(d.counter);
				tg_event(skb, p, dir, d.identity, d.rule_id, TG_VERDICT_DENIED, d.reason);
				tg_frag_record(ifindex, p, 0);
				return TC_ACT_SHOT;
			}
			tg_count(TG_CNT_AUDIT);
			tg_event(skb, p, dir, d.identity, d.rule_id, TG_VERDICT_AUDIT, d.reason);
		}
		ct->policy_rev = rev;
		if (ct->reason != TG_REASON_FQDN) {
			ct->reason = d.reason;
			ct->rule_id = d.rule_id;
		}
		/* Newly redirected to a proxy: the flow goes there from now on
		 * (a TCP connection the proxy never saw is reset by it, as in
		 * Cilium, which recreates the entry with the proxy port). */
		if (d.proxy != TG_PROXY_NONE && (!(ct->flags & TG_CT_REDIRECT) || ct->proxy != d.proxy)) {
			ct->flags |= TG_CT_REDIRECT;
			ct->proxy = d.proxy;
		}
	}
	int to_proxy = (ct->flags & TG_CT_REDIRECT) && ct->direction == dir;
	if (to_proxy && tg_dns_over_budget(ifindex, p, dir, ct->proxy, now)) {
		tg_count(TG_CNT_DROP_DNS_RATE);
		tg_frag_record(ifindex, p, 0);
		return TC_ACT_SHOT;
	}
	tg_ct_touch(ct, p, now);
	tg_count(TG_CNT_PASS_CONNTRACK);
	if (to_proxy)
		tg_mark_for_proxy(skb, ct->proxy);
	tg_frag_record(ifindex, p, 1);
	return TC_ACT_OK;
}

/* The verdict on one packet; `p` is what it was parsed as (after any
 * Service translation). */
static __always_inline int tg_verdict(struct __sk_buff *skb, __u8 dir, struct tg_packet *p)
{
	int parsed = tg_parse(skb, p);
	if (parsed == TG_PARSE_PASS_L2) {
		tg_count(TG_CNT_PASS_L2);
		return TC_ACT_OK; /* ARP and ND: without them the pod has no gateway */
	}
	__u32 ifindex = skb->ifindex;
	struct tg_endpoint *ep = bpf_map_lookup_elem(&tg_endpoints, &ifindex);
	if (!ep) {
		/* Attached but unknown: fail closed. */
		tg_count(TG_CNT_DROP_NO_ENDPOINT);
		tg_event(skb, p, dir, 0, 0, TG_VERDICT_DENIED, TG_REASON_NO_ENDPOINT);
		return TC_ACT_SHOT;
	}
	if (parsed == TG_PARSE_UNSUPPORTED) {
		tg_count(TG_CNT_DROP_UNSUPPORTED);
		return TC_ACT_SHOT; /* not IP, or malformed: no addresses to report */
	}
	if (dir == TG_DIR_EGRESS && !tg_own_source(ifindex, p))
		return tg_drop(skb, p, dir, TG_CNT_DROP_SPOOFED,
			       TG_REASON_SPOOFED); /* another's address: never its identity */
	if (parsed == TG_PARSE_OK && p->frag == TG_FRAG_LATER && !tg_frag_resolve(ifindex, p))
		parsed = TG_PARSE_NO_L4;
	if (parsed != TG_PARSE_OK)
		return tg_drop(skb, p, dir, TG_CNT_DROP_L4_UNREACHABLE,
			       TG_REASON_L4_UNREACHABLE); /* no ports to decide on: fail closed */
	if (dir == TG_DIR_EGRESS && !p->icmp_error) {
		int svc = tg_service_translate(skb, ifindex, p);
		if (svc == TG_SVC_TRANSLATED)
			tg_count(TG_CNT_SVC_TRANSLATED);
		else if (svc != TG_SVC_NONE)
			return tg_drop(skb, p, dir, TG_CNT_DROP_NO_BACKEND, TG_REASON_NO_BACKEND);
	}
	__u64 now = bpf_ktime_get_ns();

	struct tg_decision d = {};
	if (p->icmp_error) {
		if (tg_icmp_related(ifindex, p, now)) {
			tg_count(TG_CNT_PASS_RELATED);
			return TC_ACT_OK; /* path MTU discovery, unreachables of live flows */
		}
		/* Quotes no flow of this endpoint: a covert channel, not an error.
		 * Reported with the peer's identity, decided like policy (audit
		 * passes it) but never creating a flow. */
		d.identity = tg_identity_of(p, dir == TG_DIR_EGRESS ? p->daddr : p->saddr);
		d.verdict = TG_VERDICT_DENIED;
		d.reason = TG_REASON_ICMP_UNRELATED;
		d.counter = TG_CNT_DROP_ICMP_UNRELATED;
		if (ep->audit) {
			tg_count(TG_CNT_AUDIT);
			tg_event(skb, p, dir, d.identity, 0, TG_VERDICT_AUDIT, d.reason);
			return TC_ACT_OK;
		}
		tg_count(d.counter);
		tg_event(skb, p, dir, d.identity, 0, d.verdict, d.reason);
		return TC_ACT_SHOT;
	}

	int reply = 0;
	struct tg_ct_value *ct = tg_ct_lookup(ifindex, p, now, &reply);
	if (ct)
		return tg_established(skb, ep, ifindex, p, dir, now, ct, reply);

	tg_decide(skb, ep, ifindex, p, dir, now, &d);
	if (d.verdict != TG_VERDICT_DENIED && tg_dns_over_budget(ifindex, p, dir, d.proxy, now)) {
		/* Counted, not reported: a flood would flood the events too. */
		tg_count(TG_CNT_DROP_DNS_RATE);
		tg_frag_record(ifindex, p, 0);
		return TC_ACT_SHOT;
	}
	__u8 flags = 0;
	if (d.verdict == TG_VERDICT_DENIED && ep->audit) {
		d.verdict = TG_VERDICT_AUDIT;
		d.counter = TG_CNT_AUDIT;
		flags = TG_CT_AUDIT;
	}
	tg_count(d.counter);
	/* Flows allowed only because nothing enforces this direction are not
	 * reported: that would be an event per connection of every open pod. */
	if (d.reason != TG_REASON_NO_POLICY)
		tg_event(skb, p, dir, d.identity, d.rule_id, d.verdict, d.reason);
	if (d.verdict == TG_VERDICT_DENIED) {
		tg_frag_record(ifindex, p, 0);
		return TC_ACT_SHOT;
	}
	if (d.proxy != TG_PROXY_NONE) {
		flags |= TG_CT_REDIRECT;
		tg_mark_for_proxy(skb, d.proxy);
	}
	tg_ct_create(ifindex, p, dir, now, d.rule_id, flags, d.proxy, d.reason, tg_current_rev());
	tg_frag_record(ifindex, p, 1);
	return TC_ACT_OK;
}

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* A packet for a proxy, sent by a pod whose veth is a bridge port (the
 * bridge CNI, flannel's cni0). The frame enters the bridge first, and with
 * br_netfilter (which kube-proxy needs) the prerouting hooks - the TPROXY
 * that picks the proxy's socket - run in the bridge's context; when the
 * frame then goes up to IP, ip_rcv_core drops that socket again (it only
 * keeps sockets a BPF program assigned) and the packet finds no listener:
 * the flow is lost. So it is handed to the bridge device itself, as if
 * received there, with the bridge's MAC as destination: IP then sees it
 * first-hand and TPROXY works as on a routed veth.
 *
 * The bridge is the device the node routes the pod's own address to; for a
 * routed veth (ptp, Calico) that is the veth itself and nothing changes.
 * Without a resolved neighbour for the pod (the kernel gives no MAC then)
 * the packet goes on unchanged. */
static __always_inline int tg_proxy_via_l3_device(struct __sk_buff *skb, struct tg_packet *p)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ifindex;
	if (p->family == 4) {
		fib.family = AF_INET;
		__builtin_memcpy(&fib.ipv4_dst, p->saddr, 4);
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, p->saddr, 16);
	}
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS || fib.ifindex == skb->ifindex)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, fib.smac, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, BPF_F_INGRESS);
}

static __always_inline int tg_handle(struct __sk_buff *skb, __u8 dir)
{
	struct tg_packet p = {};
	int verdict = tg_verdict(skb, dir, &p);
	__u32 proxy_mark = skb->mark & TG_MARK_MASK;
	if (verdict == TC_ACT_OK && dir == TG_DIR_EGRESS &&
	    (proxy_mark == TG_MARK_DNS || proxy_mark == TG_MARK_HTTP))
		return tg_proxy_via_l3_device(skb, &p);
	/* Replies of flows sent to a Service backend come from its frontend. */
	if (verdict == TC_ACT_OK && dir == TG_DIR_INGRESS && p.family != 0 &&
	    tg_service_reverse(skb, skb->ifindex, &p) < 0) {
		tg_count(TG_CNT_DROP_UNSUPPORTED);
		return TC_ACT_SHOT;
	}
	return verdict;
}

#endif
