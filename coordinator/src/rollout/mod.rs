//! The rollout engine: one loop, strategies as step generators.
//!
//! The next step is a pure function of the journal (which steps of the current
//! phase ended well) and the plan; each step then acts on what the agents and
//! HAProxy report *now*. That is what makes `handover resume` trivial after a crash
//! at any point: regenerate the steps, skip the finished ones, run the one that was
//! under way again (every step is idempotent), carry on.
//!
//! Phases ([`steps::Phase`]): `Forward` runs the plan; a failure with
//! `auto_rollback` switches to `RollbackFrom` (every upgraded host back to its
//! previous release, with the same drain → detach → switch → verify → attach
//! mechanics, so no session is cut); a failure without it, or an interrupt,
//! switches to `Repair`, which puts only the current wave back in service; an
//! interrupt at the canary pause to `Withdraw` (the serving canary goes back with
//! the full mechanics); `handover rollback` runs `Undo`. A host that does not
//! answer halts the rollout where it stands, for `resume`.
//!
//! The engine ([`engine`]) decides and journals; it reaches the fleet only through
//! [`ops::Actions`] — [`ops::Live`] in production, a scripted fake in its unit
//! tests. [`lease`] keeps one coordinator process per rollout.

pub mod engine;
pub mod facts;
#[cfg(test)]
pub(crate) mod fake;
pub mod lease;
pub mod ops;
pub mod samples;
pub mod steps;
pub mod surge;
pub mod surge_enroll;
#[cfg(test)]
pub(crate) mod surge_fake;
pub mod surge_ops;
pub mod timings;
pub mod ui;
