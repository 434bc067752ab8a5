//! One test per bug fixed from now on, each named after what it guards and
//! carrying, in its doc comment, the issue that found it. Write the test first, see
//! it fail, then fix the code.

#[allow(unused_imports)]
use handover_tests::fleet;

// --- hardening ---

mod hardening {
    use std::path::{Path, PathBuf};

    use handover_tests::agents::{
        AgentProcess, AgentSpec, Coordinator, HostSpec, Pki, output_text,
    };
    use handover_tests::git::{Revision, bare_repo};
    use handover_tests::ports::host_ip;

    /// A tag whose name a shell would run: `$( )`, `;`, `|`, `&` are all valid in
    /// a git ref name and in a Handover revision.
    const SHELLY_TAG: &str = "rel$(touch${IFS}pwned);x|y&z";

    const HOOKS: &str = "[hooks]\nafter_activate = \"printf '%s' \\\"$HANDOVER_REV\\\" > \\\"$HANDOVER_RELEASE_DIR/rev.txt\\\"; echo unquoted $HANDOVER_REV; id -u > \\\"$HANDOVER_RELEASE_DIR/uid.txt\\\"\"\n";

    struct Host {
        _serial: handover_tests::fleet::SerialGuard,
        dir: tempfile::TempDir,
        repo: String,
        _agent: AgentProcess,
        coordinator: Coordinator,
    }

    impl Host {
        /// One agent on 127.0.1.91 with `[deploy]` plus `release_hooks` (TOML).
        fn new(release_hooks: &str) -> Host {
            let serial = handover_tests::fleet::serial();
            let dir = tempfile::tempdir().expect("tempdir");
            let repo = bare_repo(
                dir.path(),
                &[
                    Revision {
                        tag: "v1",
                        files: vec![("VERSION", "v1\n".into())],
                    },
                    Revision {
                        tag: SHELLY_TAG,
                        files: vec![("VERSION", "v2\n".into()), ("handover.toml", HOOKS.into())],
                    },
                ],
            )
            .expect("repository");
            let pki = Pki::init(&dir.path().join("pki")).expect("ca init");
            let root = dir.path().join("web-1").join("www");
            let extra = format!(
                "\n[deploy]\nroot = {root:?}\nallowed_repos = [{repo:?}]\n{release_hooks}\n",
                root = root.display().to_string(),
            );
            let agent = AgentProcess::start(
                dir.path(),
                &pki,
                AgentSpec {
                    name: "web-1",
                    ip: host_ip(91),
                    extra,
                },
            )
            .expect("agent starts");
            let specs = [HostSpec::of(&agent, &["app"])];
            let coordinator =
                Coordinator::write(&dir.path().join("ops"), &pki, "ops", &specs).expect("config");
            Host {
                _serial: serial,
                dir,
                repo,
                _agent: agent,
                coordinator,
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("web-1").join("www")
        }

        fn deploy(&self, rev: &str) -> std::process::Output {
            self.coordinator
                .run(&["deploy", "web-1", "--repo", &self.repo, "--ref", rev])
        }

        fn current_version(&self) -> String {
            std::fs::read_to_string(self.root().join("current/VERSION"))
                .expect("current/VERSION")
                .trim()
                .to_string()
        }
    }

    fn no_file_named(dir: &Path, name: &str) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .all(|e| {
                e.file_name() != name
                    && (!e.path().is_dir()
                        || e.path().is_symlink()
                        || no_file_named(&e.path(), name))
            })
    }

    /// Issue 13, hole 3: a release's own hooks ran as root for any ref of an
    /// allowed repository. Through the coordinator, an agent without
    /// `[deploy.release_hooks]` refuses such a release; nothing runs or switches.
    #[test]
    fn a_release_with_hooks_is_refused_by_an_agent_that_does_not_run_them() {
        let host = Host::new("");
        let out = host.deploy("v1");
        assert!(out.status.success(), "{}", output_text(&out));

        let out = host.deploy(SHELLY_TAG);
        assert!(!out.status.success(), "{}", output_text(&out));
        let said = output_text(&out);
        assert!(said.contains("[deploy.release_hooks]"), "{said}");
        assert_eq!(host.current_version(), "v1");
        assert!(no_file_named(&host.root(), "uid.txt"), "a release hook ran");
    }

    /// Issue 13, holes 3 and 11: with `run_as`, a release's hook runs as that
    /// user, and a ref holding `$( ) ; | &` reaches it as data (quoted or not),
    /// never as shell code.
    #[test]
    fn release_hooks_run_as_the_configured_user_and_get_refs_as_data() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: only a root agent can run hooks as another user");
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .expect("user nobody");
        let host = Host::new("[deploy.release_hooks]\nrun_as = \"nobody\"\n");
        let out = host.deploy(SHELLY_TAG);
        assert!(out.status.success(), "{}", output_text(&out));
        assert_eq!(host.current_version(), "v2");
        let release = host.root().join("current");
        assert_eq!(
            std::fs::read_to_string(release.join("rev.txt")).expect("rev.txt"),
            SHELLY_TAG
        );
        assert_eq!(
            std::fs::read_to_string(release.join("uid.txt"))
                .expect("uid.txt")
                .trim(),
            nobody.uid.to_string()
        );
        assert!(
            no_file_named(host.dir.path(), "pwned"),
            "the ref ran as shell code"
        );
    }
}
