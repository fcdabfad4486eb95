//! The `tollgate` agent's wiring: the library crates put together. The
//! binary (`main.rs`) is only the CLI over this.
//!
//! - [`agent`]: the node agent (local or Kubernetes mode): `build(config,
//!   datapath, upstream, binds)` then `Agent::run(shutdown)`.
//! - [`node`]: the node's state the agent owns (policy in force, FQDN cache,
//!   datapath) and the DNS proxy's handle on it (write-before-reply lives
//!   in `Node::learn`).
//! - [`l7`]: the HTTP proxy's handle on the node (both ends' decisions).
//! - [`budget`]: each pod's budget of new names.
//! - [`events`]: flow and DNS events as users read them (`tollgate observe`).
//! - [`hubble`]: the same events in Hubble's flow JSON (`--output hubble-json`);
//!   [`hubble_api`]: Hubble's Observer gRPC API over them (`hubble.sock`).
//! - [`suggest`]: event lines -> the observations `tollgate policy suggest`
//!   turns into policies ([`policy::suggest`]).
//! - [`status`]: the node's one-screen status (`tollgate status`).
//! - [`kube`]: Kubernetes mode's source: watches into the same model;
//!   [`kube_pods`] and [`kube_policies`]: pods and policy objects as tables
//!   their watch events keep; [`kube_slim`]: what the other kinds' watch
//!   caches keep of each object.
//! - [`routes`]: a local pod's host veth, from its IP (routed or bridged
//!   CNI layouts); [`links`]: the rtnetlink reads that needs.
#![forbid(unsafe_code)]

pub mod agent;
pub mod budget;
pub mod events;
pub mod hubble;
pub mod hubble_api;
pub mod kube;
pub mod kube_pods;
pub mod kube_policies;
pub mod kube_reconnect;
pub mod kube_services;
pub mod kube_slim;
pub mod l7;
pub mod links;
pub mod node;
pub mod routes;
pub mod status;
pub mod suggest;
