//! System packages, as an operator meets them: `scripts/package.sh` builds the two
//! .deb and two .rpm files (from the debug binaries, to keep this quick), their
//! contents are where the distributions look, the agent .deb installs on this
//! machine with its conffile, its unit passes `systemd-analyze verify`, `man
//! handover` works once the coordinator .deb is in, and purge leaves nothing.
//! Each flag of the script (`--profile dev`, `--deb-only`) has a test checking its
//! exit status, what it prints and which files it leaves.
//!
//! The tests take turns ([`package`] holds a lock): they share target/packages/.
//! Only the first one builds; the others find cargo's outputs up to date, so the
//! whole file costs one debug build plus a few seconds of packaging per test.
//!
//! This test installs packages on the machine running it (as the issue asks), so it
//! needs root and purges `handover-agent` and `handover` before and after itself. It
//! starts no fleet and no service (`dpkg -i` starts nothing without systemd as
//! PID 1; with it, the unit's `ConditionPathExists=` skips the start, as there are
//! no credentials).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, PoisonError};

use handover_tests::agents::{AgentProcess, AgentSpec, Pki, bin};
use handover_tests::fleet::{Workdir, host_ip};

/// The largest .deb an operator should have to copy around (issue 19).
const MAX_DEB_BYTES: u64 = 10_000_000;

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Runs `program args`, returning its output whatever the exit status.
///
/// Without the `CARGO_*` variables cargo sets for this test (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...): ring's build script reruns when they change, so a
/// cargo started from here with them would rebuild ring and everything above it,
/// and the next cargo started from a shell would rebuild it all again.
fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CARGO_")
            && key_text != "CARGO_HOME"
            && key_text != "CARGO_TARGET_DIR"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `program args` and returns stdout; panics with stderr if it fails.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

static PACKAGING: Mutex<()> = Mutex::new(());

/// `scripts/package.sh ARGS` run to its end, and the lock that keeps the other
/// tests of this file from replacing its packages meanwhile.
struct Packaged {
    output: Output,
    _turn: MutexGuard<'static, ()>,
}

impl Packaged {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Asserts exit status 0 and that stdout lists exactly the `expected` packages
    /// (file names, in order), each with its size, and returns their paths.
    fn assert_listed(&self, args: &str, expected: &[&str]) -> Vec<PathBuf> {
        assert!(
            self.output.status.success(),
            "scripts/package.sh {args} exited with {}:\n{}{}",
            self.output.status,
            self.stdout(),
            String::from_utf8_lossy(&self.output.stderr)
        );
        let listed: Vec<(String, PathBuf)> = self
            .stdout()
            .lines()
            .map(|line| {
                let (size, path) = line
                    .trim()
                    .split_once("  ")
                    .unwrap_or_else(|| panic!("not `SIZE MB  PATH`: {line:?}"));
                (size.to_string(), PathBuf::from(path))
            })
            .collect();
        let names: Vec<String> = listed
            .iter()
            .map(|(_, p)| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            names, expected,
            "scripts/package.sh {args} must list what it built, and only that"
        );
        for (size, path) in &listed {
            let bytes = std::fs::metadata(path)
                .unwrap_or_else(|e| panic!("listed {} but it is not there: {e}", path.display()))
                .len();
            let shown = format!("{:.1} MB", bytes as f64 / 1e6);
            assert_eq!(size, &shown, "the size printed for {}", path.display());
        }
        listed.into_iter().map(|(_, p)| p).collect()
    }
}

/// This file's turn at cargo's build outputs and target/packages.
fn take_turn() -> MutexGuard<'static, ()> {
    PACKAGING.lock().unwrap_or_else(PoisonError::into_inner)
}

fn package(args: &[&str]) -> Packaged {
    package_in_turn(args, take_turn())
}

fn package_in_turn(args: &[&str], turn: MutexGuard<'static, ()>) -> Packaged {
    let script = workspace().join("scripts/package.sh");
    Packaged {
        output: run(script.to_str().expect("UTF-8 path"), args),
        _turn: turn,
    }
}

fn deb_names() -> [String; 2] {
    let v = env!("CARGO_PKG_VERSION");
    [
        format!("handover-agent_{v}-1_amd64.deb"),
        format!("handover_{v}-1_amd64.deb"),
    ]
}

fn is_installed(package: &str) -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", package])
        .stdout
        .starts_with(b"install ok installed")
}

