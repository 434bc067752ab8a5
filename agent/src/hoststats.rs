//! Load, CPU and memory of the host, and the agent's own footprint (sysinfo).

use handover_common::proto::status::HostStats;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Keeps a sysinfo handle between calls: CPU use is the difference between two
/// refreshes, so the first reading after start is 0.
pub struct HostSampler {
    sys: Option<System>,
}

impl Default for HostSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSampler {
    /// A sampler; sysinfo failing to initialise leaves zeros rather than no agent.
    pub fn new() -> Self {
        let sys = System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        HostSampler { sys }
    }

    /// Reads the current figures.
    pub fn sample(&mut self) -> HostStats {
        let load = System::load_average()
            .map(|l| [l.one, l.five, l.fifteen])
            .unwrap_or_default();
        let host_uptime_secs = System::uptime().unwrap_or_default();
        let Some(sys) = self.sys.as_mut() else {
            return HostStats {
                host_uptime_secs,
                load,
                cpu_percent: 0.0,
                cpus: 0,
                memory_total: 0,
                memory_used: 0,
                agent_rss: 0,
            };
        };
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let pid = Pid::from_u32(std::process::id());
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        HostStats {
            host_uptime_secs,
            load,
            cpu_percent: sys.global_cpu_usage(),
            cpus: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX),
            memory_total: sys.total_memory(),
            memory_used: sys.used_memory(),
            agent_rss: sys.process(pid).map(|p| p.memory()).unwrap_or(0),
        }
    }
}
