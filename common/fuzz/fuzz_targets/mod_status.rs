//! Apache's mod_status `?auto` page and the `status_url` it is read from: any
//! text gives figures or an error, never a panic.
#![no_main]

use handover_agent::drain::apache::{StatusUrl, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(status) = parse(text) {
        let _ = status.figures();
    }
    if let Ok(url) = StatusUrl::try_from(text.to_owned()) {
        assert_eq!(url.to_string(), text);
    }
});
