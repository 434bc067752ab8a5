//! What happened since the agent started: counted where it happens.

use std::time::Duration;

use handover_common::proto::deploy::DeployRequest;
use handover_common::proto::{FailureKind, Request, Response};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::caller::Caller;

/// What a request asked for, as a label: the request's feature, with deploys split
/// by what they do (an apply takes minutes, a release list milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum RequestKind {
    status,
    drain,
    lb,
    deploy_apply,
    deploy_activate,
    deploy_read,
    deploy_mark_unhealthy,
    hook,
    lease,
    check_health,
    /// Error lines from the app's error log (the surge bake).
    app_log,
    /// A frame that could not be decoded.
    malformed,
}

impl RequestKind {
    /// The kind of `request`.
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Status => RequestKind::status,
            Request::Drain(_) => RequestKind::drain,
            Request::Lb(_) => RequestKind::lb,
            Request::Lease(_) => RequestKind::lease,
            Request::CheckHealth(_) => RequestKind::check_health,
            Request::AppLog(_) => RequestKind::app_log,
            Request::Deploy(d) => match d {
                DeployRequest::Apply { .. } | DeployRequest::Stage { .. } => {
                    RequestKind::deploy_apply
                }
                DeployRequest::Activate { .. } => RequestKind::deploy_activate,
                DeployRequest::MarkUnhealthy { .. } => RequestKind::deploy_mark_unhealthy,
                DeployRequest::RunHook(_) | DeployRequest::RunHookWith { .. } => RequestKind::hook,
                _ => RequestKind::deploy_read,
            },
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum RequestResult {
    ok,
    bad_request,
    version_mismatch,
    not_configured,
    refused,
    leased,
    timeout,
    failed,
    internal,
}

impl RequestResult {
    fn of(response: &Response) -> Self {
        let kind = match response {
            Response::Failed(f) => f.kind,
            _ => return RequestResult::ok,
        };
        match kind {
            FailureKind::BadRequest => RequestResult::bad_request,
            FailureKind::VersionMismatch => RequestResult::version_mismatch,
            FailureKind::NotConfigured => RequestResult::not_configured,
            FailureKind::Refused => RequestResult::refused,
            FailureKind::Leased => RequestResult::leased,
            FailureKind::Timeout => RequestResult::timeout,
            FailureKind::Failed => RequestResult::failed,
            FailureKind::Internal => RequestResult::internal,
        }
    }
}

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Channel {
    quic,
    control,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    kind: RequestKind,
    result: RequestResult,
    channel: Channel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DurationLabels {
    result: RequestResult,
}

/// How an incoming QUIC connection ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectionResult {
    /// The handshake passed: a coordinator of this CA.
    accepted,
    /// Refused before the handshake (rate or connection limits).
    refused,
    /// The handshake failed or stalled (wrong CA, wrong role, timeout).
    handshake_failed,
    /// Closed because its certificate was revoked.
    revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionLabels {
    result: ConnectionResult,
}

/// The agent's counters and histograms. Cloning shares them (they are `Arc`s
/// inside), which is how a scrape registers them beside the gathered figures.
#[derive(Debug, Clone)]
pub struct Counters {
    connections: Family<ConnectionLabels, Counter>,
    open_connections: Gauge,
    requests: Family<RequestLabels, Counter>,
    deploys: Family<DurationLabels, Histogram>,
    hooks: Family<DurationLabels, Histogram>,
}

/// Bucket bounds in seconds: a hook or deploy takes from a fraction of a second
/// (a no-op hook) to many minutes (a fetch and a build).
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            connections: Family::default(),
            open_connections: Gauge::default(),
            requests: Family::default(),
            deploys: Family::new_with_constructor(duration_histogram),
            hooks: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl Counters {
    /// Counts one incoming QUIC connection by how it ended up.
    pub fn connection(&self, result: ConnectionResult) {
        self.connections
            .get_or_create(&ConnectionLabels { result })
            .inc();
    }

    /// Counts a connection that is served until the returned guard is dropped.
    pub fn open_connection(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    /// Counts one finished exchange by its final answer. Deploys and hooks also
    /// record how long they took.
    pub fn request(&self, caller: &Caller, kind: RequestKind, response: &Response, took: Duration) {
        let result = RequestResult::of(response);
        let channel = match caller {
            Caller::Coordinator(_) => Channel::quic,
            Caller::Local => Channel::control,
        };
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                result,
                channel,
            })
            .inc();
        let histogram = match kind {
            RequestKind::deploy_apply | RequestKind::deploy_activate => &self.deploys,
            RequestKind::hook => &self.hooks,
            _ => return,
        };
        histogram
            .get_or_create(&DurationLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Adds these to `registry` (under its `handover_agent` prefix).
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "quic_connections",
            "Incoming QUIC connections, by how they ended up",
            self.connections.clone(),
        );
        registry.register(
            "quic_connections_open",
            "QUIC connections from coordinators being served now",
            self.open_connections.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by kind, result and channel (quic or the local control socket)",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "deploy_duration",
            "How long deploys (apply, activate) took, by result",
            Unit::Seconds,
            self.deploys.clone(),
        );
        registry.register_with_unit(
            "hook_duration",
            "How long hooks run by name took, by result",
            Unit::Seconds,
            self.hooks.clone(),
        );
    }
}

/// Holds one open connection in the gauge; dropping it lets go.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
