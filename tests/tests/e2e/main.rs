//! The end-to-end suite: one binary, so fleet tests share one process and run one
//! at a time (every process the harness starts holds its fleet lock).

mod adopt;
mod aws;
mod dayone;
mod demo;
mod deploy;
mod drain;
mod enroll;
mod etcd;
mod fanout;
mod faults;
mod join;
mod lb;
mod lbdrain;
mod regression;
mod rollout;
mod speed;
mod spine;
mod surge;
mod surgeagent;
mod web;
mod web2;
