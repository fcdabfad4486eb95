//! A local pod's host-side veth, found from its IP, whatever the CNI's
//! layout (this is how Kubernetes mode finds the interface to enforce on):
//!
//! - **routed** (ptp, Calico, Cilium, kindnet): a route to the pod's IP (a
//!   /32, or the pod subnet) leads straight to its veth;
//! - **bridged** (the bridge plugin, flannel's `cni0`): the route leads to a
//!   bridge, and the veth is one of its ports — the one whose peer, the
//!   pod's `eth0` in the pod's network namespace, carries the IP. Each port
//!   names its peer (ifindex, and the peer namespace's id as this namespace
//!   numbers it), and rtnetlink lists that namespace's addresses without
//!   entering it ([`crate::links`]). The bridge itself is never the answer:
//!   attaching there would enforce one pod's policy on all of them.
//!
//! Why not the bridge's forwarding table (pod MAC -> port, MAC from the
//! neighbour table)? Those entries exist only once the pod has sent
//! something and age out after five idle minutes: an idle pod would drop
//! out of enforcement, and a pod that has not spoken yet would not be
//! found. The peer's addresses are there from the moment the CNI has set
//! the pod up.
//!
//! Routes come from `/proc/net/route` and `/proc/net/ipv6_route` (the main
//! table, where CNI plugins put pod routes), links and peer addresses from
//! rtnetlink; all of it is read once per look ([`read`]) and the decision
//! ([`interface_for`]) is pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::links::{Link, LinkAddress};

/// One route: destination prefix and the interface it leaves through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
}

/// Routes from the text of `/proc/net/route` (IPv4: hex, host byte order).
pub fn parse_ipv4(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            let dest = u32::from_str_radix(dest, 16).ok()?;
            let mask = u32::from_str_radix(mask, 16).ok()?;
            Some(Route {
                // The kernel prints the network-order word as a native u32.
                dest: IpAddr::V4(Ipv4Addr::from(dest.to_ne_bytes())),
                prefix_len: mask.count_ones() as u8,
                interface: iface.to_string(),
            })
        })
        .collect()
}

/// Routes from the text of `/proc/net/ipv6_route` (network-order hex).
pub fn parse_ipv6(text: &str) -> Vec<Route> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, plen, iface) = (f.first()?, f.get(1)?, f.get(9)?);
            let dest = u128::from_str_radix(dest, 16).ok()?;
            Some(Route {
                dest: IpAddr::V6(Ipv6Addr::from(dest)),
                prefix_len: u8::from_str_radix(plen, 16).ok()?,
                interface: iface.to_string(),
            })
        })
        .collect()
}

