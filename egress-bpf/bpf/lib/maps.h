/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The maps, pinned by name so that both programs and every restart of the
 * agent share them (user space chooses the pin directory).
 */
#ifndef TOLLGATE_MAPS_H
#define TOLLGATE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tollgate.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct tg_endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_endpoints SEC(".maps");

/* The addresses each endpoint may send from (source address check). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tg_endpoint_addr);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_endpoint_addrs SEC(".maps");

/* One __u32 user space increments after every change of what the policy
 * decides (endpoints, ipcache, allow and deny entries; FQDN grants alone
 * never change the verdict of an established flow). An established flow
 * checked at an older revision is decided again. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_policy_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct tg_ipcache_key);
	__type(value, struct tg_ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct tg_policy_key);
	__type(value, struct tg_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_policy_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct tg_policy_key);
	__type(value, struct tg_policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_policy_deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tg_fqdn_key);
	__type(value, struct tg_fqdn_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_fqdn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct tg_ct_key);
	__type(value, struct tg_ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_conntrack SEC(".maps");

/*
 * Fragments: the ports of a datagram's first fragment, so its later
 * fragments (no L4 header) get the same decision (Cilium's IPv4 fragment
 * tracking, bpf/lib/ipv4.h). Written only when a first fragment passes;
 * a later fragment without an entry is dropped. Kernel only: user space
 * never reads it.
 */
struct tg_frag_key {
	__u32 ifindex;
	__u8 family;
	__u8 pad[3];
	__u32 id; /* IPv4 identification or IPv6 fragment header id, as on the wire */
	__u8 saddr[16];
	__u8 daddr[16];
};

struct tg_frag_value {
	__u16 sport; /* network byte order */
	__u16 dport;
	__u8 protocol; /* the L4 protocol the first fragment carried */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tg_frag_key);
	__type(value, struct tg_frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_frags SEC(".maps");

/*
 * Services: each frontend (ClusterIP and port) with its ready backends,
 * written by user space from Services and EndpointSlices. A pod's flow to a
 * frontend is sent to one backend before the policy decides (see service.h).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tg_service_key);
	__type(value, struct tg_service_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_services SEC(".maps");

/* Kernel only: the backend each flow to a frontend was sent to, so that all
 * of its packets go to the same one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tg_ct_key);
	__type(value, struct tg_lb_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_lb_flows SEC(".maps");

/* Kernel only: the frontend the replies of a translated flow come from. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tg_ct_key);
	__type(value, struct tg_rev_nat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_rev_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tg_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_settings SEC(".maps");

/* Kernel only: by endpoint (ifindex), the time its DNS budget is spent up
 * to (a GCRA's theoretical arrival time, ns). An entry left by a removed
 * endpoint holds back a new one on the same ifindex for at most the burst. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_dns_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TG_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tg_events SEC(".maps");

#endif
