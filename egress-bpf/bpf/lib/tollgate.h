/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Map keys and values shared by the kernel programs and user space.
 *
 * egress-bpf/src/abi.rs mirrors every struct here with #[repr(C)];
 * tests/abi_btf.rs checks each one's size and field offsets against this
 * header as compiled (the objects' BTF).
 */
#ifndef TOLLGATE_H
#define TOLLGATE_H

#include <linux/types.h>

/*
 * Constants user space shares are enumerators of named enums, not macros:
 * build.rs generates egress-bpf's Rust constants from the enums below (one
 * definition), and enums reach the object's BTF (through struct tg_abi at the
 * end), where tests/abi_btf.rs checks the generated values against clang's.
 * Each enum's Rust type is in build.rs (RUST_TYPES); values are plain integer
 * literals or products of them.
 */

/* Directions, from the point of view of the pod. */
enum tg_direction {
	TG_DIR_INGRESS = 0, /* to the pod: TC egress of the host-side veth */
	TG_DIR_EGRESS = 1,  /* from the pod: TC ingress of the host-side veth */
};

/* Reserved identities the datapath knows by number. HOST and WORLD are the
 * policy engine's (policy::Identity, asserted equal in abi.rs). */
enum tg_identity {
	TG_ID_ANY = 0,         /* policy key wildcard: any peer */
	TG_ID_HOST = 1,
	TG_ID_WORLD = 2,       /* an address the ipcache does not know */
	TG_ID_WORLD_IPV4 = 9,  /* ipcache 0.0.0.0/0 (Cilium's world-ipv4) */
	TG_ID_WORLD_IPV6 = 10, /* ipcache ::/0 (Cilium's world-ipv6) */
	/* Policy key of the ports a toFQDNs rule opens, whatever the address:
	 * never a peer's identity. An established flow an FQDN grant admitted
	 * stays allowed after the grant expires while such an entry still
	 * covers its port (a zombie, as in Cilium), not after the rule is gone. */
	TG_ID_FQDN_RULE = 11,
};

enum tg_proto {
	TG_PROTO_ALL = 0,      /* policy map: any protocol, any port (rules without toPorts) */
	TG_PROTO_ANY_L4 = 255, /* FQDN grant: TCP, UDP and SCTP (toPorts protocol ANY) */
};

/* Policy values. */
enum tg_action {
	TG_ACTION_ALLOW = 1,
	TG_ACTION_REDIRECT = 2,
	TG_ACTION_DENY = 3,
};

/* Proxies a flow can be redirected to. */
enum tg_proxy {
	TG_PROXY_NONE = 0,
	TG_PROXY_DNS = 1,
	TG_PROXY_HTTP = 2,
};

/* skb marks: the ones that ask nftables TPROXY for each proxy, and the
 * mask covering all of them. Bits 20-27, clear of the bits a Kubernetes node
 * already gives meaning to: kubelet's KUBE-FIREWALL drops packets with
 * 0x8000, kube-proxy masquerades those with 0x4000 (a mark with either bit
 * never reached the proxies on a real node). */
enum tg_mark {
	TG_MARK_MASK = 0x0ff00000,
	TG_MARK_DNS = 0x02a00000,
	TG_MARK_HTTP = 0x02b00000,
	/* Set (SO_MARK) by the HTTP proxy on its connections to the original
	 * destination: the proxy has applied that pod's ingress policy already.
	 * Outside the redirect route mark (0x2xxxxxx) so it is routed normally;
	 * pods cannot forge it (the mark is cleared when a packet crosses netns). */
	TG_MARK_FROM_PROXY = 0x03a00000,
};

/* Flow event verdicts and reasons. */
enum tg_verdict {
	TG_VERDICT_ALLOWED = 1,
	TG_VERDICT_DENIED = 2,
	TG_VERDICT_AUDIT = 3,
	TG_VERDICT_REDIRECTED = 4,
};

enum tg_reason {
	TG_REASON_DENY_RULE = 1,
	TG_REASON_FQDN = 2,
	TG_REASON_ALLOW_RULE = 3,
	TG_REASON_NO_POLICY = 4,
	TG_REASON_DEFAULT_DENY = 5,
	TG_REASON_HOST_TO_LOCAL = 6,
	TG_REASON_NO_ENDPOINT = 7,
	TG_REASON_UNSUPPORTED = 8,
	TG_REASON_PROXY = 9,
	TG_REASON_SPOOFED = 10,         /* source is none of the endpoint's addresses */
	TG_REASON_ICMP_UNRELATED = 11,  /* ICMP error quoting no tracked flow of the endpoint */
	TG_REASON_L4_UNREACHABLE = 12,  /* the L4 header cannot be reached: denied, whatever rule has no ports */
	TG_REASON_NO_BACKEND = 13,      /* to a Service address and port with no ready backend, or fragmented */
};

/* Conntrack flags (tg_ct_value.flags). */
enum tg_ct_flag {
	TG_CT_CLOSING = 0x01,  /* a FIN or RST was seen */
	TG_CT_REDIRECT = 0x02, /* the flow goes to tg_ct_value.proxy */
	TG_CT_AUDIT = 0x04,    /* created by a would-be drop in audit mode */
};

/* How long an idle conntrack entry lives, in seconds: tg_ct_lifetime() in
 * decide.h, and the agent's conntrack GC. */
enum tg_ct_lifetime {
	TG_CT_TCP_S = 6 * 3600, /* TCP, until a FIN or RST */
	TG_CT_CLOSING_S = 10,   /* TCP after a FIN or RST */
	TG_CT_OTHER_S = 60,     /* UDP, SCTP, ICMP and the rest */
};

/* Parser bounds. */
enum tg_parse_limits {
	/* IPv6 extension headers walked before the L4 header; a packet with
	 * more is dropped (Cilium: IPV6_MAX_HEADERS, DROP_INVALID_EXTHDR). */
	TG_IPV6_EXT_MAX = 8,
};

/* LPM trie keys: the bits after prefixlen that always match, before the
 * part whose length varies. */
enum tg_lpm_fixed_bits {
	TG_IPCACHE_FIXED_BITS = 32, /* family + pad, before addr */
	TG_POLICY_FIXED_BITS = 80,  /* endpoint, identity, direction, protocol, before dport */
};

enum tg_fqdn_limits {
	TG_FQDN_GRANTS = 8, /* port sets per (endpoint, address) */
};

enum tg_service_limits {
	/* Backends per Service frontend the program chooses from; user space
	 * writes at most this many (the first, in a stable order). */
	TG_SVC_BACKENDS = 64,
};

/* key: __u32 ifindex of the host-side veth */
struct tg_endpoint {
	__u32 identity;
	__u8 enforce_ingress; /* default deny at ingress */
	__u8 enforce_egress;  /* default deny at egress */
	__u8 audit;           /* would-be drops pass and are reported */
	__u8 allow_host;      /* the node may reach this pod regardless of policy */
};

/* key of tg_endpoint_addrs: an address the endpoint behind `ifindex` may
 * send from (value: __u32, always 1). */
struct tg_endpoint_addr {
	__u32 ifindex;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

/* LPM trie: prefixlen counts bits from `family` on; TG_IPCACHE_FIXED_BITS + the IP prefix. */
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

/* LPM trie: prefixlen = TG_POLICY_FIXED_BITS + the number of leading dport bits that must match. */
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
	__u8 reason;    /* TG_REASON_* of the decision that admitted it (FQDN stays FQDN) */
	__u32 policy_rev; /* tg_policy_rev when the policy last allowed it */
	__u32 pad;
};

/* A Service frontend: a ClusterIP (or other Service address) and port. */
struct tg_service_key {
	__u8 family;
	__u8 protocol; /* IPPROTO_TCP or IPPROTO_UDP */
	__u16 port;    /* network byte order */
	__u8 addr[16];
};

struct tg_backend {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u16 pad;
};

struct tg_service_value {
	__u32 count; /* backends in use, <= TG_SVC_BACKENDS; 0: none ready */
	__u32 pad;
	struct tg_backend backends[TG_SVC_BACKENDS];
};

/* The backend a flow to a Service frontend was sent to (key: the flow's
 * tuple as the pod sent it, a tg_ct_key). */
struct tg_lb_flow {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u16 slot; /* index into tg_service_value.backends */
};

/* The frontend a translated flow's replies must come from (key: the flow's
 * tuple after translation, a tg_ct_key). */
struct tg_rev_nat {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u16 pad;
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

/* Node-wide settings user space writes (tg_settings, one entry). */
struct tg_settings {
	/* Pod DNS over UDP, per endpoint: one datagram per interval on
	 * average, and up to `dns_burst_ns` worth of them back to back (at
	 * least one interval). 0: no bound. */
	__u64 dns_interval_ns;
	__u64 dns_burst_ns;
};

/* Per-CPU counters, by index. The metric name of each is its enumerator
 * without TG_CNT_, in lower case; TG_CNT_MAX counts them. */
enum tg_counter {
	TG_CNT_PASS_CONNTRACK = 0,
	TG_CNT_PASS_L2,           /* ARP, IPv6 neighbour discovery */
	TG_CNT_PASS_POLICY,       /* new flow allowed by a rule */
	TG_CNT_PASS_FQDN,         /* new flow allowed by the FQDN map */
	TG_CNT_PASS_NO_POLICY,    /* new flow, direction not enforced */
	TG_CNT_PASS_HOST,         /* node to local pod */
	TG_CNT_REDIRECT,          /* new flow handed to a proxy */
	TG_CNT_AUDIT,             /* would-be drop passed in audit mode */
	TG_CNT_DROP_DENY,         /* deny rule */
	TG_CNT_DROP_DEFAULT_DENY, /* default deny */
	TG_CNT_DROP_NO_ENDPOINT,  /* program on an interface with no endpoint entry */
	TG_CNT_DROP_UNSUPPORTED,  /* not ARP/IPv4/IPv6, or unparseable */
	TG_CNT_EVENTS_LOST,       /* ring buffer full */
	TG_CNT_CONNTRACK_FULL,    /* conntrack insert failed */
	TG_CNT_PASS_RELATED,      /* ICMP error quoting a tracked flow */
	TG_CNT_DROP_ICMP_UNRELATED, /* ICMP error quoting no tracked flow */
	TG_CNT_DROP_SPOOFED,      /* source is none of the endpoint's addresses */
	TG_CNT_DROP_L4_UNREACHABLE, /* IPv6 header chain too long or unknown, untracked fragment, truncated L4 */
	TG_CNT_CT_RECHECK,        /* established packet decided again after a policy change */
	TG_CNT_SVC_TRANSLATED,    /* packet to a Service frontend sent to a backend */
	TG_CNT_DROP_NO_BACKEND,   /* to a Service frontend with no ready backend, or fragmented */
	TG_CNT_DROP_DNS_RATE,     /* pod DNS datagram over its endpoint's budget (tg_settings) */
	TG_CNT_MAX,
};

/*
 * Never read or written by the programs. Declaring it puts every struct and
 * enum above into the object's BTF even where no map or code names the type
 * (tg_flow_event is only ever a ring buffer record, the enums only
 * constants), so that tests/abi_btf.rs can check the Rust mirrors against
 * what clang laid out, as Cilium's alignchecker does. Members are values, not
 * pointers: clang writes a struct reached only through a pointer as a bare
 * forward declaration. Its section is none the loader knows (like
 * "license"), so loading creates nothing for it.
 * Add a member here for every new shared struct or enum.
 */
struct tg_abi {
	struct tg_endpoint endpoint;
	struct tg_endpoint_addr endpoint_addr;
	struct tg_ipcache_key ipcache_key;
	struct tg_ipcache_value ipcache_value;
	struct tg_policy_key policy_key;
	struct tg_policy_value policy_value;
	struct tg_fqdn_key fqdn_key;
	struct tg_fqdn_value fqdn_value;
	struct tg_ct_key ct_key;
	struct tg_ct_value ct_value;
	struct tg_flow_event flow_event;
	struct tg_service_key service_key;
	struct tg_backend backend;
	struct tg_service_value service_value;
	struct tg_lb_flow lb_flow;
	struct tg_rev_nat rev_nat;
	struct tg_settings settings;
	enum tg_direction direction;
	enum tg_identity identity;
	enum tg_proto proto;
	enum tg_action action;
	enum tg_proxy proxy;
	enum tg_mark mark;
	enum tg_verdict verdict;
	enum tg_reason reason;
	enum tg_ct_flag ct_flag;
	enum tg_ct_lifetime ct_lifetime;
	enum tg_parse_limits parse_limits;
	enum tg_lpm_fixed_bits lpm_fixed_bits;
	enum tg_fqdn_limits fqdn_limits;
	enum tg_service_limits service_limits;
	enum tg_counter counter;
};
static struct tg_abi tg_abi __attribute__((used, section(".tg_abi")));

#endif