fn contains(route: &Route, ip: IpAddr) -> bool {
    match (route.dest, ip) {
        (IpAddr::V4(d), IpAddr::V4(a)) if route.prefix_len <= 32 => {
            let shift = 32 - u32::from(route.prefix_len);
            let mask = u32::MAX.checked_shl(shift).unwrap_or(0);
            u32::from(d) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(d), IpAddr::V6(a)) if route.prefix_len <= 128 => {
            let shift = 128 - u32::from(route.prefix_len);
            let mask = u128::MAX.checked_shl(shift).unwrap_or(0);
            u128::from(d) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// The interface of the longest route covering `ip`, ignoring default
/// routes and loopback: a pod IP only reachable through the default route
/// is not on this node.
pub fn lookup(routes: &[Route], ip: IpAddr) -> Option<&str> {
    routes
        .iter()
        .filter(|r| r.prefix_len > 0 && r.interface != "lo" && contains(r, ip))
        .max_by_key(|r| r.prefix_len)
        .map(|r| r.interface.as_str())
}

/// What this network namespace says about where its pods are.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub routes: Vec<Route>,
    /// Every link; empty if rtnetlink could not be read (then no interface
    /// is trusted not to be a bridge, and none is returned).
    pub links: Vec<Link>,
    /// The addresses in each peer namespace behind a bridge port, by the
    /// namespace's id.
    pub peer_addresses: BTreeMap<i32, Vec<LinkAddress>>,
}

impl HostView {
    fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The port of bridge `bridge` whose peer carries `ip`.
    fn bridge_port(&self, bridge: &Link, ip: IpAddr) -> Option<&str> {
        self.links
            .iter()
            .filter(|l| l.master == Some(bridge.index))
            .find(|l| {
                l.peer.is_some_and(|peer| {
                    self.peer_addresses.get(&peer.netnsid).is_some_and(|addrs| {
                        addrs.iter().any(|a| a.index == peer.index && a.ip == ip)
                    })
                })
            })
            .map(|l| l.name.as_str())
    }

    /// The host-side veth of the pod that has `ip`: the interface its route
    /// leads to, or, when that is a bridge, the port whose peer has `ip`.
    pub fn veth(&self, ip: IpAddr) -> Option<&str> {
        let name = lookup(&self.routes, ip)?;
        let link = self.link(name)?;
        if link.is_bridge() {
            self.bridge_port(link, ip)
        } else {
            Some(name)
        }
    }
}

/// Reads routes, links and, for the ports of bridges that have veth peers,
/// the peers' addresses.
pub fn read() -> HostView {
    let mut routes = std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_ipv4(&t))
        .unwrap_or_default();
    routes.extend(
        std::fs::read_to_string("/proc/net/ipv6_route")
            .map(|t| parse_ipv6(&t))
            .unwrap_or_default(),
    );
    let links = crate::links::read_links().unwrap_or_else(|e| {
        warn_once(
            &LINKS_FAILED,
            &format!("cannot list links with rtnetlink: {e}; local pods' veths are not found"),
        );
        Vec::new()
    });
    let bridges: Vec<u32> = links
        .iter()
        .filter(|l| l.is_bridge())
        .map(|l| l.index)
        .collect();
    let mut peer_addresses = BTreeMap::new();
    for link in &links {
        let Some(peer) = link.peer else { continue };
        if !link.master.is_some_and(|m| bridges.contains(&m))
            || peer_addresses.contains_key(&peer.netnsid)
        {
            continue;
        }
        match crate::links::read_peer_addresses(peer.netnsid) {
            Ok(addrs) => {
                peer_addresses.insert(peer.netnsid, addrs);
            }
            Err(e) => warn_once(
                &PEERS_FAILED,
                &format!("cannot list the addresses behind bridge port {} (needs Linux 4.20+): {e}; pods on bridges are not found", link.name),
            ),
        }
    }
    HostView {
        routes,
        links,
        peer_addresses,
    }
}

static LINKS_FAILED: AtomicBool = AtomicBool::new(false);
static PEERS_FAILED: AtomicBool = AtomicBool::new(false);

/// Logs a failure that would otherwise repeat on every look (every 2 s).
fn warn_once(flag: &AtomicBool, message: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!("{message}");
    }
}

