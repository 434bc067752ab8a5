//! Who may start a handshake with this agent, and who may stay connected.
//!
//! Issue 13 found that a connection limit taken before the handshake lets anyone
//! lock coordinators out without a certificate: about 100 spoofed ClientHellos every
//! 30 s held every slot. So the agent keeps three separate bounds:
//! * an address that has not proved it can receive gets a QUIC Retry and holds
//!   nothing (spoofed packets never come back with the token);
//! * handshakes in progress from proven addresses are bounded in total and per
//!   source address, and each must finish within a short timeout;
//! * only authenticated coordinators count against the connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds, in one place so docs/security.md and the log can quote them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Authenticated coordinator connections at once.
    pub max_connections: usize,
    /// Handshakes in progress at once, from every address together.
    pub max_pending: usize,
    /// Handshakes in progress at once from one IP address.
    pub max_pending_per_source: usize,
    /// How long a handshake may take before its slot is taken back.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    /// A coordinator dials each agent once per run and gives up on a handshake
    /// after 5 s (`fleet::CONNECT_TIMEOUT`), so a handshake older than that serves
    /// nobody. 8 per address leaves room for several operators on one bastion; 128
    /// in all means a flood needs 16 addresses that can receive to fill them.
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_pending: 128,
            max_pending_per_source: 8,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a connection was refused; the text goes to the log (and, once the peer is
/// authenticated, into the close reason it receives).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many handshakes in progress from this address.
    #[error(
        "{pending} handshakes pending from {address} (limit {limit} per address); a stalled or flooding client?"
    )]
    SourceBusy {
        /// The peer's IP address.
        address: IpAddr,
        /// Handshakes it has in progress.
        pending: usize,
        /// The per-address bound.
        limit: usize,
    },
    /// Too many handshakes in progress in all.
    #[error("{pending} handshakes pending from all addresses (limit {limit}); a flood?")]
    Busy {
        /// Handshakes in progress.
        pending: usize,
        /// The bound.
        limit: usize,
    },
    /// Every coordinator connection slot is taken.
    #[error(
        "{limit} coordinator connections are already open (the limit); close idle `handover` processes or try again later"
    )]
    Full {
        /// The bound.
        limit: usize,
    },
    /// The handshake did not finish in time.
    #[error("handshake not completed within {}s; its slot is taken back", .timeout.as_secs())]
    Stalled {
        /// The bound.
        timeout: Duration,
    },
}

/// What to do with a new incoming connection.
#[derive(Debug)]
pub enum Admit {
    /// Ask the peer to prove its address first (QUIC Retry); nothing is held.
    Retry,
    /// Go ahead with the handshake; the slot is held until it is dropped.
    Handshake(PendingSlot),
    /// Refuse it, for this reason.
    Refuse(Refusal),
}

/// Handshakes in progress, counted per source address.
#[derive(Debug, Default)]
struct Pending {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl Pending {
    /// The pure decision for one new incoming connection.
    fn decide(&self, limits: &Limits, source: IpAddr, validated: bool) -> Result<bool, Refusal> {
        if !validated {
            return Ok(false);
        }
        let from_source = self.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= limits.max_pending_per_source {
            return Err(Refusal::SourceBusy {
                address: source,
                pending: from_source,
                limit: limits.max_pending_per_source,
            });
        }
        if self.total >= limits.max_pending {
            return Err(Refusal::Busy {
                pending: self.total,
                limit: limits.max_pending,
            });
        }
        Ok(true)
    }

    fn take(&mut self, source: IpAddr) {
        self.total += 1;
        *self.by_source.entry(source).or_default() += 1;
    }

    fn release(&mut self, source: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

/// The agent's admission state: pending handshakes and authenticated connections.
#[derive(Debug)]
pub struct Gate {
    /// The bounds in force.
    pub limits: Limits,
    pending: Arc<Mutex<Pending>>,
    connections: Arc<Semaphore>,
}

impl Gate {
    /// A gate with nothing pending and nothing connected.
    pub fn new(limits: Limits) -> Self {
        Gate {
            limits,
            pending: Arc::default(),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    /// Decides about a new incoming connection from `source`; `validated` says
    /// whether it has proved its address (QUIC Retry token).
    pub fn admit(&self, source: IpAddr, validated: bool) -> Admit {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.decide(&self.limits, source, validated) {
            Ok(false) => Admit::Retry,
            Ok(true) => {
                pending.take(source);
                Admit::Handshake(PendingSlot {
                    pending: self.pending.clone(),
                    source,
                })
            }
            Err(refusal) => Admit::Refuse(refusal),
        }
    }

    /// A connection slot for an authenticated coordinator, held until dropped.
    pub fn connected(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Full {
                limit: self.limits.max_connections,
            })
    }
}

/// One handshake in progress; dropping it frees its place.
#[derive(Debug)]
pub struct PendingSlot {
    pending: Arc<Mutex<Pending>>,
    source: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 3, n])
    }

    fn small() -> Limits {
        Limits {
            max_connections: 2,
            max_pending: 3,
            max_pending_per_source: 2,
            handshake_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn an_unproved_address_gets_a_retry_and_holds_nothing() {
        let gate = Gate::new(small());
        for _ in 0..100 {
            assert!(matches!(gate.admit(ip(1), false), Admit::Retry));
        }
        // All that left the full budget to a proved address.
        assert!(matches!(gate.admit(ip(1), true), Admit::Handshake(_)));
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let gate = Gate::new(small());
        let held: Vec<Admit> = (0..2).map(|_| gate.admit(ip(1), true)).collect();
        assert!(held.iter().all(|a| matches!(a, Admit::Handshake(_))));
        match gate.admit(ip(1), true) {
            Admit::Refuse(r) => {
                assert_eq!(
                    r,
                    Refusal::SourceBusy {
                        address: ip(1),
                        pending: 2,
                        limit: 2
                    }
                );
                assert!(r.to_string().contains("pending from 127.0.3.1"), "{r}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another address still gets in.
        assert!(matches!(gate.admit(ip(2), true), Admit::Handshake(_)));
    }

    #[test]
    fn the_total_bound_holds_across_sources_and_slots_come_back_when_dropped() {
        let gate = Gate::new(small());
        let a = gate.admit(ip(1), true);
        let _b = gate.admit(ip(2), true);
        let _c = gate.admit(ip(3), true);
        assert!(matches!(
            gate.admit(ip(4), true),
            Admit::Refuse(Refusal::Busy {
                pending: 3,
                limit: 3
            })
        ));
        drop(a);
        assert!(matches!(gate.admit(ip(4), true), Admit::Handshake(_)));
    }

    #[test]
    fn pending_handshakes_do_not_count_against_connections() {
        let gate = Gate::new(small());
        let _pending: Vec<Admit> = (1..=3).map(|n| gate.admit(ip(n), true)).collect();
        let first = gate.connected().expect("a slot");
        let _second = gate.connected().expect("a slot");
        assert_eq!(
            gate.connected().map(drop),
            Err(Refusal::Full { limit: 2 }),
            "only authenticated connections fill the connection slots"
        );
        drop(first);
        assert!(gate.connected().is_ok());
    }
}
