//! The end-to-end suite: one binary, so fleet tests share one process and run one
//! at a time (each takes the harness's serial guard).

mod dayone;
mod deploy;
mod drain;
mod faults;
mod join;
mod lb;
mod lbdrain;
mod regression;
mod rollout;
mod spine;