/// The host-side veth of the pod that has `ips` (the first that is found).
pub fn interface_for(view: &HostView, ips: &[IpAddr]) -> Option<String> {
    ips.iter().find_map(|ip| view.veth(*ip)).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        tgp1\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        lxc9\t0A02000A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
        cni0\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";

    const V6: &str = "fd000001000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     tgp1\n\
        00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";

    #[test]
    fn the_longest_matching_route_names_the_pods_veth() {
        let routes = parse_ipv4(V4);
        assert_eq!(routes.len(), 4);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(lookup(&routes, ip("10.0.1.10")), Some("tgp1"));
        // A /32 per pod (as Cilium and Calico do) beats the node's pod CIDR.
        assert_eq!(lookup(&routes, ip("10.0.2.10")), Some("lxc9"));
        assert_eq!(lookup(&routes, ip("10.0.2.11")), Some("cni0"));
        // Only the default route: not a pod of this node.
        assert_eq!(lookup(&routes, ip("192.0.2.7")), None);
    }

    #[test]
    fn ipv6_routes_are_parsed_and_loopback_is_never_a_pod_interface() {
        let routes = parse_ipv6(V6);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(lookup(&routes, ip("fd00:1::10")), Some("tgp1"));
        assert_eq!(lookup(&routes, ip("::1")), None);
        let view = HostView {
            routes,
            links: vec![link(5, "tgp1", Some("veth"), None, None)],
            ..HostView::default()
        };
        assert_eq!(
            interface_for(&view, &[ip("192.0.2.1"), ip("fd00:1::10")]).as_deref(),
            Some("tgp1")
        );
    }

    fn link(
        index: u32,
        name: &str,
        kind: Option<&str>,
        master: Option<u32>,
        peer: Option<(i32, u32)>,
    ) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(String::from),
            master,
            peer: peer.map(|(netnsid, index)| crate::links::Peer { netnsid, index }),
        }
    }

    /// /proc/net/route of a node with the bridge plugin: the pod subnet on
    /// cni0 (10.244.0.0/24), nothing per pod.
    const BRIDGED: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        cni0\t0000F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    fn bridged_view() -> HostView {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Two pods: veth-a (peer: ifindex 2 in namespace 0) and veth-b
        // (peer: ifindex 2 in namespace 1); a port with no peer (the
        // node's own uplink enslaved to the bridge).
        let links = vec![
            link(2, "eth0", None, None, None),
            link(4, "cni0", Some("bridge"), None, None),
            link(7, "veth-a", Some("veth"), Some(4), Some((0, 2))),
            link(8, "veth-b", Some("veth"), Some(4), Some((1, 2))),
            link(9, "uplink", None, Some(4), None),
        ];
        let mut peer_addresses = BTreeMap::new();
        peer_addresses.insert(
            0,
            vec![
                LinkAddress {
                    index: 1,
                    ip: ip("127.0.0.1"),
                },
                LinkAddress {
                    index: 2,
                    ip: ip("10.244.0.7"),
                },
            ],
        );
        peer_addresses.insert(
            1,
            vec![
                LinkAddress {
                    index: 2,
                    ip: ip("10.244.0.8"),
                },
                LinkAddress {
                    index: 2,
                    ip: ip("fd00::8"),
                },
            ],
        );
        HostView {
            routes: parse_ipv4(BRIDGED),
            links,
            peer_addresses,
        }
    }

    #[test]
    fn behind_a_bridge_the_port_whose_peer_has_the_ip_is_the_pods_veth() {
        let view = bridged_view();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(view.veth(ip("10.244.0.7")), Some("veth-a"));
        assert_eq!(view.veth(ip("10.244.0.8")), Some("veth-b"));
        assert_eq!(
            interface_for(&view, &[ip("fd00::8"), ip("10.244.0.8")]).as_deref(),
            Some("veth-b"),
            "the first address that is found decides"
        );
    }

    #[test]
    fn the_bridge_itself_is_never_a_pods_interface() {
        let view = bridged_view();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Routed to the bridge, but no port's peer has it (the pod's veth is
        // not up yet, or it is on another node behind the same subnet).
        assert_eq!(view.veth(ip("10.244.0.99")), None);
        // The peer's loopback address does not make its port match 127/8.
        assert_eq!(view.veth(ip("127.0.0.1")), None);
    }

    #[test]
    fn without_link_information_nothing_is_trusted() {
        // rtnetlink failed: cni0 might be a bridge, so no answer at all.
        let view = HostView {
            routes: parse_ipv4(BRIDGED),
            ..HostView::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(view.veth(ip("10.244.0.7")), None);
    }

    #[test]
    fn links_and_addresses_parsed_from_kernel_bytes_find_the_port() {
        use crate::links::tests::{addr_msg, link_msg};
        let mut buf = link_msg(4, "cni0", Some("bridge"), None, None);
        buf.extend(link_msg(7, "veth-a", Some("veth"), Some(4), Some((0, 2))));
        let (links, _) = crate::links::parse_links(&buf).unwrap();
        let (addrs, _) =
            crate::links::parse_addresses(&addr_msg(2, "10.244.0.7".parse().unwrap(), None))
                .unwrap();
        let view = HostView {
            routes: parse_ipv4(BRIDGED),
            links,
            peer_addresses: [(0, addrs)].into_iter().collect(),
        };
        assert_eq!(view.veth("10.244.0.7".parse().unwrap()), Some("veth-a"));
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        assert!(parse_ipv4("header\nnot a route\n\n").is_empty());
        assert!(parse_ipv6("zz 40\n").is_empty());
    }
}
