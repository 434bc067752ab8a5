//! The annotated handover.toml the `handover` package ships as
//! /usr/share/doc/handover/examples/handover.toml must load as it is: an operator
//! copies it to start a bastion directory.

use std::path::Path;

use handover::config::CoordinatorConfig;

#[test]
fn the_packaged_example_handover_toml_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/coordinator/handover.toml");
    let config =
        CoordinatorConfig::load(&path).expect("packaging/coordinator/handover.toml must load");
    let names: Vec<&str> = config.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["lb-1", "web-1", "web-2", "db-1"]);
    assert!(
        config.hosts.iter().any(|h| h.standby),
        "the example shows a standby host"
    );
    assert!(config.state_dir.ends_with("state"));
}
