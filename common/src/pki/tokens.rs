//! Join tokens: `handover ca token create|list|revoke`, and redeeming one when a
//! new host enrolls (`handover-agent join`, `handover enroll`).
//!
//! A token is `ID.SECRET` (kubeadm's bootstrap-token shape: 6 and 16 characters of
//! `[a-z0-9]`). The CA directory keeps only the ID and SHA-256 of the secret, in
//! `tokens.toml` (mode 0600), so a listing, a backup or a screen share of the CA
//! directory does not show a token that could still be typed in. The new host never
//! sends the secret: it proves it with an HMAC keyed by that hash over its own
//! public key ([`crate::join::proof`]), so the proof is worthless for any other key.
//!
//! Every redemption happens under a lock on `tokens.lock` and is saved before the
//! certificate is signed, so two coordinators racing with one single-use token give
//! one certificate, not two.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{PkiError, ca_files, io_err, write_private};
use crate::names::Role;

/// Characters of a token's ID and secret.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
/// The longest a token may live: a day. A token is for a host being launched now;
/// one that outlives the launch is only something to leak.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The most hosts one token may enroll.
pub const MAX_USES: u32 = 1000;

/// Why a token was refused, or the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `ID.SECRET`.
    #[error(
        "{0:?} is not a join token: expected ID.SECRET (6 and 16 characters of a-z, 0-9) as printed by `handover ca token create`"
    )]
    Malformed(String),
    /// No token with this ID (never created, or a guess).
    #[error(
        "join token {0} is unknown to this CA: create one with `handover ca token create` (see `handover ca token list`)"
    )]
    Unknown(String),
    /// The token was revoked.
    #[error("join token {0} was revoked: create a new one with `handover ca token create`")]
    Revoked(String),
    /// The token's lifetime is over.
    #[error(
        "join token {id} expired at {at}: create a new one with `handover ca token create --ttl ...`"
    )]
    Expired {
        /// The token's ID.
        id: String,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// Every use was spent.
    #[error(
        "join token {id} was already used ({uses} of {uses} uses): a token enrolls only as many hosts as --uses said; create a new one"
    )]
    UsedUp {
        /// The token's ID.
        id: String,
        /// How many uses it had.
        uses: u32,
    },
    /// The host's proof does not match the token's secret.
    #[error(
        "the host did not prove the secret of join token {0}: it was given a wrong or mistyped secret (nothing was issued)"
    )]
    WrongSecret(String),
    /// A bad `--ttl`, `--uses` or `--role`.
    #[error("{0}")]
    Invalid(String),
    /// The CA directory or the store could not be read or written.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// A token's public half, as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId(String);

impl TokenId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TokenId {
    type Error = TokenError;
    fn try_from(id: String) -> Result<Self, TokenError> {
        if well_formed(&id, ID_LEN) {
            Ok(TokenId(id))
        } else {
            Err(TokenError::Malformed(id))
        }
    }
}

impl std::str::FromStr for TokenId {
    type Err = TokenError;
    fn from_str(id: &str) -> Result<Self, TokenError> {
        TokenId::try_from(id.to_owned())
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> String {
        id.0
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn well_formed(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| ALPHABET.contains(&b))
}

/// A whole token, `ID.SECRET`, as the new host is given it. Debug hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The public half.
    pub id: TokenId,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}.<secret>)", self.id)
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(text: &str) -> Result<Self, TokenError> {
        let malformed =
            || TokenError::Malformed(text.chars().take(ID_LEN + 1).collect::<String>() + "...");
        let (id, secret) = text.trim().split_once('.').ok_or_else(malformed)?;
        if !well_formed(id, ID_LEN) || !well_formed(secret, SECRET_LEN) {
            return Err(malformed());
        }
        Ok(JoinToken {
            id: TokenId(id.to_owned()),
            secret: secret.to_owned(),
        })
    }
}

impl JoinToken {
    /// A new random token.
    pub fn generate() -> Result<Self, TokenError> {
        let random = |len: usize| -> Result<String, TokenError> {
            use ring::rand::SecureRandom;
            let mut bytes = vec![0u8; len];
            ring::rand::SystemRandom::new()
                .fill(&mut bytes)
                .map_err(|_| TokenError::Invalid("the system random generator failed".into()))?;
            Ok(bytes
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
                .collect())
        };
        // Rejection sampling is not worth its loop here: the bias of b % 36 over
        // 256 values is under 2 % per character and the secret has 82 bits.
        Ok(JoinToken {
            id: TokenId(random(ID_LEN)?),
            secret: random(SECRET_LEN)?,
        })
    }

