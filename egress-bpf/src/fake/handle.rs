//! `tg_handle` in Rust: the per-packet decision with the state the programs
//! keep (conntrack, fragments) and the policy revision, so that the fuzz
//! target can check the kernel's verdict on any frame against it.

use std::collections::HashMap;
use std::net::IpAddr;

use super::packet::{self, Frag, Packet, Parsed};
use super::{FakeDatapath, FakeDecision};
use crate::abi;
use crate::datapath::{FlowReason, FlowVerdict};

/// A `tg_frags` key: `(ifindex, family, fragment id, saddr, daddr)`.
pub type FragKey = (u32, u8, u32, [u8; 16], [u8; 16]);

/// What the programs keep between packets, mirrored.
#[derive(Debug, Clone, Default)]
pub struct FakePacketState {
    pub conntrack: HashMap<abi::CtKey, abi::CtValue>,
    /// `tg_frags`: `(protocol, sport, dport)` of a first fragment that passed.
    pub frags: HashMap<FragKey, (u8, u16, u16)>,
    /// `tg_policy_rev`, moved by every apply that changes the policy.
    pub policy_rev: u32,
}

impl FakePacketState {
    /// Forgets every flow and fragment (what flushing the kernel's maps does).
    pub fn flush(&mut self) {
        self.conntrack.clear();
        self.frags.clear();
    }
}

/// What `tg_handle` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeVerdict {
    /// `TC_ACT_OK`.
    pub passed: bool,
    /// The skb mark it leaves.
    pub mark: u32,
    /// The flow event it reports, if any: (verdict, reason).
    pub event: Option<(FlowVerdict, FlowReason)>,
}

fn reason_code(r: FlowReason) -> u8 {
    match r {
        FlowReason::DenyRule => abi::REASON_DENY_RULE,
        FlowReason::Fqdn => abi::REASON_FQDN,
        FlowReason::AllowRule => abi::REASON_ALLOW_RULE,
        FlowReason::NoPolicy => abi::REASON_NO_POLICY,
        FlowReason::DefaultDeny => abi::REASON_DEFAULT_DENY,
        FlowReason::HostToLocal => abi::REASON_HOST_TO_LOCAL,
        FlowReason::NoEndpoint => abi::REASON_NO_ENDPOINT,
        FlowReason::Unsupported => abi::REASON_UNSUPPORTED,
        FlowReason::Proxy => abi::REASON_PROXY,
        FlowReason::Spoofed => abi::REASON_SPOOFED,
        FlowReason::IcmpUnrelated => abi::REASON_ICMP_UNRELATED,
        FlowReason::L4Unreachable => abi::REASON_L4_UNREACHABLE,
        FlowReason::NoBackend => abi::REASON_NO_BACKEND,
    }
}

fn reason_of(code: u8) -> FlowReason {
    crate::datapath::FlowEvent::decode(&abi::FlowEvent {
        verdict: abi::VERDICT_ALLOWED,
        reason: code,
        family: 4,
        ..abi::FlowEvent::default()
    })
    .map_or(FlowReason::Unsupported, |e| e.reason)
}

fn ct_key(ifindex: u32, p: &Packet, reverse: bool) -> abi::CtKey {
    let (sport, dport, saddr, daddr) = if reverse {
        (p.dport, p.sport, p.daddr, p.saddr)
    } else {
        (p.sport, p.dport, p.saddr, p.daddr)
    };
    abi::CtKey {
        ifindex,
        family: p.family,
        protocol: p.protocol,
        pad: 0,
        sport,
        dport,
        saddr,
        daddr,
    }
}

fn reversed(k: &abi::CtKey) -> abi::CtKey {
    abi::CtKey {
        sport: k.dport,
        dport: k.sport,
        saddr: k.daddr,
        daddr: k.saddr,
        ..*k
    }
}

fn addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    abi::addr_from_bytes(family, bytes).expect("family 4 or 6")
}

fn mark_for_proxy(mark: u32, proxy: u8) -> u32 {
    let m = if proxy == abi::PROXY_DNS {
        abi::MARK_DNS
    } else {
        abi::MARK_HTTP
    };
    (mark & !abi::MARK_MASK) | m
}

impl FakeDatapath {
    /// `tg_ct_live`: the entry unless idle past its lifetime.
    fn ct_live(&self, k: &abi::CtKey, protocol: u8, now: u64) -> Option<abi::CtValue> {
        let ct = *self.packets.conntrack.get(k)?;
        let seen = ct.last_seen_ns;
        (!(seen < now && now - seen > abi::ct_lifetime_ns(ct.flags, protocol))).then_some(ct)
    }

    fn own_source(&self, ifindex: u32, p: &Packet) -> bool {
        if p.family == 6 && p.saddr[0] == 0xfe && p.saddr[1] & 0xc0 == 0x80 {
            return true;
        }
        self.state
            .addresses
            .contains_key(&(ifindex, addr(p.family, &p.saddr)))
    }

    fn frag_key(ifindex: u32, p: &Packet) -> FragKey {
        (ifindex, p.family, p.frag_id, p.saddr, p.daddr)
    }

    fn frag_record(&mut self, ifindex: u32, p: &Packet, passed: bool) {
        if p.frag != Frag::First {
            return;
        }
        let key = Self::frag_key(ifindex, p);
        if passed {
            self.packets
                .frags
                .insert(key, (p.protocol, p.sport, p.dport));
        } else {
            self.packets.frags.remove(&key);
        }
    }

    fn icmp_related(&self, ifindex: u32, p: &Packet, now: u64) -> bool {
        let k = abi::CtKey {
            ifindex,
            ..p.quoted
        };
        if k.family != p.family || p.daddr != k.saddr {
            return false;
        }
        self.ct_live(&k, k.protocol, now).is_some()
            || self.ct_live(&reversed(&k), k.protocol, now).is_some()
    }

