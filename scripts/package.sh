#!/usr/bin/env bash
# Builds the system packages: handover-agent and handover, as .deb and .rpm.
#
#   scripts/package.sh                  release build, packages in target/packages/
#   scripts/package.sh --profile dev    package the debug build (quick; the tests use it)
#   scripts/package.sh --deb-only       skip the .rpm files
#
# Steps: build both binaries; copy them into a staging directory, TARGET/pkg-PROFILE/
# (pkg-release, pkg-debug), and strip the copies there: cargo's outputs are never
# touched, so packaging works while an agent runs from target/release; generate
# their shell completions (bash, zsh, fish) and man pages from the staged binaries'
# own clap definitions (`BIN generate ...`) into TARGET/pkg-PROFILE/packaging/;
# then cargo-deb and cargo-generate-rpm, whose metadata lives in agent/Cargo.toml
# and coordinator/Cargo.toml and whose other inputs live in packaging/. Missing
# tools are installed: cargo-deb and cargo-generate-rpm with `cargo install
# --locked`, rpm and dpkg-dev from apt.
#
# Prints the packages it built, one a line with its size ("  2.4 MB  PATH"), and
# exits 0; exits non-zero if any step or any expected package is missing.
set -euo pipefail

profile=release
want_rpm=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a name, e.g. release or dev}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        --deb-only) want_rpm=0; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "package.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
deb_flags=()
case "$profile" in
    dev|debug) profile=dev; build_dir=debug; deb_flags+=(--fast) ;;
    *) build_dir="$profile" ;;
esac
pkg_profile="pkg-$build_dir"   # the staging directory, TARGET/pkg-release/ etc.
out="$target/packages"
say() { echo "package.sh: $*" >&2; }

# --- tools -----------------------------------------------------------------
ensure_cargo_tool() { # $1 = cargo subcommand, $2 = crate
    if cargo "$1" --version >/dev/null 2>&1; then return; fi
    say "installing $2 (cargo install --locked $2) ..."
    local start=$SECONDS
    cargo install --locked "$2"
    say "installed $2 in $((SECONDS - start))s"
}
ensure_apt() { # $1 = command, $2 = Debian package
    if command -v "$1" >/dev/null 2>&1; then return; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "$1 is missing: install the $2 package"; exit 1
    fi
    say "installing $2 from apt ..."
    apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$2" >/dev/null; }
}

ensure_cargo_tool deb cargo-deb
ensure_apt dpkg-shlibdeps dpkg-dev   # cargo-deb's `depends = "$auto"`
if [ "$want_rpm" = 1 ]; then
    ensure_cargo_tool generate-rpm cargo-generate-rpm
    ensure_apt rpm rpm                   # to inspect the .rpm files (rpm -qlp)
fi

# --- build -----------------------------------------------------------------
say "building handover-agent and handover ($profile profile) ..."
cargo build --locked --profile "$profile" -p handover-agent -p handover
# Both packagers read TARGET/PKG_PROFILE/ (their `target/release/` in the metadata):
# a staging directory of copies, never cargo's own outputs. Stripping in place
# fails ("Text file busy") while an agent runs from target/release, and would
# change the binaries other tools and tests use.
bins="$target/$pkg_profile"
rm -rf "$bins"
mkdir -p "$bins"
cp "$target/$build_dir/handover-agent" "$target/$build_dir/handover" "$bins/"
# cargo-deb is told not to strip (--no-strip) and cargo-generate-rpm never does:
# both package these stripped copies.
strip --strip-unneeded "$bins/handover-agent" "$bins/handover"

# --- completions and man pages, from the binaries themselves ---------------
for bin in handover-agent handover; do
    stage="$bins/packaging/$bin"
    rm -rf "$stage"
    mkdir -p "$stage/man"
    "$bins/$bin" generate completions bash > "$stage/$bin.bash"
    "$bins/$bin" generate completions zsh > "$stage/_$bin"
    "$bins/$bin" generate completions fish > "$stage/$bin.fish"
    "$bins/$bin" generate man "$stage/man"   # man1/ commands, man5/ file formats
    gzip -9n "$stage"/man/man1/*.1 "$stage"/man/man5/*.5
done
say "completions and man pages staged in $bins/packaging/"

# --- packages --------------------------------------------------------------
mkdir -p "$out"
rm -f "$out"/handover-agent_*.deb "$out"/handover_*.deb "$out"/handover-agent-*.rpm "$out"/handover-[0-9]*.rpm
built=()
for pkg in handover-agent handover; do
    cargo deb --no-build --no-strip --profile "$pkg_profile" "${deb_flags[@]}" -p "$pkg" --output "$out/" >/dev/null
done
built+=("$out"/handover-agent_*.deb "$out"/handover_*.deb)
if [ "$want_rpm" = 1 ]; then
    for dir in agent coordinator; do
        cargo generate-rpm --profile "$pkg_profile" -p "$dir" --output "$out/" >/dev/null
    done
    built+=("$out"/handover-agent-*.rpm "$out"/handover-[0-9]*.rpm)
fi

# What was built, with its size, one per line on stdout (the path is the last field).
# A glob that matched nothing stays literal: that is a packager failure, not a listing.
status=0
for file in "${built[@]}"; do
    if [ ! -f "$file" ]; then
        say "expected a package matching $file, none was written"; status=1; continue
    fi
    bytes=$(stat -c %s "$file")
    printf '%6s MB  %s\n' "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1000000 }')" "$file"
done
exit "$status"
