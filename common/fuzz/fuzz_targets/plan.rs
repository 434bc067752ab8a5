//! A rollout plan, validated against a fixed inventory (three app servers and a
//! load balancer): any text becomes a plan or an error, never a panic — the
//! checks `handover plan` runs are the ones `rollout` relies on.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use handover::config::CoordinatorConfig;
use handover::plan::Plan;
use libfuzzer_sys::fuzz_target;

const INVENTORY: &str = r#"
ca = "ca.pem"
cert = "ops.pem"
key = "ops.key"
state_dir = "state"

[[hosts]]
name = "web-1"
address = "127.0.1.1:7443"
roles = ["app"]
app = "127.0.1.1:8080"

[[hosts]]
name = "web-2"
address = "127.0.1.2:7443"
roles = ["app"]
app = "127.0.1.2:8080"

[[hosts]]
name = "web-3"
address = "127.0.1.3:7443"
roles = ["app", "db"]
app = "127.0.1.3:8080"

[[hosts]]
name = "lb-1"
address = "127.0.1.100:7443"
roles = ["lb"]
"#;

fn inventory() -> &'static CoordinatorConfig {
    static CONFIG: OnceLock<CoordinatorConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = scratch().join(format!("handover-fuzz-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a private temp dir");
        let path = dir.join("handover.toml");
        std::fs::write(&path, INVENTORY).expect("write the inventory");
        CoordinatorConfig::load(&path).expect("the fixed inventory loads")
    })
}

/// Where the input file goes: memory (/dev/shm) when there is one, since a file
/// write on a disk costs a millisecond and would make this target 30 times slower.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(plan) = Plan::parse(text, inventory()) {
        // What validation accepted can be used: every wave's hosts are known.
        for wave in &plan.waves {
            for host in wave {
                assert!(plan.host(host).is_ok(), "wave host {host} not in the plan");
            }
        }
        let _ = plan.revision();
    }
});
