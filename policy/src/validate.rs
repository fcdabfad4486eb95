//! From the YAML model to a checked [`Policy`], with diagnostics that name the
//! field (`spec.egress[0].toPorts[0].ports[0].port`) and say what would be valid.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;

use crate::fqdn::FqdnSelector;
use crate::labels::{Requirement, Selector, NAMESPACE_LABEL};
use crate::load::{Diagnostic, Severity};
use crate::model::{
    self, CidrRule, EgressRule, EndpointSelector, FqdnSelectorSpec, IngressRule, Operator,
    PolicyObject, ProtocolSpec,
};
use crate::rules::{
    HeaderMatch, HttpRule, Peer, Peers, Policy, PolicyKind, PolicyName, PortRange, PortRule, Rule,
    Spec, L7,
};

/// The namespace a namespaced policy without `metadata.namespace` lands in,
/// as `kubectl apply` would do.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Collects diagnostics for one policy object.
struct Checker<'a> {
    policy: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }

    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }

    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: None,
            policy: Some(self.policy.to_string()),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks one object. Returns the policy only if there were no errors;
/// warnings are returned either way.
pub fn validate_object(
    object: &PolicyObject,
    doc_label: &str,
) -> (Option<Policy>, Vec<Diagnostic>) {
    let display_name = object
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| doc_label.to_string());
    let mut c = Checker {
        policy: &display_name,
        diagnostics: Vec::new(),
    };
    if object.api_version != "cilium.io/v2" {
        c.error(
            "apiVersion",
            format!("is {:?}; expected \"cilium.io/v2\"", object.api_version),
        );
    }
    let kind = match object.kind.as_str() {
        "CiliumNetworkPolicy" => PolicyKind::Namespaced,
        "CiliumClusterwideNetworkPolicy" => PolicyKind::Clusterwide,
        other => {
            c.error(
                "kind",
                format!(
                    "is {other:?}; expected CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"
                ),
            );
            PolicyKind::Namespaced
        }
    };
    let name = match object.metadata.name.as_deref() {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        _ => {
            c.error("metadata.name", "is missing; every policy needs a name");
            String::new()
        }
    };
    let namespace = match kind {
        PolicyKind::Namespaced => Some(
            object
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        ),
        PolicyKind::Clusterwide => {
            if object.metadata.namespace.is_some() {
                c.warn(
                    "metadata.namespace",
                    "is ignored: a CiliumClusterwideNetworkPolicy is not namespaced",
                );
            }
            None
        }
    };
    let mut raw_specs: Vec<(String, &model::RuleSpec)> = Vec::new();
    if let Some(spec) = &object.spec {
        raw_specs.push(("spec".to_string(), spec));
    }
    for (i, spec) in object.specs.iter().flatten().enumerate() {
        raw_specs.push((format!("specs[{i}]"), spec));
    }
    if raw_specs.is_empty() {
        c.error(
            "spec",
            "is missing; a policy needs `spec` or a non-empty `specs` list",
        );
    }
    let specs: Vec<Spec> = raw_specs
        .iter()
        .map(|(field, spec)| check_spec(&mut c, field, spec, namespace.as_deref()))
        .collect();
    warn_fqdns_without_dns(&mut c, &specs);

    let errors = c.diagnostics.iter().any(|d| d.severity == Severity::Error);
    let policy = (!errors).then(|| Policy {
        name: PolicyName {
            kind,
            namespace,
            name,
        },
        source: None,
        specs,
    });
    (policy, c.diagnostics)
}

fn check_spec(
    c: &mut Checker,
    field: &str,
    spec: &model::RuleSpec,
    namespace: Option<&str>,
) -> Spec {
    let subject = match &spec.endpoint_selector {
        Some(sel) => {
            let s = check_selector(c, &format!("{field}.endpointSelector"), sel);
            match namespace {
                Some(ns) => s.with_label(NAMESPACE_LABEL, ns),
                None => s,
            }
        }
        None => {
            c.error(
                format!("{field}.endpointSelector"),
                "is missing; use `endpointSelector: {}` to select every pod the policy may select",
            );
            Selector::all()
        }
    };
    let ingress = spec.ingress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| check_ingress(c, &format!("{field}.ingress[{i}]"), r, namespace, false))
            .collect::<Vec<_>>()
    });
    let ingress_deny = spec.ingress_deny.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                check_ingress(c, &format!("{field}.ingressDeny[{i}]"), r, namespace, true)
            })
            .collect::<Vec<_>>()
    });
    let egress = spec.egress.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| check_egress(c, &format!("{field}.egress[{i}]"), r, namespace, false))
            .collect::<Vec<_>>()
    });
    let egress_deny = spec.egress_deny.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| check_egress(c, &format!("{field}.egressDeny[{i}]"), r, namespace, true))
            .collect::<Vec<_>>()
    });
    let dd = spec.enable_default_deny.clone().unwrap_or_default();
    let default_deny_ingress = dd
        .ingress
        .unwrap_or(ingress.is_some() || ingress_deny.is_some());
    let default_deny_egress = dd
        .egress
        .unwrap_or(egress.is_some() || egress_deny.is_some());
    let labels = spec
        .labels
        .iter()
        .flatten()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect();
    Spec {
        field: field.to_string(),
        subject,
        ingress,
        ingress_deny,
        egress,
        egress_deny,
        default_deny_ingress,
        default_deny_egress,
        description: spec.description.clone(),
        labels,
    }
}