    /// The whole token as the host must be given it.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The key both sides derive from the secret: SHA-256 of it. The store keeps
    /// only this; the host keys its proof with it.
    pub fn proof_key(&self) -> [u8; 32] {
        secret_hash(&self.secret)
    }
}

fn secret_hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// One token as the CA directory keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The public half.
    pub id: TokenId,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// The role of the certificates it enrolls.
    pub role: Role,
    /// Created (seconds since the epoch).
    pub created: u64,
    /// Expires (seconds since the epoch).
    pub expires: u64,
    /// How many hosts it may enroll.
    pub uses: u32,
    /// How many it has enrolled.
    pub used: u32,
    /// Revoked by `ca token revoke`.
    #[serde(default)]
    pub revoked: bool,
    /// What it was made for, when a coordinator made it for a launch (`rollout
    /// ID batch N`): a rollout that stopped part-way finds and revokes its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl StoredToken {
    /// The state a listing shows: usable, used up, expired or revoked.
    pub fn state(&self, now: SystemTime) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.used >= self.uses {
            "used"
        } else if secs(now) >= self.expires {
            "expired"
        } else {
            "usable"
        }
    }

    /// The expiry time, RFC 3339.
    pub fn expires_at(&self) -> String {
        rfc3339(self.expires)
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    #[serde(default, rename = "token")]
    tokens: Vec<StoredToken>,
}

/// The token store inside a CA directory.
pub fn tokens_file(dir: &Path) -> PathBuf {
    dir.join("tokens.toml")
}

