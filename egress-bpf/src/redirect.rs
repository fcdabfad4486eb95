//! Handing flows to the proxies: the programs mark a flow's packets
//! (`MARK_DNS`, `MARK_HTTP`); an nftables table turns marked packets into
//! TPROXY deliveries to the proxy's transparent socket, with conntrack
//! bypassed (`notrack`, so a DNAT of the resolver address cannot hide the
//! original destination), and a policy-routing rule delivers them locally.
//! See docs/dns-interception.md for why, and what was verified.
//!
//! Ingress L7 (HTTP rules on a pod's ingress) is caught before routing
//! instead: the TC program on the pod's veth only sees such packets after
//! the node routed them, too late for TPROXY, so the table matches the
//! pod's address and port directly ([`RedirectConfig::ingress_http`]).
//!
//! Both `nft` (Debian `nftables`) and `ip` (`iproute2`) must be installed;
//! they run in the caller's network namespace.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::abi::{MARK_DNS, MARK_HTTP, MARK_MASK};
use crate::datapath::{CommandError, DatapathError};

/// The nftables table this module owns.
pub const TABLE: &str = "tollgate";

/// Where redirected flows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The DNS proxy's transparent UDP and TCP port.
    pub dns_port: u16,
    /// The HTTP proxy's transparent TCP port, if one runs.
    pub http_port: Option<u16>,
    /// Routing table (and rule preference) for local delivery.
    pub route_table: u32,
    /// Local pods' addresses and TCP port ranges whose ingress carries HTTP
    /// rules: connections to them go to the HTTP proxy (needs `http_port`).
    pub ingress_http: Vec<IngressHttp>,
    /// Every TCP port range with HTTP rules (either direction): replies
    /// from these ports may belong to the HTTP proxy's own connections,
    /// made from the client's address, and are handed to it.
    pub http_ports: Vec<(u16, u16)>,
    /// UDP DNS datagrams per second each pod may send to the DNS proxy,
    /// with a second's worth of burst; the excess is dropped on the pod's
    /// interface, before any socket holds it (0 = no bound).
    pub dns_datagrams_per_second: u32,
}

/// One local pod address and TCP port range with ingress HTTP rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IngressHttp {
    pub addr: std::net::IpAddr,
    pub ports: (u16, u16),
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            dns_port: 15053,
            http_port: None,
            route_table: 2004,
            ingress_http: Vec::new(),
            http_ports: Vec::new(),
            dns_datagrams_per_second: 0,
        }
    }
}

