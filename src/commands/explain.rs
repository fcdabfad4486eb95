//! `tollgate policy explain`: decide one flow the way the datapath would and
//! say which rule decided it. A flow between two local endpoints needs the
//! source's egress and the destination's ingress; both are shown.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use policy::inventory::IpOwner;
use policy::{
    Decision, Direction, Endpoint, FqdnMatcher, Identity, Inventory, L7Decision, PeerRef,
    PolicySet, Protocol, ResolveOptions, Verdict,
};
use serde::Serialize;

use crate::cli::Output;

pub struct Request<'a> {
    pub policies: &'a [PathBuf],
    pub endpoints: &'a Path,
    pub from: &'a str,
    pub to: &'a str,
    pub port: &'a str,
    pub options: ResolveOptions,
    pub output: Output,
    pub cluster_name: &'a str,
}

/// One side of the flow as the user named it.
enum Side<'a> {
    Endpoint(&'a Endpoint),
    Address(IpAddr, Identity),
    Entity(Identity),
    Name(String),
}

impl Side<'_> {
    fn describe(&self) -> String {
        match self {
            Side::Endpoint(e) => format!("{} (identity {})", e.key, e.identity),
            Side::Address(ip, id) => format!("{ip} (identity {id})"),
            Side::Entity(id) => format!("identity {id}"),
            Side::Name(n) => format!(
                "{n} (an IP learned for it through DNS, identity {})",
                Identity::WORLD
            ),
        }
    }
}

fn parse_side<'a>(inventory: &'a Inventory, text: &str) -> anyhow::Result<Side<'a>> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(match inventory.owner(ip) {
            IpOwner::Endpoint(e) => Side::Endpoint(e),
            IpOwner::Reserved(id) => Side::Address(ip, id),
            IpOwner::World => Side::Address(ip, Identity::WORLD),
        });
    }
    if let Some(e) = inventory.find(text) {
        return Ok(Side::Endpoint(e));
    }
    if let Some((id, _)) = Identity::RESERVED.iter().find(|(_, name)| *name == text) {
        return Ok(Side::Entity(*id));
    }
    if text.contains('/') {
        bail!("{text:?} is not an endpoint in the endpoints file");
    }
    if text.contains('.') && policy::fqdn::normalize_name(text).is_some() {
        return Ok(Side::Name(text.to_string()));
    }
    Err(anyhow!(
        "{text:?} is neither namespace/pod, a unique pod name, an IP, an entity \
         (host, world, remote-node, kube-apiserver, ...) nor a DNS name"
    ))
}

fn parse_port(text: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = match text.split_once('/') {
        Some((p, proto)) => (p, proto.parse::<Protocol>().map_err(|e| anyhow!(e))?),
        None => match text.parse::<Protocol>() {
            Ok(p @ (Protocol::Icmp | Protocol::Icmpv6)) => return Ok((0, p)),
            _ => (text, Protocol::Tcp),
        },
    };
    // An ICMP "port" is the type (`icmps` rules), where 0 is echo reply.
    let icmp = matches!(proto, Protocol::Icmp | Protocol::Icmpv6);
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0 || icmp)
        .filter(|p| !icmp || *p <= 255)
        .with_context(|| {
            format!(
                "--port {text:?}: expected PORT/PROTOCOL such as 443/TCP, TYPE/ICMP or TYPE/ICMPv6 such as 8/ICMP, or ICMP"
            )
        })?;
    Ok((port, proto))
}

#[derive(Serialize)]
struct Check {
    direction: Direction,
    endpoint: String,
    peer: String,
    verdict: Verdict,
    reason: policy::Reason,
    rule: Option<policy::RuleRef>,
    /// For default deny: the policies that enforce it on this endpoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    default_deny_by: Vec<String>,
    l7: Option<Vec<String>>,
}

#[derive(Serialize)]
struct Explanation {
    verdict: Verdict,
    from: String,
    to: String,
    port: u16,
    protocol: Protocol,
    checks: Vec<Check>,
}

