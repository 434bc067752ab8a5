//! Every name constructor: whatever string it is given, it returns a value or an
//! error, and what it accepts is safe where names go (a path component, a command
//! line, the HAProxy runtime API) and survives a round trip through its text.
#![no_main]

use handover_common::names::{
    BackendName, HookName, HostName, ReleaseName, RepoUrl, Revision, check_simple,
};
use libfuzzer_sys::fuzz_target;

/// What every accepted name must satisfy, whatever its kind.
fn never_an_option_nor_a_path_escape(s: &str) {
    assert!(!s.is_empty(), "empty name accepted");
    assert!(!s.starts_with('-'), "{s:?} could be read as an option");
    assert!(!s.contains('\0'), "{s:?} holds a NUL");
}

fn plain_component(s: &str) {
    never_an_option_nor_a_path_escape(s);
    assert!(!s.contains('/'), "{s:?} is more than one path component");
    assert!(s != "." && s != "..", "{s:?} is a path step");
    assert!(!s.contains(char::is_whitespace), "{s:?} holds whitespace");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = HostName::new(s) {
        plain_component(n.as_str());
        assert_eq!(n.as_str().parse::<HostName>().ok().as_ref(), Some(&n));
    }
    if let Ok(n) = HookName::new(s) {
        plain_component(n.as_str());
    }
    if let Ok(n) = BackendName::new(s) {
        plain_component(n.as_str());
    }
    if let Ok(n) = ReleaseName::new(s) {
        plain_component(n.as_str());
        assert!(!n.as_str().starts_with('.'), "{n:?} is a hidden file");
    }
    if let Ok(r) = Revision::new(s) {
        never_an_option_nor_a_path_escape(r.as_str());
        assert!(!r.as_str().contains(".."), "{r:?} has `..`");
        let _ = r.is_commit_id();
    }
    if let Ok(u) = RepoUrl::new(s) {
        never_an_option_nor_a_path_escape(u.as_str());
    }
    let _ = check_simple("fuzz", s, 64);
    let _ = s.parse::<handover_common::names::Role>();
    let _ = handover_common::duration::parse(s);
});
