//! Who sent a request and how its progress reaches them: the two things every
//! feature's handler is given. A leaf: it imports no feature module, so features
//! can use it without importing the dispatcher that routes to them.

use handover_common::proto::{Progress, Response};
use tokio::sync::mpsc;

/// Who sent a request: a coordinator over QUIC, or a local operator.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A coordinator, by its certificate's name.
    Coordinator(String),
    /// Someone with access to the control socket on this host.
    Local,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Coordinator(name) => write!(f, "coordinator {name}"),
            Caller::Local => f.write_str("local operator"),
        }
    }
}

/// Pushes progress to the caller while an action runs.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Response>,
}

impl Reporter {
    /// A reporter writing into `tx`.
    pub fn new(tx: mpsc::Sender<Response>) -> Self {
        Reporter { tx }
    }

    /// Sends progress; `false` once the caller has gone away, so long waits can stop.
    pub async fn progress(&self, progress: Progress) -> bool {
        self.tx.send(Response::Progress(progress)).await.is_ok()
    }

    /// Whether the caller has gone away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the caller has gone away: a wait selects on it to stop.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}
