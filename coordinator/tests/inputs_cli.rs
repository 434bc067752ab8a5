//! `handover inputs …` as an operator runs it: the real binary against a journal in
//! a temporary state_dir (no fleet: inputs live on the bastion only).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Bastion {
    dir: tempfile::TempDir,
}

impl Bastion {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("handover.toml"),
            "ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nstate_dir = \"state\"\n",
        )
        .expect("config");
        Bastion { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_handover"))
            .current_dir(self.dir.path())
            .env("USER", "alice")
            .arg("inputs")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run handover")
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "handover inputs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// Runs and expects a refusal; returns stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "handover inputs {args:?} succeeded");
        String::from_utf8(out.stderr).expect("utf8")
    }

    fn versions(&self) -> usize {
        let json: serde_json::Value =
            serde_json::from_str(&self.ok(&["history", "--json"])).expect("json");
        json.as_array().expect("array").len()
    }
}

#[test]
fn set_show_history_diff_and_revert_make_numbered_versions() {
    let b = Bastion::new();
    assert!(b.ok(&["show"]).contains("no inputs saved yet"));
    let out = b.ok(&["set", "APP_ENV=staging", "DB_URL=postgres://db/app?a=b"]);
    assert!(out.contains("inputs version 1 saved (set)"), "{out}");
    let out = b.ok(&["set", "APP_ENV=staging"]);
    assert!(
        out.contains("no change") && out.contains("version 1"),
        "{out}"
    );
    assert_eq!(b.versions(), 1);
    b.ok(&["set", "APP_ENV=production", "--unset", "DB_URL"]);
    assert_eq!(b.versions(), 2);

    let diff = b.ok(&["diff", "1", "2"]);
    assert_eq!(
        diff,
        "~ APP_ENV: \"staging\" -> \"production\"\n- DB_URL = \"postgres://db/app?a=b\"\n"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&b.ok(&["show", "--version", "1", "--json"])).expect("json");
    assert_eq!(shown["inputs"]["DB_URL"], "postgres://db/app?a=b");
    assert!(shown["who"].as_str().expect("who").starts_with("alice@"));

    let out = b.ok(&["revert", "1"]);
    assert!(out.contains("inputs version 3 saved (revert 1)"), "{out}");
    let history = b.ok(&["history"]);
    assert!(
        history.contains("revert 1") && history.contains("alice@"),
        "{history}"
    );
    let current: serde_json::Value =
        serde_json::from_str(&b.ok(&["show", "--json"])).expect("json");
    assert_eq!(current["inputs"], shown["inputs"]);
}

#[test]
fn the_csv_export_round_trips_through_import() {
    let b = Bastion::new();
    b.ok(&[
        "set",
        "COMMA=a,b",
        "QUOTE=say \"hi\"",
        "LINES=one\ntwo",
        "EMPTY=",
    ]);
    let csv = b.ok(&["export", "--csv"]);
    assert!(csv.starts_with("key,value\n"), "{csv}");
    assert!(csv.contains("COMMA,\"a,b\"\n"), "{csv}");
    std::fs::write(b.path("inputs.csv"), &csv).expect("write");
    let out = b.ok(&["import", "--csv", "inputs.csv"]);
    assert!(out.contains("no change"), "{out}");
    assert_eq!(b.versions(), 1);

    // An edited export is a new version; the file is the whole map.
    std::fs::write(b.path("edited.csv"), "key,value\nCOMMA,\"x,y\"\n").expect("write");
    let out = b.ok(&["import", "--csv", "edited.csv"]);
    assert!(
        out.contains("inputs version 2 saved (import edited.csv)"),
        "{out}"
    );
    assert!(out.contains("- LINES"), "{out}");
    assert_eq!(b.ok(&["export", "--csv", "--version", "1"]), csv);
}

#[test]
fn bad_input_is_refused_naming_the_key_and_the_fix_and_nothing_is_stored() {
    let b = Bastion::new();
    b.ok(&["set", "A=1"]);
    let cases: [(&[&str], &str); 5] = [
        (&["set", "app_env=x"], "invalid input key \"app_env\""),
        (&["set", "APP_ENV"], "is not KEY=VALUE"),
        (&["set", "B=2", "--unset", "NOPE"], "NOPE is not set"),
        (&["set", "A=2", "A=3"], "A is given twice"),
        (&["diff", "1", "7"], "there is no inputs version 7"),
    ];
    for (args, expected) in cases {
        let err = b.refused(args);
        assert!(
            err.contains(expected),
            "{args:?}: {err:?} lacks {expected:?}"
        );
    }
    let long = format!("BIG={}", "x".repeat(9000));
    assert!(
        b.refused(&["set", &long])
            .contains("the value of BIG is 9000 bytes")
    );
    std::fs::write(b.path("bad.csv"), "key,value\nA,1\nlower,2\n").expect("write");
    let err = b.refused(&["import", "--csv", "bad.csv"]);
    assert!(
        err.contains("bad.csv is not inputs CSV") && err.contains("line 3"),
        "{err}"
    );
    assert!(
        b.refused(&["import", "--csv", "missing.csv"])
            .contains("cannot read")
    );
    assert_eq!(b.versions(), 1);
    assert!(Path::new(&b.path("state")).exists());
}