/// Both proxy marks share these bits, so one routing rule covers them.
const ROUTE_MARK: u32 = 0x0200_0000;
const ROUTE_MASK: u32 = 0x0f00_0000;

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, DatapathError> {
    let failed = |source| DatapathError::Redirect {
        command: format!("{program} {}", args.join(" ")),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            failed(CommandError::Spawn {
                package: if program == "nft" {
                    "nftables"
                } else {
                    "iproute2"
                },
                source,
            })
        })?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(|e| failed(CommandError::Io(e)))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(CommandError::Io(e)))?;
    if !out.status.success() {
        return Err(failed(CommandError::Failed {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nftables ruleset for `config` (replaces the table atomically).
pub fn ruleset(config: &RedirectConfig) -> String {
    let mark = |m: u32| format!("meta mark & {MARK_MASK:#010x} == {m:#010x}");
    let mut mangle = String::new();
    let mut raw = String::new();
    let mut redirects = vec![(MARK_DNS, "{ tcp, udp }", config.dns_port)];
    if let Some(port) = config.http_port {
        redirects.push((MARK_HTTP, "tcp", port));
        // Replies to the HTTP proxy's connections, which it makes from the
        // client's address: the socket that owns them is local, the address
        // is not, so mark them for local delivery. Only from ports with HTTP
        // rules, to keep the socket lookup off all other traffic.
        if !config.http_ports.is_empty() {
            let ports: Vec<String> = config
                .http_ports
                .iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            mangle.push_str(&format!(
                "    tcp sport {{ {} }} socket transparent 1 meta mark set {MARK_HTTP:#010x} accept\n",
                ports.join(", ")
            ));
        }
    }
    for (m, l4, port) in redirects {
        raw.push_str(&format!("    {} notrack\n", mark(m)));
        mangle.push_str(&format!(
            "    {} meta nfproto ipv4 meta l4proto {l4} tproxy ip to :{port}\n",
            mark(m)
        ));
        mangle.push_str(&format!(
            "    {} meta nfproto ipv6 meta l4proto {l4} tproxy ip6 to :{port}\n",
            mark(m)
        ));
    }
    if let Some(port) = config.http_port {
        for target in &config.ingress_http {
            let (family, tproxy) = if target.addr.is_ipv4() {
                ("ip", "ip")
            } else {
                ("ip6", "ip6")
            };
            let (lo, hi) = target.ports;
            let ports = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let m = format!("{family} daddr {} tcp dport {ports}", target.addr);
            raw.push_str(&format!("    {m} notrack\n"));
            mangle.push_str(&format!(
                "    {m} meta mark set {MARK_HTTP:#010x} tproxy {tproxy} to :{port}\n"
            ));
        }
    }
    // The proxies' own ports are reached only through TPROXY (which keeps
    // the original destination port): anything sent to them directly, from
    // a pod or from outside, is dropped before a proxy sees it. Loopback
    // stays open for the node's own tools.
    let mut ports = vec![config.dns_port.to_string()];
    if let Some(port) = config.http_port {
        ports.push(port.to_string());
    }
    let guard = format!(
        "    iifname != \"lo\" meta l4proto {{ tcp, udp }} th dport {{ {} }} counter drop\n",
        ports.join(", ")
    );
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  \
         chain raw {{\n    type filter hook prerouting priority raw; policy accept;\n{raw}  }}\n  \
         chain mangle {{\n    type filter hook prerouting priority mangle; policy accept;\n{mangle}  }}\n  \
         chain input {{\n    type filter hook input priority filter; policy accept;\n{guard}  }}\n}}\n"
    )
}

/// Installs (or refreshes) the nftables table and the routing rules.
pub fn install(config: &RedirectConfig) -> Result<(), DatapathError> {
    run("nft", &["-f", "-"], Some(&ruleset(config)))?;
    let table = config.route_table.to_string();
    let fwmark = format!("{ROUTE_MARK:#x}/{ROUTE_MASK:#x}");
    for family in ["-4", "-6"] {
        let existing = run("ip", &[family, "rule", "show", "pref", &table], None)?;
        if existing.trim().is_empty() {
            run(
                "ip",
                &[
                    family, "rule", "add", "pref", &table, "fwmark", &fwmark, "lookup", &table,
                ],
                None,
            )?;
        }
        let all = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
        run(
            "ip",
            &[
                family, "route", "replace", "local", all, "dev", "lo", "table", &table,
            ],
            None,
        )?;
    }
    Ok(())
}

/// Removes the table and the routing rules (missing pieces are fine).
pub fn uninstall(config: &RedirectConfig) -> Result<(), DatapathError> {
    let _ = run("nft", &["delete", "table", "inet", TABLE], None);
    let table = config.route_table.to_string();
    for family in ["-4", "-6"] {
        let _ = run("ip", &[family, "rule", "del", "pref", &table], None);
        let _ = run("ip", &[family, "route", "flush", "table", &table], None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_redirects_dns_marks_for_both_families_without_conntrack() {
        let r = ruleset(&RedirectConfig::default());
        assert!(
            r.contains("meta mark & 0x0ff00000 == 0x02a00000 notrack"),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv4 meta l4proto { tcp, udp } tproxy ip to :15053"),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv6 meta l4proto { tcp, udp } tproxy ip6 to :15053"),
            "{r}"
        );
        assert!(
            !r.contains("0x02b00000"),
            "no HTTP redirect without an HTTP proxy"
        );
        assert!(
            r.contains(
                "iifname != \"lo\" meta l4proto { tcp, udp } th dport { 15053 } counter drop"
            ),
            "the proxy port is closed to direct traffic: {r}"
        );
        let with_http = ruleset(&RedirectConfig {
            http_port: Some(15080),
            ..RedirectConfig::default()
        });
        assert!(
            with_http.contains("0x02b00000 meta nfproto ipv4 meta l4proto tcp tproxy ip to :15080")
        );
    }

    #[test]
    fn ingress_http_targets_are_caught_before_routing_only_with_an_http_proxy() {
        let targets = vec![
            IngressHttp {
                addr: "10.0.2.10".parse().unwrap(),
                ports: (80, 80),
            },
            IngressHttp {
                addr: "fd00:2::10".parse().unwrap(),
                ports: (8000, 8080),
            },
        ];
        let r = ruleset(&RedirectConfig {
            http_port: Some(15080),
            ingress_http: targets.clone(),
            ..RedirectConfig::default()
        });
        assert!(r.contains("ip daddr 10.0.2.10 tcp dport 80 notrack"), "{r}");
        assert!(
            r.contains(
                "ip daddr 10.0.2.10 tcp dport 80 meta mark set 0x02b00000 tproxy ip to :15080"
            ),
            "{r}"
        );
        assert!(
            r.contains("ip6 daddr fd00:2::10 tcp dport 8000-8080 meta mark set 0x02b00000 tproxy ip6 to :15080"),
            "{r}"
        );
        let without = ruleset(&RedirectConfig {
            ingress_http: targets,
            ..RedirectConfig::default()
        });
        assert!(!without.contains("10.0.2.10"));
    }

    #[test]
    fn replies_to_the_http_proxy_are_looked_up_only_from_http_rule_ports() {
        let config = RedirectConfig {
            http_port: Some(15080),
            ..RedirectConfig::default()
        };
        assert!(!ruleset(&config).contains("socket transparent"));
        let r = ruleset(&RedirectConfig {
            http_ports: vec![(80, 80), (8000, 8080)],
            ..config
        });
        assert!(
            r.contains(
                "tcp sport { 80, 8000-8080 } socket transparent 1 meta mark set 0x02b00000 accept"
            ),
            "{r}"
        );
    }
}
