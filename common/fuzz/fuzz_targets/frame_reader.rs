//! The async frame reader, fed a stream cut into arbitrary chunk sizes (the first
//! byte picks the largest read): it must never panic, never allocate more than a
//! frame's limit, and read a one-frame stream exactly as `decode_frame` decodes it.
#![no_main]

use std::sync::OnceLock;

use handover_common::proto::{RequestFrame, Response};
use handover_common::wire;
use libfuzzer_sys::fuzz_target;
use tokio::io::BufReader;
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    runtime().block_on(async {
        // A whole stream of requests, as an agent reads one: frame after frame
        // until the end or the first error.
        let mut input = BufReader::with_capacity(chunk, stream);
        let mut frames = 0usize;
        while let Ok(Some(_)) = wire::read_frame::<_, RequestFrame>(&mut input).await {
            frames += 1;
            assert!(frames <= stream.len() / 4, "more frames than prefixes");
        }

        // One frame: the reader and the slice decoder agree.
        let mut input = BufReader::with_capacity(chunk, stream);
        let read = wire::read_frame::<_, Response>(&mut input).await;
        let sliced = wire::decode_frame::<Response>(stream);
        if let Ok(whole) = sliced {
            match read {
                Ok(Some(r)) => assert_eq!(format!("{r:?}"), format!("{whole:?}")),
                other => panic!("decode_frame accepted what read_frame refused: {other:?}"),
            }
        }
    });
});
