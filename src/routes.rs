//! Which interface a pod's IP is routed through in this network namespace:
//! CNI plugins give each pod a host-side veth and a route to the pod's IP
//! over it (a /32 or the pod subnet), so in Kubernetes mode the route is how
//! a local pod's veth is found.
//!
//! Read from `/proc/net/route` and `/proc/net/ipv6_route` (the main table,
//! which is where CNI plugins put pod routes); the parsing is pure and the
//! one read is [`interface_for`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// The routes of this network namespace, both families.
pub fn read() -> Vec<Route> {
    let mut routes = std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_ipv4(&t))
        .unwrap_or_default();
    routes.extend(
        std::fs::read_to_string("/proc/net/ipv6_route")
            .map(|t| parse_ipv6(&t))
            .unwrap_or_default(),
    );
    routes
}

/// The interface `ips` are routed through (the first that has a route).
pub fn interface_for(routes: &[Route], ips: &[IpAddr]) -> Option<String> {
    ips.iter()
        .find_map(|ip| lookup(routes, *ip))
        .map(str::to_string)
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
        assert_eq!(
            interface_for(&routes, &[ip("192.0.2.1"), ip("fd00:1::10")]).as_deref(),
            Some("tgp1")
        );
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        assert!(parse_ipv4("header\nnot a route\n\n").is_empty());
        assert!(parse_ipv6("zz 40\n").is_empty());
    }
}
