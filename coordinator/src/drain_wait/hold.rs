//! What keeps a host from being drained and idle, as the wait shows it and as a
//! timeout names it. Each reason is worded here once.

use std::net::IpAddr;
use std::time::Duration;

use handover_common::names::HostName;
use handover_common::proto::drain::Holder;

/// One of the host's servers in one LB, as watched during the wait: the same
/// type the JSON lines print (`arrived` counts from the wait's first read;
/// `steady_ms` is since the first read if stot never changed).
pub(crate) use handover_common::proto::drain::DrainLbServer as LbServer;

/// What the LBs said about one host at the last poll.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LbEvidence {
    /// Its servers, in every LB that answered.
    pub servers: Vec<LbServer>,
    /// LBs that could not be read, and why.
    pub unreadable: Vec<(HostName, String)>,
}

/// One reason a host is not idle yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// Connections on the host that do not come from an LB.
    Direct {
        /// By remote address.
        holders: Vec<Holder>,
        /// How many.
        count: u32,
        /// Holders whose address is an LB's (its `[[hosts]] address`) although
        /// the LB is configured to connect from elsewhere (`source`).
        at_lb_address: Vec<(IpAddr, HostName)>,
    },
    /// Nothing holds the host, but not yet for the whole quiet period, judged
    /// over the host's and every LB's evidence together.
    NotYetQuiet {
        /// How long everything has been quiet.
        quiet_for: Duration,
        /// The quiet period.
        quiet: Duration,
    },
    /// Requests still arriving through an LB: stot rose within the quiet period.
    Arriving(LbServer),
    /// Requests in flight or queued in an LB.
    InFlight(LbServer),
    /// An LB could not be read: not known to be idle.
    LbUnknown {
        /// The LB.
        lb: HostName,
        /// Why.
        why: String,
    },
}

impl Hold {
    /// A label that stays the same while the hold does (no changing figures):
    /// what plain-line output prints a new line for.
    pub fn label(&self) -> String {
        match self {
            Hold::Direct { holders, .. } => format!(
                "direct {}",
                holders
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Hold::NotYetQuiet { .. } => "quiet".into(),
            Hold::Arriving(s) => format!("arriving {}:{}/{}", s.lb, s.backend, s.server),
            Hold::InFlight(s) => format!("in-flight {}:{}/{}", s.lb, s.backend, s.server),
            Hold::LbUnknown { lb, .. } => format!("unknown {lb}"),
        }
    }

    /// Whether the agent's own account (its timeout message) says this already.
    pub fn is_on_the_host(&self) -> bool {
        matches!(self, Hold::Direct { .. } | Hold::NotYetQuiet { .. })
    }
}

/// "1.5s": figures that change ten times a second, to a tenth.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The fix for a holder at an LB's address: that LB connects from it.
pub fn source_hint(ip: IpAddr, lb: &HostName) -> String {
    format!(
        "{ip} is load balancer {lb}'s address: if its HAProxy connects to app servers from it, \
         add it to `source` in {lb}'s [[hosts]] entry (source = [\"{ip}\"]) so those pooled \
         connections are judged by {lb}'s own figures"
    )
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Direct {
                holders,
                count,
                at_lb_address,
            } => {
                let who: Vec<String> = holders.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{count} direct connection{} (not through a load balancer) from {}",
                    plural(u64::from(*count)),
                    who.join(", ")
                )?;
                for (ip, lb) in at_lb_address {
                    write!(f, " ({})", source_hint(*ip, lb))?;
                }
                Ok(())
            }
            Hold::NotYetQuiet { quiet_for, quiet } => write!(
                f,
                "nothing on the host or any load balancer, but only for {} of the {} quiet period",
                secs(*quiet_for),
                secs(*quiet)
            ),
            Hold::Arriving(s) => write!(
                f,
                "requests still arriving through {} at {}/{} ({}): {} new session{} during the wait, the last {} ago — clients pinned by the persistence cookie keep coming to a draining server",
                s.lb,
                s.backend,
                s.server,
                s.status,
                s.arrived,
                plural(s.arrived),
                secs(s.steady_for())
            ),
            Hold::InFlight(s) => write!(
                f,
                "{} request{} in flight and {} queued through {} at {}/{}",
                s.scur,
                plural(s.scur),
                s.qcur,
                s.lb,
                s.backend,
                s.server
            ),
            Hold::LbUnknown { lb, why } => write!(
                f,
                "load balancer {lb} could not be read, so it is not known to be idle: {why}"
            ),
        }
    }
}
