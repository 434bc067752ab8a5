//! End-to-end harness: real agents and coordinator, real HAProxy, Apache and git on
//! loopback addresses, everything in temporary directories and torn down on drop.
#![forbid(unsafe_code)]

pub mod agents;
pub mod rawquic;
