/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* A packet's flow tuple as a conntrack key, and address comparison. */
#ifndef TOLLGATE_TUPLE_H
#define TOLLGATE_TUPLE_H

#include <linux/bpf.h>

#include "parse.h"
#include "tollgate.h"

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

static __always_inline int tg_addr_eq(const __u8 *a, const __u8 *b)
{
	__u32 x[4], y[4];
	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

#endif