/// Purges both packages now and again when dropped, so a failing assertion does
/// not leave them on the machine.
struct Installed;

impl Installed {
    fn purge() {
        let out = run("dpkg", &["--purge", "handover-agent", "handover"]);
        assert!(
            out.status.success(),
            "dpkg --purge failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "handover-agent", "handover"]);
    }
}

/// The one package file in `dir` whose name starts with `prefix` and ends with
/// `ext` (the agent's files also start with the coordinator's `handover-`).
fn package_file(dir: &Path, prefix: &str, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with(prefix)
                && name.ends_with(ext)
                && (prefix.starts_with("handover-agent") || !name.starts_with("handover-agent"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {prefix}*{ext} in {}, found {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one file")
}

fn assert_lists(listing: &str, what: &str, paths: &[&str]) {
    for path in paths {
        assert!(
            listing.lines().any(|line| line.ends_with(path)),
            "{what} lacks {path}; it holds:\n{listing}"
        );
    }
}

const AGENT_PATHS: &[&str] = &[
    "/usr/bin/handover-agent",
    "/etc/handover/agent.toml",
    "/usr/lib/systemd/system/handover-agent.service",
    "/usr/lib/tmpfiles.d/handover-agent.conf",
    "/usr/share/bash-completion/completions/handover-agent",
    "/usr/share/fish/vendor_completions.d/handover-agent.fish",
    "/usr/share/man/man1/handover-agent.1.gz",
    "/usr/share/man/man1/handover-agent-run.1.gz",
    "/usr/share/man/man1/handover-agent-status.1.gz",
    // Subcommands the features added: picked up from the clap definition.
    "/usr/share/man/man1/handover-agent-drain.1.gz",
    // The config file's format, from the README's config reference.
    "/usr/share/man/man5/agent.toml.5.gz",
];

const COORDINATOR_PATHS: &[&str] = &[
    "/usr/bin/handover",
    "/usr/share/bash-completion/completions/handover",
    "/usr/share/fish/vendor_completions.d/handover.fish",
    "/usr/share/man/man1/handover.1.gz",
    "/usr/share/man/man1/handover-ca-issue.1.gz",
    "/usr/share/man/man1/handover-status.1.gz",
    "/usr/share/man/man1/handover-rollout.1.gz",
    "/usr/share/man/man1/handover-resume.1.gz",
    "/usr/share/doc/handover/examples/handover.toml",
    "/usr/share/man/man5/handover.toml.5.gz",
    "/usr/share/man/man5/handover-plan.5.gz",
];

#[test]
fn packages_build_install_verify_and_purge() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test installs .deb files with dpkg: run it as root"
    );
    let root = workspace();
    let built = package(&["--profile", "dev"]);
    let v = env!("CARGO_PKG_VERSION");
    let [agent_deb_name, coordinator_deb_name] = deb_names();
    let listed = built.assert_listed(
        "--profile dev",
        &[
            agent_deb_name.as_str(),
            coordinator_deb_name.as_str(),
            &format!("handover-agent-{v}-1.x86_64.rpm"),
            &format!("handover-{v}-1.x86_64.rpm"),
        ],
    );
    for deb in &listed[..2] {
        let bytes = std::fs::metadata(deb).expect("listed .deb").len();
        assert!(
            bytes <= MAX_DEB_BYTES,
            "{} is {bytes} bytes, over {MAX_DEB_BYTES}",
            deb.display()
        );
    }
    let out = target_dir().join("packages");
    let agent_deb = package_file(&out, "handover-agent_", ".deb");
    let coordinator_deb = package_file(&out, "handover_", ".deb");
    let agent_rpm = package_file(&out, "handover-agent-", ".rpm");
    let coordinator_rpm = package_file(&out, "handover-", ".rpm");
    let path = |p: &PathBuf| p.to_str().expect("UTF-8 path").to_string();

    // What each .deb holds, and that agent.toml is a conffile.
    let listing = run_ok("dpkg-deb", &["-c", &path(&agent_deb)]);
    assert_lists(&listing, "the agent .deb", AGENT_PATHS);
    assert_lists(
        &listing,
        "the agent .deb",
        &["/usr/share/zsh/vendor-completions/_handover-agent"],
    );
    let conffiles = run_ok("dpkg-deb", &["-I", &path(&agent_deb), "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/handover/agent.toml");
    let listing = run_ok("dpkg-deb", &["-c", &path(&coordinator_deb)]);
    assert_lists(&listing, "the coordinator .deb", COORDINATOR_PATHS);
    assert_lists(
        &listing,
        "the coordinator .deb",
        &["/usr/share/zsh/vendor-completions/_handover"],
    );
    assert!(
        !listing.contains("handover-agent"),
        "the coordinator .deb must not carry agent files:\n{listing}"
    );

    // What each .rpm holds (rpm from Debian reads them).
    let listing = run_ok("rpm", &["-qlp", &path(&agent_rpm)]);
    assert_lists(&listing, "the agent .rpm", AGENT_PATHS);
    assert_lists(
        &listing,
        "the agent .rpm",
        &["/usr/share/zsh/site-functions/_handover-agent"],
    );
    let config = run_ok("rpm", &["-qcp", &path(&agent_rpm)]);
    assert_eq!(
        config.trim(),
        "/etc/handover/agent.toml",
        "the agent .rpm's config files"
    );
    let scripts = run_ok("rpm", &["-qp", "--scripts", &path(&agent_rpm)]);
    for scriptlet in [
        "handover-agent %post",
        "handover-agent %preun",
        "handover-agent %postun",
    ] {
        assert!(
            scripts.contains(scriptlet),
            "the agent .rpm lacks its {scriptlet} script:\n{scripts}"
        );
    }
    let listing = run_ok("rpm", &["-qlp", &path(&coordinator_rpm)]);
    assert_lists(&listing, "the coordinator .rpm", COORDINATOR_PATHS);

    // Install on this machine, from a clean slate.
    Installed::purge();
    assert!(
        !Path::new("/usr/bin/handover-agent").exists(),
        "/usr/bin/handover-agent is there before installing"
    );
    let guard = Installed;
    let installed = run("dpkg", &["-i", &path(&agent_deb)]);
    let install_log = String::from_utf8_lossy(&installed.stderr).into_owned();
    assert!(
        installed.status.success(),
        "dpkg -i of the agent failed:\n{install_log}"
    );
    assert!(is_installed("handover-agent"));
    assert!(
        install_log.contains("--print-install"),
        "installing without credentials must say what to run:\n{install_log}"
    );

    let version = run_ok("/usr/bin/handover-agent", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("handover-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let shipped = std::fs::read(root.join("packaging/agent/agent.toml"))
        .expect("read packaging/agent/agent.toml");
    let in_place = std::fs::read("/etc/handover/agent.toml").expect("the conffile is in place");
    assert_eq!(
        in_place, shipped,
        "/etc/handover/agent.toml differs from packaging/agent/agent.toml"
    );
    let conffiles = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", "handover-agent"]);
    assert!(
        conffiles.contains("/etc/handover/agent.toml"),
        "dpkg does not treat agent.toml as a conffile: {conffiles}"
    );
    let state =
        std::fs::metadata("/var/lib/handover-agent").expect("the state_dir exists after install");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            state.permissions().mode() & 0o7777,
            0o700,
            "/var/lib/handover-agent mode"
        );
    }

    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/handover-agent.service")
            .is_symlink(),
        "the service is not enabled after install"
    );

    // The unit, as systemd itself reads it: no warning at all, not just exit 0
    // (unknown keys and bad values are warnings with exit status 0).
    let verify = run(
        "systemd-analyze",
        &["verify", "/usr/lib/systemd/system/handover-agent.service"],
    );
    let verify_log = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && verify_log.trim().is_empty(),
        "systemd-analyze verify:\n{verify_log}"
    );

    // Started by hand without credentials, the agent names what is missing and what to run.
    let started = run("/usr/bin/handover-agent", &["run"]);
    let log = String::from_utf8_lossy(&started.stderr);
    assert!(
        !started.status.success(),
        "the agent must not run without credentials:\n{log}"
    );
    assert!(
        log.contains("/etc/handover/agent.pem")
            && log.contains("handover ca issue")
            && log.contains("--print-install"),
        "the agent's error must name the missing files and the command to run:\n{log}"
    );

    // The coordinator package: `man handover` works.
    run_ok("dpkg", &["-i", &path(&coordinator_deb)]);
    let page = run_ok("man", &["-w", "handover"]);
    assert_eq!(page.trim(), "/usr/share/man/man1/handover.1.gz");
    let text = Command::new("man")
        .args(["-P", "cat", "handover"])
        .env("MANWIDTH", "100")
        .output()
        .expect("run man");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("handover-ca(1)"),
        "man handover does not list its subcommands:\n{text}"
    );
    run_ok("/usr/bin/handover", &["--version"]);
    let help = run_ok("/usr/bin/handover", &["--help"]);
    assert!(
        help.contains("handover generate man"),
        "--help must name `generate`:\n{help}"
    );
    // The file formats: every key of the plan, as the README's config reference has it.
    let plan = Command::new("man")
        .args(["-P", "cat", "5", "handover-plan"])
        .env("MANWIDTH", "100")
        .output()
        .expect("run man");
    let plan = String::from_utf8_lossy(&plan.stdout);
    for key in [
        "min_healthy",
        "drain_timeout",
        "on_drain_timeout",
        "auto_rollback",
    ] {
        assert!(
            plan.contains(key),
            "man 5 handover-plan lacks {key}:\n{plan}"
        );
    }
    let page = run_ok("man", &["-w", "5", "handover.toml"]);
    assert_eq!(page.trim(), "/usr/share/man/man5/handover.toml.5.gz");

