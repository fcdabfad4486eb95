//! The `tollgate` agent's wiring: the library crates put together. The
//! binary (`main.rs`) is only the CLI over this.
//!
//! - [`learn`]: the DNS proxy's learning sink over fqdn-cache + the datapath
//!   (write-before-reply lives here).
#![forbid(unsafe_code)]

pub mod learn;
