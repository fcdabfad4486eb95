/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Map keys and values shared by the kernel programs and user space.
 *
 * Must stay in sync with egress-bpf/src/abi.rs, which mirrors every struct
 * here with #[repr(C)] and asserts its size at compile time.
 */
#ifndef TOLLGATE_H
#define TOLLGATE_H

#include <linux/types.h>

/* Directions, from the point of view of the pod. */
#define TG_DIR_INGRESS 0 /* to the pod: TC egress of the host-side veth */
#define TG_DIR_EGRESS  1 /* from the pod: TC ingress of the host-side veth */

/* Reserved identities the programs need to know by number. */
#define TG_ID_ANY   0 /* policy key wildcard: any peer */
#define TG_ID_HOST  1
#define TG_ID_WORLD 2

/* Policy map protocol wildcard: any protocol, any port (rules without toPorts). */
#define TG_PROTO_ALL 0
/* FQDN grant protocol: TCP, UDP and SCTP (toPorts protocol ANY). */
#define TG_PROTO_ANY_L4 255

/* Policy values. */
#define TG_ACTION_ALLOW    1
#define TG_ACTION_REDIRECT 2
#define TG_ACTION_DENY     3

/* Proxies a flow can be redirected to, and the skb mark that asks
 * nftables TPROXY for each. */
#define TG_PROXY_NONE 0
#define TG_PROXY_DNS  1
#define TG_PROXY_HTTP 2
#define TG_MARK_MASK  0x000ff000
#define TG_MARK_DNS   0x0002a000
#define TG_MARK_HTTP  0x0002b000
/* Set (SO_MARK) by the HTTP proxy on its connections to the original
 * destination: the proxy has applied that pod's ingress policy already.
 * Outside the redirect route mark (0x2xxxx) so it is routed normally; pods
 * cannot forge it (the mark is cleared when a packet crosses netns). */
#define TG_MARK_FROM_PROXY 0x0003a000

/* Flow event verdicts and reasons. */
#define TG_VERDICT_ALLOWED    1
#define TG_VERDICT_DENIED     2
#define TG_VERDICT_AUDIT      3
#define TG_VERDICT_REDIRECTED 4

#define TG_REASON_DENY_RULE     1
#define TG_REASON_FQDN          2
#define TG_REASON_ALLOW_RULE    3
#define TG_REASON_NO_POLICY     4
#define TG_REASON_DEFAULT_DENY  5
#define TG_REASON_HOST_TO_LOCAL 6
#define TG_REASON_NO_ENDPOINT   7
#define TG_REASON_UNSUPPORTED   8
#define TG_REASON_PROXY         9

/* Conntrack flags. */
#define TG_CT_CLOSING  0x01
#define TG_CT_REDIRECT 0x02
#define TG_CT_AUDIT    0x04

#define TG_FQDN_GRANTS 8

/* key: __u32 ifindex of the host-side veth */
struct tg_endpoint {
	__u32 identity;
	__u8 enforce_ingress; /* default deny at ingress */
	__u8 enforce_egress;  /* default deny at egress */
	__u8 audit;           /* would-be drops pass and are reported */
	__u8 allow_host;      /* the node may reach this pod regardless of policy */
};

/* LPM trie: prefixlen counts bits from `family` on; 32 + the IP prefix. */
struct tg_ipcache_key {
	__u32 prefixlen;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct tg_ipcache_value {
	__u32 identity;
	__u32 pad;
};

/* LPM trie: prefixlen = 80 + the number of leading dport bits that must match. */
struct tg_policy_key {
	__u32 prefixlen;
	__u32 endpoint; /* ifindex */
	__u32 identity; /* peer identity, TG_ID_ANY for any peer */
	__u8 direction;
	__u8 protocol; /* IPPROTO_*, or TG_PROTO_ALL */
	__u16 dport;   /* network byte order, so its high bits come first */
};

struct tg_policy_value {
	__u32 rule_id;
	__u8 action; /* TG_ACTION_* */
	__u8 proxy;  /* TG_PROXY_* for TG_ACTION_REDIRECT */
	__u16 pad;
};

struct tg_fqdn_key {
	__u32 endpoint; /* ifindex */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

/* One port set open until expires_ns (CLOCK_MONOTONIC, exclusive). */
struct tg_fqdn_grant {
	__u64 expires_ns;
	__u16 port_start;
	__u16 port_end;
	__u8 protocol; /* TG_PROTO_ALL, TG_PROTO_ANY_L4, or IPPROTO_* */
	__u8 pad[3];
};

struct tg_fqdn_value {
	struct tg_fqdn_grant grants[TG_FQDN_GRANTS];
	__u32 count;
	__u32 pad;
};

/* The tuple of a connection's first packet, as seen on `ifindex`. */
struct tg_ct_key {
	__u32 ifindex;
	__u8 family;
	__u8 protocol;
	__u16 pad;
	__u16 sport; /* network byte order; ICMP echo id for echo */
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tg_ct_value {
	__u64 last_seen_ns;
	__u64 created_ns;
	__u32 rule_id;
	__u8 direction; /* of the first packet */
	__u8 flags;     /* TG_CT_* */
	__u8 proxy;     /* TG_PROXY_* when TG_CT_REDIRECT */
	__u8 reason;    /* TG_REASON_* of the decision that created it */
};

struct tg_flow_event {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 identity; /* of the peer */
	__u32 rule_id;
	__u8 family;
	__u8 protocol;
	__u8 direction;
	__u8 verdict; /* TG_VERDICT_* */
	__u8 reason;  /* TG_REASON_* */
	__u8 pad0;
	__u16 sport; /* network byte order */
	__u16 dport;
	__u16 pad1;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Per-CPU counters, by index. */
enum tg_counter {
	TG_CNT_PASS_CT = 0,
	TG_CNT_PASS_L2,         /* ARP, IPv6 neighbour discovery */
	TG_CNT_PASS_POLICY,     /* new flow allowed by a rule */
	TG_CNT_PASS_FQDN,       /* new flow allowed by the FQDN map */
	TG_CNT_PASS_NO_POLICY,  /* new flow, direction not enforced */
	TG_CNT_PASS_HOST,       /* node to local pod */
	TG_CNT_REDIRECT,        /* new flow handed to a proxy */
	TG_CNT_AUDIT,           /* would-be drop passed in audit mode */
	TG_CNT_DROP_DENY,       /* deny rule */
	TG_CNT_DROP_DEFAULT,    /* default deny */
	TG_CNT_DROP_NO_ENDPOINT,/* program on an interface with no endpoint entry */
	TG_CNT_DROP_UNSUPPORTED,/* not ARP/IPv4/IPv6, or unparseable */
	TG_CNT_EVENTS_LOST,     /* ring buffer full */
	TG_CNT_CT_FULL,         /* conntrack insert failed */
	TG_CNT_MAX,
};

#endif
