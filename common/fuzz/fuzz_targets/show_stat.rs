//! HAProxy's `show stat` CSV and `show info`, read by the agent on an LB host:
//! any text gives rows or an error, never a panic.
#![no_main]

use handover_agent::haproxy::show::{parse_info, parse_stat};
use handover_common::names::HostName;
use handover_common::proto::lb::ServerKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(stat) = parse_stat(text) {
        let host = HostName::new("web-1").ok();
        for row in &stat.servers {
            let _ = row.stats(host.as_ref(), ServerKind::Slot);
            assert!(stat.server(&row.backend, &row.server).is_some());
        }
        for b in &stat.backends {
            assert!(stat.has_backend(b));
        }
    }
    let _ = parse_info(text);
});
