//! One module per `handover` subcommand.

pub mod ca;
pub mod lb;
pub mod drain;
pub mod status;
