//! End-to-end harness for Handover: real agents and coordinator, real HAProxy,
//! Apache and git on loopback addresses (127.0.1.N).
//!
//! Everything a test starts lives in a temporary directory and is killed when its
//! handle is dropped, so a failing (panicking) test leaves no stray processes behind.
//! The entry point is [`fleet`], which re-exports the pieces and provides
//! [`fleet::serial`] to keep fleet tests from running concurrently.
#![forbid(unsafe_code)]

pub mod agents;
pub mod apache;
pub mod aws;
pub mod config;
pub mod enroll;
pub mod etcd;
pub mod fanout;
pub mod fleet;
pub mod flood;
pub mod git;
pub mod haproxy;
pub mod http;
pub mod monitor;
pub mod plain;
pub mod ports;
pub mod process;
pub mod rawquic;
pub mod run;
pub mod scenario;
pub mod sessions;
pub mod speed;
pub mod surge;
pub mod traffic;
pub mod web;
pub mod web2;
pub mod workdir;
