//! The `cilium.io/v2` policy objects exactly as users write them in YAML.
//!
//! Every struct denies unknown fields: a typo such as `toFQDN` in a security
//! policy must be an error, never a silently ignored rule. Values are kept as
//! written (strings for ports, patterns, regexes); [`crate::validate`] turns
//! them into the checked [`crate::Policy`] form.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy` object.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<RuleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<RuleSpec>>,
    /// Written by the API server; read and ignored.
    #[serde(default, skip_serializing)]
    pub status: Option<serde_yaml::Value>,
}

/// Kubernetes object metadata. Only name, namespace and labels mean anything
/// here; the bookkeeping fields the API server adds are accepted and ignored so
/// that `kubectl get -o yaml` output loads as is.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    pub uid: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub resource_version: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub generation: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub deletion_timestamp: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub deletion_grace_period_seconds: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub finalizers: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub owner_references: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub generate_name: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub self_link: Option<serde_yaml::Value>,
}

/// One rule (`spec`, or an element of `specs`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDenyConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<RuleLabel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Host policies (unsupported; reported by validation).
    #[serde(default, skip_serializing)]
    pub node_selector: Option<serde_yaml::Value>,
    /// Hubble's per-policy log label: accepted and ignored (no verdict depends on it).
    #[serde(default, skip_serializing)]
    pub log: Option<serde_yaml::Value>,
}

/// `enableDefaultDeny`: whether this policy puts its subjects in default deny.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDenyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// A rule label as Cilium writes them: `{key, value, source}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub source: String,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// An element of `ingress` or `ingressDeny`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Deprecated in Cilium, still in its examples: requirements added to
    /// every `fromEndpoints` selector of the rules applying to the subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_requires: Option<Vec<EndpointSelector>>,
    /// Nodes selected by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Vec<EndpointSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRuleSpec>>,
    #[serde(default, skip_serializing)]
    pub authentication: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub from_groups: Option<serde_yaml::Value>,
}

/// An element of `egress` or `egressDeny`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelectorSpec>>,
    /// See [`IngressRule::from_requires`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_requires: Option<Vec<EndpointSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Vec<EndpointSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Vec<ServicePeerSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRuleSpec>>,
    #[serde(default, skip_serializing)]
    pub authentication: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub to_groups: Option<serde_yaml::Value>,
}

/// A `toServices` element: a Kubernetes Service by name or by its labels.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePeerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service: Option<K8sServiceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_service_selector: Option<K8sServiceSelector>,
}

/// `toServices[].k8sService`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sServiceRef {
    #[serde(default)]
    pub service_name: String,
    /// Empty or absent: a Service of that name in any namespace (Cilium).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `toServices[].k8sServiceSelector`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct K8sServiceSelector {
    pub selector: EndpointSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `fromCIDRSet` / `toCIDRSet` element.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    /// Exactly one of `cidr`, `cidrGroupRef` and `cidrGroupSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// Cilium's entity names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Health,
    Init,
    Unmanaged,
    Ingress,
    None,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::World => "world",
            Self::WorldIpv4 => "world-ipv4",
            Self::WorldIpv6 => "world-ipv6",
            Self::Cluster => "cluster",
            Self::Host => "host",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Health => "health",
            Self::Init => "init",
            Self::Unmanaged => "unmanaged",
            Self::Ingress => "ingress",
            Self::None => "none",
        }
    }
}

/// A `toFQDNs` or `rules.dns` element.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelectorSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// A `toPorts` element.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    #[serde(default)]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
    /// TLS server names (SNI) the port allows; checked in `validate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_names: Option<Vec<String>>,
    #[serde(default, rename = "terminatingTLS", skip_serializing)]
    pub terminating_tls: Option<serde_yaml::Value>,
    #[serde(default, rename = "originatingTLS", skip_serializing)]
    pub originating_tls: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub listener: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// As written: Cilium's schema makes it a string ("443"), YAML users
    /// often write a number; both are accepted here and checked later.
    #[serde(deserialize_with = "string_or_number")]
    pub port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
}

/// The `protocol` of a port; empty means ANY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub enum ProtocolSpec {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    /// ICMP (IPv4): the "port" is the ICMP type (`icmps` rules become these).
    #[serde(rename = "ICMP")]
    Icmp,
    /// ICMPv6: the "port" is the ICMPv6 type.
    #[serde(rename = "ICMPV6")]
    Icmpv6,
    /// TCP, UDP and SCTP (never ICMP, as in Cilium).
    #[serde(rename = "ANY")]
    Any,
}

/// `rules` of a port rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<FqdnSelectorSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Vec<HttpRuleSpec>>,
    #[serde(default, skip_serializing)]
    pub kafka: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub l7proto: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing)]
    pub l7: Option<serde_yaml::Value>,
}

/// `rules.http` element. Method, path and host are anchored regexes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `Name` (must be present) or `Name: value` (must equal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_matches: Option<Vec<HeaderMatchSpec>>,
}

/// `headerMatches` element: a header that must be present (empty value) or
/// equal `value`; with `mismatch` (LOG, ADD, DELETE, REPLACE) the request is
/// changed or logged instead of denied. `secret` values are rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing)]
    pub secret: Option<serde_yaml::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<serde_yaml::Value>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a port number such as 443 or \"443\"")
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(V)
}

/// A Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`), translated into
/// the same checked form as Cilium's policies (see [`crate::netpol`]).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    #[serde(default)]
    pub pod_selector: EndpointSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<NetworkPolicyPeer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<EndpointSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
    /// A number or a named port; absent: every port of the protocol.
    #[serde(
        default,
        deserialize_with = "opt_string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// A `CiliumCIDRGroup`: a named, labelled list of CIDRs that policies
/// reference with `cidrGroupRef` / `cidrGroupSelector`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrGroupObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CidrGroupSpec,
    #[serde(default, skip_serializing)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrGroupSpec {
    #[serde(default, rename = "externalCIDRs")]
    pub external_cidrs: Vec<String>,
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// An `icmps` element (Cilium's ICMPRule, pkg/policy/api/icmp.go).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpRuleSpec {
    #[serde(default)]
    pub fields: Vec<IcmpFieldSpec>,
}

/// One ICMP type of a family (`IPv4`, the default, or `IPv6`): a number
/// (0-255) or Cilium's CamelCase name (`EchoRequest`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IcmpFieldSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(rename = "type")]
    pub icmp_type: IcmpType,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum IcmpType {
    Number(i64),
    Name(String),
}