/// Runs `change` on the store under an exclusive lock and saves what it returns.
fn with_store<T>(
    dir: &Path,
    change: impl FnOnce(&mut Store) -> Result<(T, bool), TokenError>,
) -> Result<T, TokenError> {
    let ca = ca_files(dir);
    if !ca.key.exists() {
        return Err(PkiError::Invalid(format!(
            "{} holds no CA (no ca.key): pass the directory of `handover ca init`",
            dir.display()
        ))
        .into());
    }
    let lock_path = dir.join("tokens.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    File::lock(&lock).map_err(io_err(&lock_path))?;
    let path = tokens_file(dir);
    let mut store = match fs::read_to_string(&path) {
        Ok(text) => toml::from_str::<Store>(&text).map_err(|e| {
            PkiError::Parse(format!("{}: {e} (restore it or remove it)", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store::default(),
        Err(e) => return Err(io_err(&path)(e).into()),
    };
    let (out, changed) = change(&mut store)?;
    if changed {
        let text = toml::to_string(&store)
            .map_err(|e| PkiError::Invalid(format!("encoding the token store: {e}")))?;
        write_private(&path, text.as_bytes())?;
    }
    Ok(out)
}

/// `handover ca token create`: a new token for `uses` hosts of `role`, valid for `ttl`.
pub fn create(
    dir: &Path,
    ttl: Duration,
    uses: u32,
    role: Role,
    now: SystemTime,
) -> Result<(JoinToken, StoredToken), TokenError> {
    create_noted(dir, ttl, uses, role, now, None)
}

/// [`create`], with a note saying what the token is for (kept with it, listed,
/// and matched by [`revoke_usable`]).
pub fn create_noted(
    dir: &Path,
    ttl: Duration,
    uses: u32,
    role: Role,
    now: SystemTime,
    note: Option<String>,
) -> Result<(JoinToken, StoredToken), TokenError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(TokenError::Invalid(format!(
            "--ttl {}: a join token may live from 1s to 24h",
            humantime::format_duration(ttl)
        )));
    }
    if uses == 0 || uses > MAX_USES {
        return Err(TokenError::Invalid(format!(
            "--uses {uses}: a join token enrolls 1 to {MAX_USES} hosts"
        )));
    }
    if role != Role::Agent {
        return Err(TokenError::Invalid(format!(
            "--role {role}: join tokens enroll agents only; issue coordinator certificates with `handover ca issue --role coordinator`"
        )));
    }
    with_store(dir, |store| {
        let token = loop {
            let token = JoinToken::generate()?;
            if store.tokens.iter().all(|t| t.id != token.id) {
                break token;
            }
        };
        let stored = StoredToken {
            id: token.id.clone(),
            secret_sha256: hex(&token.proof_key()),
            role,
            created: secs(now),
            expires: secs(now) + ttl.as_secs().max(1),
            uses,
            used: 0,
            revoked: false,
            note,
        };
        store.tokens.push(stored.clone());
        Ok(((token, stored), true))
    })
}

/// `handover ca token list`: every token the CA directory knows.
pub fn list(dir: &Path) -> Result<Vec<StoredToken>, TokenError> {
    with_store(dir, |store| Ok((store.tokens.clone(), false)))
}

/// `handover ca token revoke ID`: the token enrolls nothing more.
pub fn revoke(dir: &Path, id: &TokenId) -> Result<StoredToken, TokenError> {
    with_store(dir, |store| {
        let token = store
            .tokens
            .iter_mut()
            .find(|t| &t.id == id)
            .ok_or_else(|| TokenError::Unknown(id.to_string()))?;
        token.revoked = true;
        Ok((token.clone(), true))
    })
}

/// Revokes every token `pick` chooses that could still enroll a host (not
/// revoked, not used up, not expired) and returns their IDs: a launch's tokens
/// that no host redeemed must not stay usable once the launch is over.
pub fn revoke_usable(
    dir: &Path,
    now: SystemTime,
    pick: impl Fn(&StoredToken) -> bool,
) -> Result<Vec<TokenId>, TokenError> {
    with_store(dir, |store| {
        let mut revoked = Vec::new();
        for token in store.tokens.iter_mut() {
            if token.state(now) == "usable" && pick(token) {
                token.revoked = true;
                revoked.push(token.id.clone());
            }
        }
        let changed = !revoked.is_empty();
        Ok((revoked, changed))
    })
}

/// Redeems one use of token `id` if `proves(key)` says the host proved its secret
/// (`key` = SHA-256 of the secret). Checked in this order, each refusal changing
/// nothing: known, not revoked, not expired, a use left, the proof. The use is
/// saved before this returns, so a certificate is signed only for a spent use.
pub fn redeem(
    dir: &Path,
    id: &TokenId,
    now: SystemTime,
    proves: impl FnOnce(&[u8; 32]) -> bool,
) -> Result<StoredToken, TokenError> {
    with_store(dir, |store| {
        let token = store
            .tokens
            .iter_mut()
            .find(|t| &t.id == id)
            .ok_or_else(|| TokenError::Unknown(id.to_string()))?;
        if token.revoked {
            return Err(TokenError::Revoked(id.to_string()));
        }
        if secs(now) >= token.expires {
            return Err(TokenError::Expired {
                id: id.to_string(),
                at: token.expires_at(),
            });
        }
        if token.used >= token.uses {
            return Err(TokenError::UsedUp {
                id: id.to_string(),
                uses: token.uses,
            });
        }
        let key = unhex32(&token.secret_sha256).ok_or_else(|| {
            PkiError::Parse(format!("token {id}: secret_sha256 is not 64 hex digits"))
        })?;
        if !proves(&key) {
            return Err(TokenError::WrongSecret(id.to_string()));
        }
        token.used += 1;
        Ok((token.clone(), true))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::init_ca(dir.path(), false, 30).expect("init");
        dir
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn tokens_parse_only_in_their_shape() {
        let token: JoinToken = "abc123.0123456789abcdef".parse().expect("valid");
        assert_eq!(token.id.as_str(), "abc123");
        assert_eq!(token.reveal(), "abc123.0123456789abcdef");
        for bad in [
            "",
            "abc123",
            "abc123.",
            "abc12.0123456789abcdef",
            "ABC123.0123456789abcdef",
            "abc123.0123456789abcde",
            "abc123.0123456789abcdef0",
            "abc123:0123456789abcdef",
            "abc-23.0123456789abcdef",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?} accepted");
        }
        let err = "abc123.WRONGsecret000000"
            .parse::<JoinToken>()
            .expect_err("bad");
        assert!(
            !err.to_string().contains("WRONG"),
            "the message must not repeat the secret: {err}"
        );
        assert!(!format!("{token:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn the_store_keeps_only_a_hash_of_the_secret() {
        let dir = ca();
        let (token, stored) =
            create(dir.path(), Duration::from_secs(60), 1, Role::Agent, at(T0)).expect("create");
        let text = fs::read_to_string(tokens_file(dir.path())).expect("read");
        let secret = token.reveal().split_once('.').expect("dot").1.to_owned();
        assert!(!text.contains(&secret), "secret stored in clear: {text}");
        assert!(text.contains(&stored.secret_sha256));
        assert!(text.contains(token.id.as_str()));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(tokens_file(dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_single_use_token_redeems_once() {
        let dir = ca();
        let (token, _) =
            create(dir.path(), Duration::from_secs(60), 1, Role::Agent, at(T0)).expect("create");
        let key = token.proof_key();
        redeem(dir.path(), &token.id, at(T0 + 1), |k| k == &key).expect("first use");
        let err = redeem(dir.path(), &token.id, at(T0 + 2), |k| k == &key).expect_err("second");
        assert!(matches!(err, TokenError::UsedUp { uses: 1, .. }), "{err}");
        assert!(err.to_string().contains("already used"), "{err}");
    }

    #[test]
    fn refusals_change_nothing() {
        let dir = ca();
        let (token, _) =
            create(dir.path(), Duration::from_secs(60), 2, Role::Agent, at(T0)).expect("create");
        let before = fs::read(tokens_file(dir.path())).expect("read");
        let err = redeem(dir.path(), &token.id, at(T0 + 1), |_| false).expect_err("wrong secret");
        assert!(matches!(err, TokenError::WrongSecret(_)), "{err}");
        let err = redeem(dir.path(), &token.id, at(T0 + 60), |_| true).expect_err("expired");
        assert!(matches!(err, TokenError::Expired { .. }), "{err}");
        let guessed = TokenId::try_from("zzzzzz".to_owned()).expect("id");
        let err = redeem(dir.path(), &guessed, at(T0 + 1), |_| true).expect_err("unknown");
        assert!(matches!(err, TokenError::Unknown(_)), "{err}");
        assert_eq!(before, fs::read(tokens_file(dir.path())).expect("read"));
        let listed = list(dir.path()).expect("list");
        assert_eq!(listed[0].used, 0);
        assert_eq!(listed[0].state(at(T0 + 1)), "usable");
        assert_eq!(listed[0].state(at(T0 + 60)), "expired");
    }

    #[test]
    fn a_revoked_token_is_refused() {
        let dir = ca();
        let (token, _) =
            create(dir.path(), Duration::from_secs(60), 1, Role::Agent, at(T0)).expect("create");
        revoke(dir.path(), &token.id).expect("revoke");
        let err = redeem(dir.path(), &token.id, at(T0 + 1), |_| true).expect_err("revoked");
        assert!(matches!(err, TokenError::Revoked(_)), "{err}");
        assert_eq!(list(dir.path()).expect("list")[0].state(at(T0)), "revoked");
    }

    #[test]
    fn revoke_usable_revokes_only_the_picked_tokens_that_could_still_enroll() {
        let dir = ca();
        let noted = |n: &str| Some(n.to_owned());
        let ttl = Duration::from_secs(60);
        let (a, _) =
            create_noted(dir.path(), ttl, 1, Role::Agent, at(T0), noted("r1 batch 1")).expect("a");
        let (b, _) =
            create_noted(dir.path(), ttl, 1, Role::Agent, at(T0), noted("r1 batch 1")).expect("b");
        let (other, _) = create(dir.path(), ttl, 1, Role::Agent, at(T0)).expect("other");
        let key = a.proof_key();
        redeem(dir.path(), &a.id, at(T0 + 1), |k| k == &key).expect("a used");
        let revoked = revoke_usable(dir.path(), at(T0 + 2), |t| {
            t.note.as_deref() == Some("r1 batch 1")
        })
        .expect("revoke");
        assert_eq!(revoked.len(), 1, "only the unused one of the batch");
        assert_eq!(revoked[0], b.id);
        let states: Vec<(TokenId, &str)> = list(dir.path())
            .expect("list")
            .iter()
            .map(|t| (t.id.clone(), t.state(at(T0 + 2))))
            .collect();
        assert_eq!(
            states,
            [(a.id, "used"), (b.id, "revoked"), (other.id, "usable")]
        );
        let none = revoke_usable(dir.path(), at(T0 + 3), |_| false).expect("nothing");
        assert!(none.is_empty());
    }

    #[test]
    fn create_refuses_bad_bounds_and_roles() {
        let dir = ca();
        for (ttl, uses, role) in [
            (0, 1, Role::Agent),
            (MAX_TTL.as_secs() + 1, 1, Role::Agent),
            (60, 0, Role::Agent),
            (60, MAX_USES + 1, Role::Agent),
            (60, 1, Role::Coordinator),
        ] {
            create(dir.path(), Duration::from_secs(ttl), uses, role, at(T0))
                .expect_err("must refuse");
        }
        assert!(!tokens_file(dir.path()).exists());
        let empty = tempfile::tempdir().expect("tempdir");
        let err = create(
            empty.path(),
            Duration::from_secs(60),
            1,
            Role::Agent,
            at(T0),
        )
        .expect_err("no CA");
        assert!(err.to_string().contains("ca init"), "{err}");
    }
}