    /// What the program attached in direction `dir` on `ifindex` does with
    /// `frame` (skb mark `mark`) at `now_ns`, updating conntrack and
    /// fragments as it would: `tg_handle`.
    pub fn handle(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        dir: u8,
        mark: u32,
        now_ns: u64,
    ) -> FakeVerdict {
        let pass = |mark, event| FakeVerdict {
            passed: true,
            mark,
            event,
        };
        let drop = |event| FakeVerdict {
            passed: false,
            mark,
            event,
        };
        let parsed = packet::parse(frame);
        if parsed == Parsed::PassL2 {
            return pass(mark, None);
        }
        let Some(ep) = self.state.endpoints.get(&ifindex).map(|e| e.value) else {
            return drop(Some((FlowVerdict::Denied, FlowReason::NoEndpoint)));
        };
        let (mut p, mut reachable) = match parsed {
            Parsed::Ok(p) => (p, true),
            Parsed::NoL4(p) => (p, false),
            Parsed::PassL2 | Parsed::Unsupported => return drop(None),
        };
        if dir == abi::DIR_EGRESS && !self.own_source(ifindex, &p) {
            self.frag_record(ifindex, &p, false);
            return drop(Some((FlowVerdict::Denied, FlowReason::Spoofed)));
        }
        if reachable && p.frag == Frag::Later {
            match self.packets.frags.get(&Self::frag_key(ifindex, &p)) {
                Some(&(protocol, sport, dport)) if p.family == 6 || p.protocol == protocol => {
                    p.protocol = protocol;
                    p.sport = sport;
                    p.dport = dport;
                }
                _ => reachable = false,
            }
        }
        if !reachable {
            self.frag_record(ifindex, &p, false);
            return drop(Some((FlowVerdict::Denied, FlowReason::L4Unreachable)));
        }
        let now = now_ns;
        let peer = addr(
            p.family,
            if dir == abi::DIR_EGRESS {
                &p.daddr
            } else {
                &p.saddr
            },
        );
        // What port rules match: the port, or the ICMP type (`tg_rule_port`).
        let dport = if matches!(p.protocol, abi::PROTO_ICMP | abi::PROTO_ICMPV6) {
            u16::from(p.icmp_type)
        } else {
            u16::from_be(p.dport)
        };

        if p.icmp_error {
            if self.icmp_related(ifindex, &p, now) {
                return pass(mark, None);
            }
            if ep.audit != 0 {
                return pass(mark, Some((FlowVerdict::Audit, FlowReason::IcmpUnrelated)));
            }
            return drop(Some((FlowVerdict::Denied, FlowReason::IcmpUnrelated)));
        }

        // Conntrack: the reply direction first.
        let rev = self.packets.policy_rev;
        for reverse in [true, false] {
            let key = ct_key(ifindex, &p, reverse);
            let Some(mut ct) = self.ct_live(&key, p.protocol, now) else {
                continue;
            };
            let mut event = None;
            if !reverse && ct.policy_rev != rev {
                let admitted = reason_of(ct.reason);
                let d = self.recheck(
                    ifindex, ep, dir, peer, p.protocol, dport, mark, admitted, now,
                );
                match d.verdict {
                    FlowVerdict::Denied => {
                        self.packets.conntrack.remove(&key);
                        self.frag_record(ifindex, &p, false);
                        return drop(Some((FlowVerdict::Denied, d.reason)));
                    }
                    FlowVerdict::Audit => event = Some((FlowVerdict::Audit, d.reason)),
                    _ => {}
                }
                ct.policy_rev = rev;
                if admitted != FlowReason::Fqdn {
                    ct.reason = reason_code(d.reason);
                    ct.rule_id = d.rule_id;
                }
                if d.proxy != abi::PROXY_NONE
                    && (ct.flags & abi::CT_REDIRECT == 0 || ct.proxy != d.proxy)
                {
                    ct.flags |= abi::CT_REDIRECT;
                    ct.proxy = d.proxy;
                }
            }
            ct.last_seen_ns = now;
            if p.protocol == abi::PROTO_TCP
                && p.tcp_flags & (packet::TCP_FIN | packet::TCP_RST) != 0
            {
                ct.flags |= abi::CT_CLOSING;
            }
            self.packets.conntrack.insert(key, ct);
            let mark = if ct.flags & abi::CT_REDIRECT != 0 && ct.direction == dir {
                mark_for_proxy(mark, ct.proxy)
            } else {
                mark
            };
            self.frag_record(ifindex, &p, true);
            return pass(mark, event);
        }

        let FakeDecision {
            verdict,
            reason,
            rule_id,
            proxy,
            ..
        } = self.decide_marked(ifindex, dir, peer, p.protocol, dport, mark, now);
        let event = (reason != FlowReason::NoPolicy).then_some((verdict, reason));
        if verdict == FlowVerdict::Denied {
            self.frag_record(ifindex, &p, false);
            return drop(event);
        }
        let mut flags = if verdict == FlowVerdict::Audit {
            abi::CT_AUDIT
        } else {
            0
        };
        let mut out_mark = mark;
        if proxy != abi::PROXY_NONE {
            flags |= abi::CT_REDIRECT;
            out_mark = mark_for_proxy(mark, proxy);
        }
        self.packets.conntrack.insert(
            ct_key(ifindex, &p, false),
            abi::CtValue {
                last_seen_ns: now,
                created_ns: now,
                rule_id,
                direction: dir,
                flags,
                proxy,
                reason: reason_code(reason),
                policy_rev: rev,
                pad: 0,
            },
        );
        self.frag_record(ifindex, &p, true);
        pass(out_mark, event)
    }
}
