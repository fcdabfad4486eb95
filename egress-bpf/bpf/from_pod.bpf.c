/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* TC ingress of a pod's host-side veth: every packet the pod sends (its egress). */
#include "lib/decide.h"

SEC("classifier")
int tollgate_from_pod(struct __sk_buff *skb)
{
	return tg_handle(skb, TG_DIR_EGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