    // Purge removes everything the packages created.
    Installed::purge();
    drop(guard);
    assert!(!is_installed("handover-agent") && !is_installed("handover"));
    for gone in [
        "/usr/bin/handover-agent",
        "/usr/bin/handover",
        "/etc/handover/agent.toml",
        "/usr/lib/systemd/system/handover-agent.service",
        "/usr/share/man/man1/handover.1.gz",
        "/var/lib/handover-agent",
        "/etc/systemd/system/multi-user.target.wants/handover-agent.service",
    ] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is still there after purge"
        );
    }
}

/// Issue 19: `--deb-only` listed `*.deb *.rpm` and exited 2 with no .rpm there, and
/// packaging stripped cargo's outputs in place, which fails ("Text file busy")
/// while an agent runs from them. Here an agent runs from target/debug throughout.
#[test]
fn deb_only_lists_the_two_debs_exits_0_and_leaves_running_binaries_alone() {
    // The whole test in one turn: the other test's build must not relink the
    // binary between the read of `before` and the packaging.
    let turn = take_turn();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_ok(
        &cargo,
        &[
            "build",
            "--locked",
            "--profile",
            "dev",
            "-p",
            "handover-agent",
            "-p",
            "handover",
        ],
    );
    let agent_bin = bin("handover-agent");
    let before = std::fs::read(&agent_bin).expect("read target/debug/handover-agent");

    // No fleet lock: this agent serves nobody and counts nothing, on an address
    // of its own, so it cannot disturb a fleet test running meanwhile.
    let work = Workdir::new().expect("workdir");
    let pki = Pki::init(&work.subdir("pki").expect("pki dir")).expect("handover ca init");
    let mut agent = AgentProcess::start(
        work.path(),
        &pki,
        AgentSpec {
            name: "web-1",
            ip: host_ip(240),
            extra: String::new(),
        },
    )
    .expect("an agent running from target/debug/handover-agent");

    let packaged = package_in_turn(&["--profile", "dev", "--deb-only"], turn);
    let [agent_deb, coordinator_deb] = deb_names();
    let listed =
        packaged.assert_listed("--profile dev --deb-only", &[&agent_deb, &coordinator_deb]);
    for deb in &listed {
        let bytes = std::fs::metadata(deb).expect("listed .deb").len();
        assert!(
            bytes <= MAX_DEB_BYTES,
            "{} is {bytes} bytes, over {MAX_DEB_BYTES}",
            deb.display()
        );
    }
    let rpms: Vec<PathBuf> = std::fs::read_dir(target_dir().join("packages"))
        .expect("list target/packages")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .collect();
    assert!(rpms.is_empty(), "--deb-only left .rpm files: {rpms:?}");

    assert!(
        agent.is_running(),
        "packaging disturbed the running agent:\n{}",
        agent.log_text()
    );
    let after = std::fs::read(&agent_bin).expect("read target/debug/handover-agent");
    assert!(
        before == after,
        "packaging changed cargo's own target/debug/handover-agent (it must strip copies)"
    );
    // The staged copy is what went into the package: stripped, unlike cargo's.
    let staged = target_dir().join("pkg-debug/handover-agent");
    let staged_len = std::fs::metadata(&staged).expect("the staged copy").len();
    assert!(
        staged_len < after.len() as u64,
        "{} ({staged_len} bytes) is not a stripped copy of {} ({} bytes)",
        staged.display(),
        agent_bin.display(),
        after.len()
    );
}
