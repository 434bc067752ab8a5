//! Whatever bytes arrive on a stream, decoding must return a value or an error:
//! never panic, never allocate what the length prefix merely claims.
#![no_main]

use handover_common::proto::{RequestFrame, Response};
use handover_common::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Both directions: an agent decodes requests, a coordinator responses.
    if let Ok(frame) = wire::decode_frame::<RequestFrame>(data) {
        // What decodes must encode again (and decode to the same value).
        let again = wire::encode(&frame).expect("a decoded frame re-encodes");
        let twice = wire::decode_frame::<RequestFrame>(&again).expect("and decodes");
        assert_eq!(twice, frame);
    }
    let _ = wire::decode_frame::<Response>(data);
    let _ = wire::decode::<RequestFrame>(data);
});
