/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* TC egress of a pod's host-side veth: every packet sent to the pod (its ingress). */
#include "lib/decide.h"

SEC("classifier")
int tollgate_to_pod(struct __sk_buff *skb)
{
	return tg_handle(skb, TG_DIR_INGRESS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