pub fn run(req: &Request) -> anyhow::Result<ExitCode> {
    let report = policy::load_paths(req.policies);
    for d in &report.diagnostics {
        eprintln!("{d}");
    }
    if report.has_errors() {
        bail!("the policies are invalid; fix them first (tollgate policy check)");
    }
    let inventory = Inventory::load_in_cluster(req.endpoints, req.cluster_name)?;
    let set = PolicySet::new(report.policies);
    let resolved = set.resolve(&inventory, req.options);
    let from = parse_side(&inventory, req.from).context("--from")?;
    let to = parse_side(&inventory, req.to).context("--to")?;
    let (port, protocol) = parse_port(req.port)?;

    let mut checks = Vec::new();
    let mut evaluate = |subject: &Side, other: &Side, direction: Direction| {
        let Side::Endpoint(e) = subject else { return };
        let names;
        let peer = match other {
            Side::Endpoint(p) => PeerRef {
                identity: p.identity,
                ip: p.ips.first().copied(),
                names: &[],
            },
            Side::Address(ip, id) => PeerRef {
                identity: *id,
                ip: Some(*ip),
                names: &[],
            },
            Side::Entity(id) => PeerRef {
                identity: *id,
                ip: None,
                names: &[],
            },
            Side::Name(n) => {
                names = [n.clone()];
                PeerRef {
                    identity: Identity::WORLD,
                    ip: None,
                    names: &names,
                }
            }
        };
        let ep = resolved
            .endpoint(&e.key)
            .expect("every inventory endpoint is resolved");
        let decision = ep.decide(set.matcher(), direction, &peer, port, protocol);
        let mut c = check(direction, subject, other, decision, set.matcher());
        if c.reason == policy::Reason::DefaultDeny {
            c.default_deny_by = ep
                .direction(direction)
                .enforced_by
                .iter()
                .map(|p| p.to_string())
                .collect();
        }
        checks.push(c);
    };
    evaluate(&from, &to, Direction::Egress);
    evaluate(&to, &from, Direction::Ingress);
    if checks.is_empty() {
        bail!(
            "neither --from {:?} nor --to {:?} is an endpoint of {}: there is no policy to apply",
            req.from,
            req.to,
            req.endpoints.display()
        );
    }
    let verdict = if checks.iter().any(|c| c.verdict == Verdict::Denied) {
        Verdict::Denied
    } else if checks.iter().any(|c| c.verdict == Verdict::Audit) {
        Verdict::Audit
    } else {
        Verdict::Allowed
    };
    let explanation = Explanation {
        verdict,
        from: req.from.to_string(),
        to: req.to.to_string(),
        port,
        protocol,
        checks,
    };
    match req.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        Output::Text => print_text(&explanation),
    }
    Ok(if verdict == Verdict::Denied {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn check(
    direction: Direction,
    subject: &Side,
    other: &Side,
    d: Decision,
    matcher: &FqdnMatcher,
) -> Check {
    let l7 = match &d.l7 {
        L7Decision::None => None,
        L7Decision::Dns(ids) => Some(
            ids.iter()
                .map(|id| format!("dns {}", matcher.selector(*id)))
                .collect(),
        ),
        L7Decision::Http(rules) => Some(rules.iter().map(|r| format!("http {r}")).collect()),
        L7Decision::Tls(names) => Some(names.iter().map(|n| format!("tls sni {n}")).collect()),
    };
    Check {
        direction,
        endpoint: subject.describe(),
        peer: other.describe(),
        verdict: d.verdict,
        reason: d.reason,
        rule: d.rule,
        default_deny_by: Vec::new(),
        l7,
    }
}

fn print_text(e: &Explanation) {
    let port = match e.protocol {
        Protocol::Icmp | Protocol::Icmpv6 => e.protocol.to_string(),
        _ => format!("{}/{}", e.port, e.protocol),
    };
    println!("{} -> {} {port}: {}", e.from, e.to, e.verdict);
    for c in &e.checks {
        let why = match (&c.rule, c.reason) {
            (Some(rule), _) => format!("by {rule}"),
            (None, policy::Reason::DefaultDeny) => {
                format!(
                    "by default deny (set by {}; no rule allows it)",
                    c.default_deny_by.join(", ")
                )
            }
            (None, policy::Reason::NoPolicy) => {
                "no policy selects it in this direction".to_string()
            }
            (None, policy::Reason::HostToLocal) => {
                "node-to-local-pod traffic is always allowed".to_string()
            }
            (None, _) => String::new(),
        };
        let (subject, peer_word) = match c.direction {
            Direction::Egress => ("egress of", "to"),
            Direction::Ingress => ("ingress of", "from"),
        };
        println!(
            "  {subject} {} {peer_word} {}: {} {why}",
            c.endpoint, c.peer, c.verdict
        );
        for l7 in c.l7.iter().flatten() {
            println!("    L7 (enforced by the proxy): {l7}");
        }
    }
}
