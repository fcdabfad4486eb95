//! Flow events as users read them: one JSON line per datapath decision or
//! DNS query, enriched with the pod, the names a destination was learned
//! for and the deciding rule. The agent serves them on a Unix socket in its
//! state dir; `tollgate observe` follows it.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use dns_proxy::{DnsEvent, DnsOutcome};
use egress_bpf::desired::RuleTable;
use egress_bpf::{FlowEvent, FlowReason, FlowVerdict};
use policy::inventory::IpOwner;
use policy::{EndpointKey, Inventory, Labels};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// One event line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowLine {
    /// `flow` (a packet decision) or `dns` (a query). The fields that are
    /// mostly one of a few constants are `Cow`: no copy of a constant per line.
    pub kind: Cow<'static, str>,
    /// `namespace/pod`, when known.
    pub pod: Option<String>,
    /// ALLOWED, DENIED, AUDIT, REDIRECTED (flows); ALLOWED, REFUSED, SERVFAIL... (DNS).
    pub verdict: Cow<'static, str>,
    pub reason: Cow<'static, str>,
    pub direction: Option<Cow<'static, str>>,
    pub protocol: Option<Cow<'static, str>>,
    pub src: Option<String>,
    pub dst: Option<String>,
    pub port: Option<u16>,
    /// Names the remote address was learned for (flows), the query name (DNS).
    pub names: Vec<String>,
    /// `ns/policy spec.egress[0]`.
    pub rule: Option<String>,
    /// Addresses learned from the answer (DNS).
    pub answers: Vec<IpAddr>,
    /// Addresses an audited query's answer gave the pod without teaching
    /// them (enforcement would have refused the name; DNS, audit mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlearned: Vec<IpAddr>,
    /// The request (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpLine>,
    /// When the agent described the event (RFC 3339, UTC). Shared: the
    /// agent describes events in batches, all at one time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Arc<str>>,
    /// The source port (flows: the packet's; DNS: the pod's query socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Who `src` is: pod, labels and identity as the policy in force saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<Peer>>,
    /// Who `dst` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Arc<Peer>>,
    /// The query (DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsLine>,
    /// The Service the pod addressed, when the datapath sent the flow on to
    /// `dst`, one of its backends (DNS: a query to the kube-dns ClusterIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceLine>,
}

/// A Service frontend a flow was sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLine {
    /// `10.96.0.10:53`.
    pub address: String,
    /// `namespace/name`, when the policy in force knows the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One end of a flow, as the node knew it when the event was described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The numeric security identity (reserved ones below 256: 1 host, 2 world...).
    pub identity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Identity labels as Cilium prints them: `k8s:app=payments`, `reserved:world`.
    #[serde(default)]
    pub labels: Vec<String>,
}

