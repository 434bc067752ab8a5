//! The Handover coordinator: fleet-wide sequencing, run by an operator from a
//! bastion host. It dials agents (never the other way round), so nothing of it needs
//! to keep running between commands.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cmd;
pub mod config;
pub mod drain_wait;
pub mod enroll;
pub mod fleet;
pub mod gate;
pub(crate) mod journal;
pub mod lb;
pub(crate) mod output;
/// Public for the plan fuzz target (common/fuzz), which parses plans as `handover plan` does.
pub mod plan;
pub(crate) mod rollout;
