//! One module per `handover` subcommand.

pub mod ca;
pub mod drain;
pub mod lb;
pub mod status;
