//! One module per `handover` subcommand.

pub mod ca;
pub mod status;
pub mod lb;