fn check_selector(c: &mut Checker, field: &str, sel: &EndpointSelector) -> Selector {
    let mut out = Selector::all();
    for (k, v) in sel.match_labels.iter().flatten() {
        if k.is_empty() {
            c.error(format!("{field}.matchLabels"), "has an empty key");
        }
        out = out.with_label(k, v);
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if expr.key.is_empty() {
            c.error(format!("{f}.key"), "is empty; expected a label key");
        }
        let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
        let requirement = match expr.operator {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    c.error(
                        format!("{f}.values"),
                        format!("must not be empty for operator {:?}", expr.operator),
                    );
                }
                if expr.operator == Operator::In {
                    Requirement::In(expr.key.clone(), values)
                } else {
                    Requirement::NotIn(expr.key.clone(), values)
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    c.error(
                        format!("{f}.values"),
                        format!("must be empty for operator {:?}", expr.operator),
                    );
                }
                if expr.operator == Operator::Exists {
                    Requirement::Exists(expr.key.clone())
                } else {
                    Requirement::DoesNotExist(expr.key.clone())
                }
            }
        };
        out = out.with(requirement);
    }
    out
}

/// A peer selector in a namespaced policy that does not name a namespace
/// means "in this policy's namespace".
fn scope_peer(selector: Selector, namespace: Option<&str>) -> Selector {
    match namespace {
        Some(ns) if !selector.mentions(NAMESPACE_LABEL) && !selector.mentions_reserved() => {
            selector.with_label(NAMESPACE_LABEL, ns)
        }
        _ => selector,
    }
}

/// The L3 fields common to ingress and egress rules, by their field names.
struct L3<'a> {
    endpoints: (&'static str, Option<&'a Vec<EndpointSelector>>),
    entities: (&'static str, Option<&'a Vec<model::Entity>>),
    cidr: (&'static str, Option<&'a Vec<String>>),
    cidr_set: (&'static str, Option<&'a Vec<CidrRule>>),
}

fn check_l3(c: &mut Checker, field: &str, l3: L3, namespace: Option<&str>) -> Option<Vec<Peer>> {
    let mut any_given = false;
    let mut peers = Vec::new();
    if let (name, Some(sels)) = l3.endpoints {
        any_given = true;
        for (i, sel) in sels.iter().enumerate() {
            let s = check_selector(c, &format!("{field}.{name}[{i}]"), sel);
            peers.push(Peer::Endpoints(scope_peer(s, namespace)));
        }
    }
    if let (_, Some(entities)) = l3.entities {
        any_given = true;
        peers.extend(entities.iter().map(|e| Peer::Entity(*e)));
    }
    if let (name, Some(cidrs)) = l3.cidr {
        any_given = true;
        for (i, raw) in cidrs.iter().enumerate() {
            if let Some(cidr) = parse_cidr(c, &format!("{field}.{name}[{i}]"), raw) {
                peers.push(Peer::Cidr {
                    cidr,
                    except: vec![],
                });
            }
        }
    }
    if let (name, Some(sets)) = l3.cidr_set {
        any_given = true;
        for (i, set) in sets.iter().enumerate() {
            let f = format!("{field}.{name}[{i}]");
            let Some(cidr) = parse_cidr(c, &format!("{f}.cidr"), &set.cidr) else {
                continue;
            };
            let mut except = Vec::new();
            for (j, raw) in set.except.iter().enumerate() {
                let ef = format!("{f}.except[{j}]");
                if let Some(e) = parse_cidr(c, &ef, raw) {
                    if cidr.contains(&e) {
                        except.push(e);
                    } else {
                        c.error(
                            ef,
                            format!(
                                "{e} is not inside {cidr}; an exception must lie within the cidr"
                            ),
                        );
                    }
                }
            }
            peers.push(Peer::Cidr { cidr, except });
        }
    }
    any_given.then_some(peers)
}

