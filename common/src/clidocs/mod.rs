//! Shell completions and man pages, generated from a binary's own clap definition.
//!
//! Both binaries answer `BIN generate completions SHELL` and `BIN generate man DIR`
//! so the packages are built from the binary that ships in them: a subcommand or
//! option a feature adds appears in the next package's completions and man pages
//! without anyone editing a hand-written file. `scripts/package.sh` calls them.
//!
//! Besides one section-1 page per command, `generate man` writes the section-5
//! pages of the files the binary reads ([`FilePage`]: `agent.toml(5)`,
//! `handover.toml(5)`, `handover-plan(5)`), made from the README's config reference.
//!
//! `generate` is looked for by [`intercept`] before the binary's own parser runs,
//! rather than being a hidden variant of it: clap_complete writes hidden
//! subcommands into the completion scripts, and a packaging tool has no business
//! in the operator's completions or man pages. Each binary's `--help` names it in
//! its closing text ([`after_help`]).

mod filepage;

pub use filepage::{FilePage, markdown_section, render as render_file_page};

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// The word that selects the packaging helpers, as the first argument.
pub const GENERATE: &str = "generate";

/// `BIN generate ...`
#[derive(Debug, Clone, Parser)]
#[command(about = "Packaging: shell completions and man pages for this binary")]
pub struct GenerateCli {
    /// What to generate.
    #[command(subcommand)]
    pub what: GenerateCommand,
}

/// What `generate` writes.
#[derive(Debug, Clone, Subcommand)]
pub enum GenerateCommand {
    /// Print the completion script for SHELL on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
    /// Write the man pages into the tree DIR: DIR/man1/ one per command (e.g.
    /// `handover-ca-issue.1`), DIR/man5/ one per file format (e.g. `handover.toml.5`).
    Man {
        /// The man tree, e.g. /usr/local/share/man (created if missing).
        dir: PathBuf,
    },
}

/// Errors from writing the generated files.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The man page directory could not be created or written.
    #[error("cannot write man pages into {dir}: {source}")]
    Man {
        /// The directory asked for.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// Standard output was closed or failed.
    #[error("cannot write the completion script: {0}")]
    Completions(std::io::Error),
}

/// Runs `generate` if it is the first argument, for the binary whose parser is
/// `C`; `None` means "not ours, parse as usual". Call it first thing in `main`.
pub fn intercept<C: CommandFactory>(pages: &[FilePage]) -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let _bin = args.next()?;
    if args.next()? != GENERATE {
        return None;
    }
    let cmd = C::command();
    let name = cmd.get_name().to_string();
    let argv0 = OsString::from(format!("{name} {GENERATE}"));
    let parsed = GenerateCli::parse_from(std::iter::once(argv0).chain(args));
    Some(match run(parsed.what, cmd, pages) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    })
}

/// The closing text of a binary's `--help`: where the packaging helpers are.
pub fn after_help(bin: &str) -> String {
    format!(
        "Packaging: `{bin} {GENERATE} completions SHELL` prints a completion script (bash, zsh, fish, \
         elvish, powershell); `{bin} {GENERATE} man DIR` writes the man pages into the man tree DIR."
    )
}

/// Runs a `generate` command for `cmd`, the binary's full clap command, and the
/// file-format `pages` of that binary.
pub fn run(
    command: GenerateCommand,
    cmd: clap::Command,
    pages: &[FilePage],
) -> Result<(), GenerateError> {
    match command {
        GenerateCommand::Completions { shell } => {
            let mut out = Vec::new();
            write_completions(shell, cmd, &mut out);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&out)
                .and_then(|()| stdout.flush())
                .map_err(GenerateError::Completions)
        }
        GenerateCommand::Man { dir } => {
            let version = format!(
                "{} {}",
                cmd.get_name(),
                cmd.get_version().unwrap_or_default()
            );
            write_man_pages(cmd, &dir.join("man1"))
                .and_then(|()| write_file_pages(pages, &version, &dir.join("man5")))
                .map_err(|source| GenerateError::Man {
                    dir: dir.display().to_string(),
                    source,
                })
        }
    }
}

/// Writes the completion script of `cmd` for `shell` into `out`.
pub fn write_completions(shell: Shell, mut cmd: clap::Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes `NAME.5` for each of `pages` into `dir`; a page without a body (its
/// README section was not found) is an error naming where it was looked for.
pub fn write_file_pages(pages: &[FilePage], version: &str, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for page in pages {
        if page.markdown.trim().is_empty() {
            return Err(std::io::Error::other(format!(
                "no text for {}(5): {} was not found",
                page.name, page.source
            )));
        }
        std::fs::write(
            dir.join(format!("{}.5", page.name)),
            filepage::render(page, version),
        )?;
    }
    Ok(())
}

/// Writes `NAME.1` and one `NAME-SUB[-SUB].1` per visible subcommand into `dir`.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a binary's parser, with a subcommand and a nested one.
    #[derive(Parser)]
    #[command(name = "demo", version, about = "Demo tool")]
    struct Demo {
        #[command(subcommand)]
        command: DemoCommand,
    }

    #[derive(Subcommand)]
    enum DemoCommand {
        /// Drain a host.
        Drain {
            /// The host.
            host: String,
        },
        /// Manage the CA.
        #[command(subcommand)]
        Ca(DemoCa),
    }

    #[derive(Subcommand)]
    enum DemoCa {
        /// Issue a certificate.
        Issue,
    }

    #[test]
    fn every_shell_completes_the_subcommands_of_the_definition() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completions(shell, Demo::command(), &mut out);
            let text = String::from_utf8(out).expect("completion scripts are UTF-8");
            assert!(text.contains("drain"), "{shell}: no `drain` in\n{text}");
            assert!(text.contains("issue"), "{shell}: no `issue` in\n{text}");
            assert!(
                !text.contains(GENERATE),
                "{shell}: `generate` leaked into\n{text}"
            );
        }
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_man_pages(Demo::command(), dir.path()).expect("write man pages");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["demo-ca-issue.1", "demo-ca.1", "demo-drain.1", "demo.1"]
        );
        let page = std::fs::read_to_string(dir.path().join("demo-drain.1")).expect("read page");
        assert!(page.contains("Drain a host"), "{page}");
    }

    #[test]
    fn man_writes_a_tree_with_command_pages_and_file_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = FilePage {
            name: "demo.toml",
            about: "the demo's config",
            source: "README.md, ### Demo",
            markdown:
                "| key | meaning | default |\n|---|---|---|\n| `name` | a name | required |\n"
                    .to_string(),
            see_also: &["demo(1)"],
        };
        run(
            GenerateCommand::Man {
                dir: dir.path().to_path_buf(),
            },
            Demo::command(),
            std::slice::from_ref(&page),
        )
        .expect("generate man");
        assert!(dir.path().join("man1/demo-drain.1").is_file());
        let text = std::fs::read_to_string(dir.path().join("man5/demo.toml.5")).expect("page");
        assert!(text.contains("\\fBname\\fR"), "{text}");

        let missing = FilePage {
            markdown: String::new(),
            ..page
        };
        let err = run(
            GenerateCommand::Man {
                dir: dir.path().join("again"),
            },
            Demo::command(),
            &[missing],
        )
        .expect_err("a page without text");
        assert!(err.to_string().contains("### Demo"), "{err}");
    }

    #[test]
    fn a_man_dir_that_cannot_be_made_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").expect("write");
        let err = run(
            GenerateCommand::Man {
                dir: file.join("man"),
            },
            Demo::command(),
            &[],
        )
        .expect_err("a path under a file cannot be a directory");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
