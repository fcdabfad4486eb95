//! Code several integration suites share (each suite is its own crate and
//! includes this module with `mod support;`).

pub mod in_process;