fn parse_cidr(c: &mut Checker, field: &str, raw: &str) -> Option<IpNet> {
    let parsed = raw
        .parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from));
    match parsed {
        Ok(net) => Some(net.trunc()),
        Err(_) => {
            c.error(
                field,
                format!("{raw:?} is not a CIDR; expected e.g. \"10.0.0.0/8\", \"192.0.2.1/32\" or \"2001:db8::/32\""),
            );
            None
        }
    }
}

fn check_ingress(
    c: &mut Checker,
    field: &str,
    r: &IngressRule,
    ns: Option<&str>,
    deny: bool,
) -> Rule {
    let l3 = L3 {
        endpoints: ("fromEndpoints", r.from_endpoints.as_ref()),
        entities: ("fromEntities", r.from_entities.as_ref()),
        cidr: ("fromCIDR", r.from_cidr.as_ref()),
        cidr_set: ("fromCIDRSet", r.from_cidr_set.as_ref()),
    };
    let peers = check_l3(c, field, l3, ns);
    let ports = check_ports(c, field, r.to_ports.as_ref(), deny);
    finish_rule(peers, ports)
}

fn check_egress(
    c: &mut Checker,
    field: &str,
    r: &EgressRule,
    ns: Option<&str>,
    deny: bool,
) -> Rule {
    let l3 = L3 {
        endpoints: ("toEndpoints", r.to_endpoints.as_ref()),
        entities: ("toEntities", r.to_entities.as_ref()),
        cidr: ("toCIDR", r.to_cidr.as_ref()),
        cidr_set: ("toCIDRSet", r.to_cidr_set.as_ref()),
    };
    let mut peers = check_l3(c, field, l3, ns);
    if let Some(fqdns) = &r.to_fqdns {
        let f = format!("{field}.toFQDNs");
        if deny {
            c.error(
                &f,
                "is not allowed in egressDeny: a name-based deny cannot be enforced for IPs the pod never \
                 resolved through the proxy; deny by toCIDR/toCIDRSet instead",
            );
        }
        if peers.is_some() {
            c.error(
                &f,
                "cannot be combined with toEndpoints, toEntities, toCIDR or toCIDRSet in the same rule; \
                 write a separate egress rule for them",
            );
        }
        let list = peers.get_or_insert_with(Vec::new);
        for (i, spec) in fqdns.iter().enumerate() {
            if let Some(sel) = check_fqdn_selector(c, &format!("{f}[{i}]"), spec) {
                list.push(Peer::Fqdn(sel));
            }
        }
    }
    let ports = check_ports(c, field, r.to_ports.as_ref(), deny);
    finish_rule(peers, ports)
}

fn finish_rule(peers: Option<Vec<Peer>>, ports: Option<Vec<PortRule>>) -> Rule {
    let peers = match (peers, &ports) {
        (Some(list), _) => Peers::Listed(list),
        // `toPorts` alone: any peer on those ports.
        (None, Some(_)) => Peers::Any,
        // `- {}`: a rule that names nothing allows nothing.
        (None, None) => Peers::Listed(Vec::new()),
    };
    Rule { peers, ports }
}

fn check_fqdn_selector(
    c: &mut Checker,
    field: &str,
    spec: &FqdnSelectorSpec,
) -> Option<FqdnSelector> {
    match (&spec.match_name, &spec.match_pattern) {
        (Some(_), Some(_)) => {
            c.error(
                field,
                "has both matchName and matchPattern; use one per selector (add another list element for the other)",
            );
            None
        }
        (None, None) => {
            c.error(field, "is empty; expected matchName or matchPattern");
            None
        }
        (Some(name), None) => FqdnSelector::name(name)
            .map_err(|e| c.error(format!("{field}.matchName"), format!("{name:?} {e}")))
            .ok(),
        (None, Some(pattern)) => FqdnSelector::pattern(pattern)
            .map_err(|e| c.error(format!("{field}.matchPattern"), format!("{pattern:?} {e}")))
            .ok(),
    }
}

