//! One module per `handover` subcommand.

pub mod ca;
pub mod deploy;
pub mod drain;
pub mod enroll;
pub mod inputs;
pub mod journal;
pub mod lb;
pub mod rollout;
pub mod status;
pub mod token;
