//! The `tollgate` agent's wiring: the library crates put together. The
//! binary (`main.rs`) is only the CLI over this.
//!
//! - [`agent`]: `run(config, shutdown)`, the node agent (local or Kubernetes mode).
//! - [`events`]: flow and DNS events as users read them (`tollgate observe`).
//! - [`learn`]: the DNS proxy's learning sink over fqdn-cache + the datapath
//!   (write-before-reply lives here).
//! - [`kube`]: Kubernetes mode's source: watches into the same model.
//! - [`routes`]: a local pod's host veth, from its IP's route.
#![forbid(unsafe_code)]

pub mod agent;
pub mod events;
pub mod kube;
pub mod l7;
pub mod learn;
pub mod routes;
