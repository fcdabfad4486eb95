//! # tollgate-policy: the pure heart of Tollgate
//!
//! Reads the `cilium.io/v2` policies users already write
//! (`CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy`, with
//! `CiliumCIDRGroup`s) and Kubernetes `NetworkPolicy`, checks them with
//! errors that name file, policy and field, and decides any flow: allowed,
//! denied or audit, and by which rule.
//!
//! ## What this crate must never do
//! Touch sockets, tokio, aya, kube or the clock. The only I/O is reading
//! the policy and endpoints files ([`load::load_paths`],
//! [`Inventory::load`]); everything else takes values and returns values,
//! and is testable without root.
//!
//! ## Layout
//! - [`model`]: serde types, exactly the YAML (unknown fields are errors).
//! - [`load`] + [`validate`]: YAML files -> checked [`rules::Policy`] values,
//!   all-or-nothing per file, with [`load::Diagnostic`]s.
//! - [`netpol`]: Kubernetes NetworkPolicy -> the same checked form, as Cilium translates it.
//! - [`cidrgroup`]: `CiliumCIDRGroup`s and the expansion of references to them.
//! - [`rules`]: the checked form (selectors scoped, ports parsed, regexes compiled).
//! - [`fqdn`]: `matchName`/`matchPattern` validation and the one-structure matcher.
//! - [`header_actions`]: `headerMatches` mismatch actions (LOG/ADD/DELETE/REPLACE).
//! - [`sni`]: `serverNames` (TLS SNI) validation and matching.
//! - [`labels`], [`identity`], [`inventory`]: who is who (the endpoints file);
//!   [`services`]: Kubernetes Services and their backends.
//! - [`suggest`]: observed traffic -> suggested policies (`tollgate policy suggest`).
//! - [`resolve`]: policy set + inventory -> per-endpoint rules, and
//!   [`resolve::EndpointPolicy::decide`], the decision function.
#![forbid(unsafe_code)]

pub mod cidrgroup;
pub mod fqdn;
pub mod header_actions;
mod icmp;
pub mod identity;
pub mod inventory;
pub mod labels;
pub mod load;
pub mod model;
pub mod netpol;
pub mod resolve;
pub mod rules;
pub mod selector_cache;
pub mod services;
pub mod sni;
pub mod suggest;
pub mod validate;

pub use fqdn::{FqdnMatcher, FqdnSelector, SelectorId};
pub use identity::Identity;
pub use inventory::{Endpoint, EndpointKey, Inventory};
pub use labels::{Labels, Selector};
pub use load::{load_paths, parse_str, Diagnostic, LoadReport, Severity};
pub use resolve::{
    Decision, EndpointPolicy, L7Decision, PeerRef, PolicySet, Reason, ResolveOptions, Resolved,
    RuleRef, Verdict,
};
pub use rules::{Direction, Policy, PolicyKind, PolicyName, Protocol};
pub use selector_cache::SelectorCache;