fn check_ports(
    c: &mut Checker,
    field: &str,
    rules: Option<&Vec<model::PortRule>>,
    deny: bool,
) -> Option<Vec<PortRule>> {
    let rules = rules?;
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let f = format!("{field}.toPorts[{i}]");
        if rule.ports.is_empty() {
            c.error(
                format!("{f}.ports"),
                "is empty; list at least one {port, protocol}",
            );
        }
        let mut ports = Vec::new();
        for (j, p) in rule.ports.iter().enumerate() {
            let pf = format!("{f}.ports[{j}]");
            let start = match p.port.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => n as u16,
                Ok(n) => {
                    c.error(format!("{pf}.port"), format!("{n} is outside 1-65535"));
                    continue;
                }
                Err(_) => {
                    c.error(
                        format!("{pf}.port"),
                        format!(
                            "{:?} is not a port number; named ports are not supported, use a number in 1-65535",
                            p.port
                        ),
                    );
                    continue;
                }
            };
            let end = match p.end_port {
                None | Some(0) => start,
                Some(e) if e < i64::from(start) => {
                    c.error(
                        format!("{pf}.endPort"),
                        format!("{e} is below port {start}; endPort must be >= port"),
                    );
                    continue;
                }
                Some(e) if e > 65535 => {
                    c.error(format!("{pf}.endPort"), format!("{e} is outside 1-65535"));
                    continue;
                }
                Some(e) => e as u16,
            };
            let protocol = p.protocol.unwrap_or(ProtocolSpec::Any);
            ports.push(PortRange {
                start,
                end,
                protocol,
            });
        }
        let l7 = match &rule.rules {
            None => L7::None,
            Some(l7) => {
                let rf = format!("{f}.rules");
                if deny {
                    c.error(
                        &rf,
                        "L7 rules are not allowed in deny rules; deny the port instead",
                    );
                }
                if ports.iter().any(|p| p.start != p.end) {
                    c.error(
                        &rf,
                        "L7 rules need single ports; remove endPort or split the rule",
                    );
                }
                if l7.dns.is_some() && l7.http.is_some() {
                    c.error(
                        &rf,
                        "has both dns and http; use separate toPorts entries for each",
                    );
                }
                // Both are checked so that every mistake is reported at once.
                let dns: Option<Vec<FqdnSelector>> = l7.dns.as_ref().map(|dns| {
                    dns.iter()
                        .enumerate()
                        .filter_map(|(k, s)| check_fqdn_selector(c, &format!("{rf}.dns[{k}]"), s))
                        .collect()
                });
                let http: Option<Vec<HttpRule>> = l7.http.as_ref().map(|http| {
                    http.iter()
                        .enumerate()
                        .filter_map(|(k, h)| check_http(c, &format!("{rf}.http[{k}]"), h))
                        .collect()
                });
                match (dns, http) {
                    (Some(dns), _) => L7::Dns(dns),
                    (None, Some(http)) => L7::Http(http),
                    (None, None) => L7::None,
                }
            }
        };
        out.push(PortRule { ports, l7 });
    }
    Some(out)
}

fn check_http(c: &mut Checker, field: &str, h: &model::HttpRuleSpec) -> Option<HttpRule> {
    let mut ok = true;
    let mut re = |name: &str, value: &Option<String>| -> Option<Regex> {
        let v = value.as_ref()?;
        match Regex::new(&format!("^(?:{v})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or_default().to_string();
                c.error(
                    format!("{field}.{name}"),
                    format!("{v:?} is not a valid regular expression ({})", first.trim()),
                );
                ok = false;
                None
            }
        }
    };
    let method = re("method", &h.method);
    let path = re("path", &h.path);
    let host = re("host", &h.host);
    let mut headers = Vec::new();
    for (i, raw) in h.headers.iter().flatten().enumerate() {
        let (name, value) = match raw.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (raw.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            c.error(
                format!("{field}.headers[{i}]"),
                format!("{raw:?} is not a header; expected \"Name\" or \"Name: value\""),
            );
            ok = false;
            continue;
        }
        headers.push(HeaderMatch {
            name: name.to_string(),
            value,
        });
    }
    ok.then_some(HttpRule {
        method,
        path,
        host,
        headers,
    })
}

/// IPs for toFQDNs are learned only from DNS that goes through the proxy,
/// i.e. a port rule with `rules.dns`. Without one the rule can never match.
fn warn_fqdns_without_dns(c: &mut Checker, specs: &[Spec]) {
    let rules = || specs.iter().flat_map(|s| s.egress.iter().flatten());
    let has_dns = rules().any(|r| r.ports.iter().flatten().any(|p| matches!(p.l7, L7::Dns(_))));
    if has_dns {
        return;
    }
    for spec in specs {
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            if matches!(&rule.peers, Peers::Listed(p) if p.iter().any(|p| matches!(p, Peer::Fqdn(_))))
            {
                c.warn(
                    format!("{}.egress[{i}].toFQDNs", spec.field),
                    "toFQDNs without a DNS rule on port 53 (toPorts ... rules: dns) in this policy: no IP will \
                     ever be learned unless another policy selecting the same pods has one",
                );
            }
        }
    }
}