impl Peer {
    /// Who `ip` is in `inventory`: a pod, a node or API server, or the world.
    pub fn of(inventory: &Inventory, ip: IpAddr) -> Self {
        let identity = inventory.identity_of(ip);
        let labels = |l: Option<&Labels>| -> Vec<String> {
            l.map(|l| {
                l.iter()
                    .map(|(k, v)| {
                        let k = if k.contains(':') {
                            k.to_string()
                        } else {
                            format!("k8s:{k}")
                        };
                        if v.is_empty() && k.starts_with("reserved:") {
                            k
                        } else {
                            format!("{k}={v}")
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        // A Service's address (a DNS or HTTP event's original destination;
        // flows are seen after translation): the pod the datapath sends it
        // to, as a flow there would describe it.
        if inventory.owner(ip) == IpOwner::World {
            if let Some(backend) = service_backend(inventory, ip) {
                return Self::of(inventory, backend);
            }
        }
        match inventory.owner(ip) {
            IpOwner::Endpoint(e) => Self {
                identity: e.identity.0,
                namespace: Some(e.key.namespace.clone()),
                pod: Some(e.key.name.clone()),
                labels: labels(Some(&e.labels)),
            },
            _ => {
                let reserved = identity.reserved_labels();
                Self {
                    identity: identity.0,
                    namespace: None,
                    pod: None,
                    labels: labels(
                        inventory
                            .identities()
                            .get(&identity)
                            .map(|l| &**l)
                            .or(reserved.as_ref()),
                    ),
                }
            }
        }
    }
}

/// The first backend pod of the Service whose ClusterIP `ip` is.
fn service_backend(inventory: &Inventory, ip: IpAddr) -> Option<IpAddr> {
    inventory
        .services()
        .iter()
        .flat_map(|s| &s.frontends)
        .filter(|f| f.ip == ip)
        .flat_map(|f| f.backends.iter().map(|(b, _)| *b))
        .find(|b| *b != ip && matches!(inventory.owner(*b), IpOwner::Endpoint(_)))
}

/// `ip` as text, as `Display` writes it. IPv4 addresses are written digit
/// by digit: through `fmt` two of them were most of describing an HTTP
/// request's line.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// `now` as event lines carry it.
pub fn time_text(now: jiff::Timestamp) -> Arc<str> {
    now.to_string().into()
}

/// A DNS query's details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsLine {
    /// `A`, `AAAA`, ...
    pub qtype: String,
    /// The response code the pod got (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED).
    pub rcode: u16,
}

/// One HTTP request as the proxy saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpLine {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    /// The status the client got (403 when denied; 0: connection refused).
    pub status: u16,
    /// What `headerMatches` mismatch actions changed or logged
    /// (`X-Env: added "prod"`); never the request's own header values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_edits: Vec<String>,
}

fn proto_name(p: u8) -> Cow<'static, str> {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string().into(),
    }
}

impl FlowLine {
    /// A datapath decision; `pod` is the local endpoint whose veth saw it.
    pub fn from_flow(
        f: &FlowEvent,
        pod: Option<&EndpointKey>,
        rules: &RuleTable,
        names: Vec<String>,
    ) -> Self {
        let pod = pod.map(|k| k.to_string());
        let verdict = match f.verdict {
            FlowVerdict::Allowed => "ALLOWED",
            FlowVerdict::Denied => "DENIED",
            FlowVerdict::Audit => "AUDIT",
            FlowVerdict::Redirected => "REDIRECTED",
        };
        let reason = match f.reason {
            FlowReason::DenyRule => "deny-rule",
            FlowReason::Fqdn => "fqdn",
            FlowReason::AllowRule => "allow-rule",
            FlowReason::NoPolicy => "no-policy",
            FlowReason::DefaultDeny => "default-deny",
            FlowReason::HostToLocal => "host-to-local",
            FlowReason::NoEndpoint => "no-endpoint",
            FlowReason::Unsupported => "unsupported",
            FlowReason::Proxy => "proxy",
            FlowReason::Spoofed => "spoofed-source",
            FlowReason::IcmpUnrelated => "icmp-error-unrelated",
            FlowReason::L4Unreachable => "l4-unreachable",
            FlowReason::NoBackend => "no-service-backend",
        };
        Self {
            kind: "flow".into(),
            pod,
            verdict: verdict.into(),
            reason: reason.into(),
            direction: Some(f.direction.as_str().into()),
            protocol: Some(proto_name(f.protocol)),
            src: Some(ip_text(f.src)),
            dst: Some(ip_text(f.dst)),
            port: (f.dport != 0).then_some(f.dport),
            names,
            rule: rules.rule(f.rule_id).map(|r| r.to_string()),
            answers: Vec::new(),
            http: None,
            sport: (f.sport != 0).then_some(f.sport),
            ..Self::blank()
        }
    }

    pub fn from_dns(e: &DnsEvent) -> Self {
        let (verdict, reason) = match e.outcome {
            DnsOutcome::Allowed => ("ALLOWED", "dns-rule"),
            DnsOutcome::Cached => ("ALLOWED", "dns-rule (cached answer)"),
            DnsOutcome::RefusedName => ("REFUSED", "name not in the DNS rules"),
            DnsOutcome::RefusedResolver => ("REFUSED", "resolver not allowed"),
            DnsOutcome::RefusedUnknownEndpoint => ("REFUSED", "unknown endpoint"),
            DnsOutcome::Unsupported => ("REFUSED", "unsupported query"),
            DnsOutcome::ServfailUpstream => ("SERVFAIL", "upstream failed"),
            DnsOutcome::ServfailWrite => ("SERVFAIL", "datapath write failed"),
            DnsOutcome::Audit { name: true } => {
                ("AUDIT", "name not in the DNS rules (would be refused)")
            }
            DnsOutcome::Audit { name: false } => {
                ("AUDIT", "resolver not allowed (would be refused)")
            }
            DnsOutcome::DroppedInFlight => ("DROPPED", "too many queries in flight for this pod"),
            DnsOutcome::RateLimited => ("SERVFAIL", "new names faster than this pod's budget"),
        };
        Self {
            kind: "dns".into(),
            pod: e.endpoint.as_ref().map(|k| k.to_string()),
            verdict: verdict.into(),
            reason: format!("{reason} ({} {})", e.qtype, e.rcode).into(),
            direction: Some("egress".into()),
            src: Some(ip_text(e.source.ip())),
            dst: Some(e.resolver.to_string()),
            port: Some(e.resolver.port()),
            names: vec![e.qname.trim_end_matches('.').to_string()],
            rule: e.rule.clone(),
            answers: e.learned.clone(),
            unlearned: e.unlearned.clone(),
            http: None,
            protocol: Some(
                match e.transport {
                    dns_proxy::Transport::Udp => "UDP",
                    dns_proxy::Transport::Tcp => "TCP",
                }
                .into(),
            ),
            sport: Some(e.source.port()),
            dns: Some(DnsLine {
                qtype: e.qtype.to_owned(),
                rcode: e.rcode_value,
            }),
            ..Self::blank()
        }
    }

    /// A request's event, taken apart (its strings move into the line).
    pub fn from_http(e: http_proxy::HttpEvent) -> Self {
        let tls = e
            .method
            .as_ref()
            .is_some_and(|m| m == http_proxy::tls::TLS_METHOD);
        let parties = &e.parties;
        let reason = match e.verdict {
            http_proxy::HttpVerdict::Allowed if tls => "server-name",
            http_proxy::HttpVerdict::Allowed => "http-rule",
            http_proxy::HttpVerdict::Denied if tls => "server name not allowed",
            http_proxy::HttpVerdict::Denied => "no http rule matched",
            http_proxy::HttpVerdict::Refused => "connection not allowed",
            http_proxy::HttpVerdict::Error => "upstream unreachable",
        };
        Self {
            kind: "http".into(),
            pod: parties.pod.clone(),
            verdict: e.verdict.as_str().into(),
            reason: reason.into(),
            direction: (!parties.direction.is_empty()).then(|| parties.direction.into()),
            protocol: Some("TCP".into()),
            src: Some(ip_text(parties.client.ip())),
            dst: Some(ip_text(parties.server.ip())),
            port: Some(parties.server.port()),
            names: Vec::new(),
            rule: e.rule,
            answers: Vec::new(),
            http: (e.verdict != http_proxy::HttpVerdict::Refused).then(|| HttpLine {
                method: e
                    .method
                    .as_ref()
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_default(),
                path: e.path,
                host: e.host,
                status: e.status,
                header_edits: e.header_edits,
            }),
            sport: Some(parties.client.port()),
            ..Self::blank()
        }
    }

    /// An event with nothing in it; the constructors fill it.
    fn blank() -> Self {
        Self {
            kind: Cow::Borrowed(""),
            pod: None,
            verdict: Cow::Borrowed(""),
            reason: Cow::Borrowed(""),
            direction: None,
            protocol: None,
            src: None,
            dst: None,
            port: None,
            names: Vec::new(),
            rule: None,
            answers: Vec::new(),
            unlearned: Vec::new(),
            http: None,
            time: None,
            sport: None,
            source: None,
            destination: None,
            dns: None,
            service: None,
        }
    }

    /// Stamps the event with the wall-clock time and says who its two
    /// addresses are, from the inventory in force (so a later change of a
    /// pod's labels does not rewrite what was observed).
    pub fn described(self, inventory: &Inventory, now: jiff::Timestamp) -> Self {
        self.described_with(inventory, &time_text(now), |ip| {
            Arc::new(Peer::of(inventory, ip))
        })
    }

    /// [`FlowLine::described`], at `time` (from [`time_text`]), with the
    /// peers from `peer_of` (the agent remembers them per policy:
    /// [`Peer::of`] formats every label).
    pub fn described_with(
        self,
        inventory: &Inventory,
        time: &Arc<str>,
        peer_of: impl FnMut(IpAddr) -> Arc<Peer>,
    ) -> Self {
        let ends = (
            self.src.as_deref().and_then(address_ip),
            self.dst.as_deref().and_then(address_ip),
        );
        self.described_at(inventory, time, ends, peer_of)
    }

    /// [`FlowLine::described_with`] for a line whose two addresses (`src`
    /// and `dst`, as `ends`) the caller has at hand: not read back from
    /// their text.
    pub fn described_at(
        mut self,
        inventory: &Inventory,
        time: &Arc<str>,
        ends: (Option<IpAddr>, Option<IpAddr>),
        mut peer_of: impl FnMut(IpAddr) -> Arc<Peer>,
    ) -> Self {
        self.time = Some(time.clone());
        self.source = ends.0.map(&mut peer_of);
        self.destination = ends.1.map(&mut peer_of);
        if let Some(service) = &mut self.service {
            let frontend: Option<std::net::SocketAddr> = service.address.parse().ok();
            service.name = frontend.and_then(|f| {
                inventory
                    .services()
                    .iter()
                    .find(|s| {
                        s.frontends
                            .iter()
                            .any(|x| x.ip == f.ip() && x.port == f.port())
                    })
                    .map(|s| format!("{}/{}", s.namespace, s.name))
            });
        }
        self
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let pod = self.pod.as_deref().unwrap_or("?");
        if self.kind == "dns" {
            let answers = if self.answers.is_empty() {
                String::new()
            } else {
                format!(
                    " -> {}",
                    self.answers
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let rule = self
                .rule
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let via = self
                .service
                .as_ref()
                .map(|s| match &s.name {
                    Some(name) => format!(" (Service {name} {})", s.address),
                    None => format!(" (Service {})", s.address),
                })
                .unwrap_or_default();
            return format!(
                "DNS   {:<8} {pod} asked {}{via} for {}{answers}: {}{rule}",
                self.verdict,
                self.dst.as_deref().unwrap_or("?"),
                self.names.join(","),
                self.reason
            );
        }
        if self.kind == "http" {
            let (src, dst) = (
                self.src.as_deref().unwrap_or("?"),
                self.dst.as_deref().unwrap_or("?"),
            );
            let port = self.port.unwrap_or(0);
            let rule = self
                .rule
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            return match &self.http {
                Some(h) => format!(
                    "HTTP  {:<8} {pod} {src} -> {dst}:{port} {} {}{}: {} {}{rule}{}",
                    self.verdict,
                    h.method,
                    h.path,
                    h.host
                        .as_ref()
                        .map(|h| format!(" host={h}"))
                        .unwrap_or_default(),
                    h.status,
                    self.reason,
                    if h.header_edits.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", h.header_edits.join("; "))
                    }
                ),
                None => format!(
                    "HTTP  {:<8} {pod} {src} -> {dst}:{port}: {}{rule}",
                    self.verdict, self.reason
                ),
            };
        }
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let remote = match self.direction.as_deref() {
            Some("ingress") => format!("from {} to port{port}", self.src.as_deref().unwrap_or("?")),
            _ => format!("to {}{port}", self.dst.as_deref().unwrap_or("?")),
        };
        let names = if self.names.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.names.join(", "))
        };
        let rule = self
            .rule
            .as_ref()
            .map(|r| format!(" by {r}"))
            .unwrap_or_default();
        format!(
            "FLOW  {:<8} {pod} {} {remote}{names} {}: {}{rule}",
            self.verdict,
            self.direction.as_deref().unwrap_or("?"),
            self.protocol.as_deref().unwrap_or("?"),
            self.reason
        )
    }
}

/// The IP of an event's `src` or `dst`: an address, or (a DNS event's
/// resolver) an address with its port.
pub fn address_ip(a: &str) -> Option<IpAddr> {
    a.parse::<IpAddr>()
        .ok()
        .or_else(|| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// Binds the events socket at `path` (replacing a stale one). Must be
/// called within a tokio runtime.
pub fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the events socket {}", path.display()))?;
    // Every pod's flows: for the node's administrator only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting the events socket {}", path.display()))?;
    Ok(listener)
}

/// Serves every event line to every client of the events socket, as JSON
/// (made only for the clients there are).
pub async fn serve_socket(
    listener: tokio::net::UnixListener,
    tx: broadcast::Sender<std::sync::Arc<FlowLine>>,
) -> anyhow::Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        let mut json = serde_json::to_string(&*line).unwrap_or_default();
                        json.push('\n');
                        if conn.write_all(json.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let note = format!("{{\"kind\":\"lost\",\"lost\":{n}}}\n");
                        if conn.write_all(note.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn addresses_are_written_as_display_writes_them(bits: u32, v6: u128) {
            for ip in [IpAddr::from(bits.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                proptest::prop_assert_eq!(ip_text(ip), ip.to_string());
            }
        }
    }

    #[test]
    fn every_octet_is_written_as_display_writes_it() {
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, 10, octet]);
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn a_service_address_is_described_as_its_backend_pod() {
        let inventory = Inventory::parse(
            "namespaces: [{name: kube-system}]
endpoints:
  - {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}, ips: [10.0.0.53]}
services:
  - name: kube-dns
    namespace: kube-system
    ips: [10.96.0.10]
    selector: {k8s-app: kube-dns}
    ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}]
",
            "endpoints",
        )
        .unwrap();
        let peer = Peer::of(&inventory, "10.96.0.10".parse().unwrap());
        assert_eq!(
            (peer.namespace.as_deref(), peer.pod.as_deref()),
            (Some("kube-system"), Some("coredns"))
        );
        assert!(peer.labels.contains(&"k8s:k8s-app=kube-dns".to_string()));
        let world = Peer::of(&inventory, "10.96.0.11".parse().unwrap());
        assert_eq!(world.labels, ["reserved:world"]);
    }
}
