//! The Handover coordinator: fleet-wide sequencing, run by an operator from a
//! bastion host. It dials agents (never the other way round), so nothing of it needs
//! to keep running between commands.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub(crate) mod advice;
pub mod cmd;
pub mod config;
pub(crate) mod drain_wait;
/// Public: `handover enroll` as a library call, for whatever launches hosts (a provider integration).
pub mod enroll;
/// Public for the fan-out benchmark (tests/benches/fanout.rs), which dials agents as
/// `handover status` does.
pub mod fleet;
pub(crate) mod gate;
pub(crate) mod inputs;
pub(crate) mod journal;
pub(crate) mod lb;
pub(crate) mod output;
/// Public for the plan fuzz target (common/fuzz), which parses plans as `handover plan` does.
pub mod plan;
pub(crate) mod provider;
pub(crate) mod rollout;
pub mod state;
/// Public with [`plan`], whose surge sections it types.
pub mod surge_plan;
pub mod web;
