//! The journal and the deploy lock on etcd, shared by every bastion whose config
//! names the same endpoints and prefix.
//!
//! Keys, all under the prefix P:
//! - `P/lock`: the deploy lock, one per fleet: a JSON [`Holder`] (rollout, owner,
//!   bastion host, pid, since), attached to an etcd lease that this process keeps
//!   alive while it runs. When the process dies the lease expires after [`TTL`]
//!   and the key goes with it.
//! - `P/journal/COLLECTION/KEY`: one record each (`rollouts/ID`,
//!   `steps/ID/PHASE/NNNNNN`: rollout id and step sequence).
//!
//! Every record is written in a transaction that first compares the lock's lease
//! with the one this process holds: a coordinator whose lock lapsed (partition,
//! etcd down, broken by `--break-lease`) cannot write another record, whatever it
//! believes; two coordinators can never both write.
//!
//! The client is async (tonic); the journal is called synchronously from the
//! engine, so the store runs its client on a small runtime of its own and waits
//! for each answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};

use super::{DeployLock, EtcdConfig, Holder, LockHeld, Store};

/// How long the deploy lock outlives its process's last keep-alive.
pub const TTL: Duration = Duration::from_secs(10);
/// How often the lock's lease is kept alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(2);
/// How long a request keeps being retried while etcd elects a leader or a
/// member restarts.
const PATIENCE: Duration = Duration::from_secs(8);
/// Each request's own limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// `--takeover` waits at most this long for the holder's lease to expire.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(60);

/// One connection per config in a process: the journal of the engine and the
/// lock taken by the command share it, so the journal knows which lease fences
/// its writes.
static SHARED: OnceLock<Mutex<HashMap<EtcdConfig, Arc<EtcdStore>>>> = OnceLock::new();

/// The records and the lock in one etcd cluster, under one prefix.
pub struct EtcdStore {
    config: EtcdConfig,
    /// Its own runtime (shut down in the background on drop: dropping it inside
    /// another runtime's task would panic), reached through `handle`.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: Client,
    /// The lease of the lock this process holds, if it does.
    fence: Arc<Mutex<Option<i64>>>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn endpoints(config: &EtcdConfig) -> String {
    config.endpoints.join(", ")
}

impl EtcdStore {
    /// The process's store for `config`, connected on first use.
    pub fn shared(config: &EtcdConfig) -> anyhow::Result<Arc<dyn Store>> {
        let shared = SHARED.get_or_init(Default::default);
        let mut map = shared
            .lock()
            .map_err(|_| anyhow::anyhow!("the etcd store's registry is poisoned"))?;
        if let Some(store) = map.get(config) {
            return Ok(store.clone());
        }
        let store = Arc::new(Self::connect(config)?);
        map.insert(config.clone(), store.clone());
        Ok(store)
    }

    /// A new connection to the cluster `config` names.
    pub fn connect(config: &EtcdConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .context("cannot start the etcd client's runtime")?;
        let options = options(config)?;
        let eps = config.endpoints.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = tx.send(Client::connect(eps, Some(options)).await);
        });
        let client = rx
            .recv()
            .context("the etcd client stopped")?
            .with_context(|| {
                format!(
                    "cannot reach etcd at {}: is it running? check [state] endpoints in the config",
                    endpoints(config)
                )
            })?;
        Ok(EtcdStore {
            config: config.clone(),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            client,
            fence: Arc::default(),
        })
    }

    /// Runs `f` on the client's runtime and waits for its answer.
    fn run<T, F>(&self, f: impl FnOnce(Client) -> F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        run_on(&self.handle, f(self.client.clone())).with_context(|| {
            format!(
                "etcd at {} did not answer or refused (check that it runs, [state] endpoints, and the role's permissions on {})",
                endpoints(&self.config),
                self.config.prefix
            )
        })
    }

    fn key(&self, collection: &str, key: &str) -> String {
        format!("{}/journal/{collection}/{key}", self.config.prefix)
    }

    fn lock_key(&self) -> String {
        format!("{}/lock", self.config.prefix)
    }

    /// The lock as it stands: its holder and lease, if anyone holds it.
    fn lock_state(&self) -> anyhow::Result<Option<(Holder, i64)>> {
        let key = self.lock_key();
        let found = self.run(move |c| async move {
            let resp = patiently(|| {
                let (mut c, key) = (c.clone(), key.clone());
                async move { c.get(key, None).await }
            })
            .await?;
            Ok(resp
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.lease())))
        })?;
        Ok(found.map(|(value, lease)| (holder_of(&value), lease)))
    }

    /// One attempt at the lock: `Ok(lease)`, or who holds it.
    fn attempt(&self, holder: &Holder) -> anyhow::Result<Result<i64, (Holder, i64)>> {
        let key = self.lock_key();
        let value = serde_json::to_vec(holder)?;
        self.run(move |mut c| async move {
            let lease = patiently(|| {
                let mut c = c.clone();
                async move { c.lease_grant(ttl_secs(), None).await }
            })
            .await
            .context("cannot create the deploy lock's lease in etcd")?
            .id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = patiently(|| {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await
            .context("cannot take the deploy lock in etcd")?;
            let held = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (holder_of(kv.value()), kv.lease())),
                _ => None,
            });
            // A retry after a success whose answer was lost finds our own lease.
            if resp.succeeded() || held.as_ref().is_some_and(|(_, l)| *l == lease) {
                return Ok(Ok(lease));
            }
            let _ = c.lease_revoke(lease).await;
            // Freed between the compare and the get: try again.
            Ok(held.map_or(Err((unknown_holder(), 0)), Err))
        })
    }

    /// Ends lease `lease` now, and with it the lock it carries.
    fn revoke(&self, lease: i64) -> anyhow::Result<()> {
        self.run(move |c| revoke(c, lease))
    }

    /// The lock, held by this process from now on: its lease kept alive by a
    /// task that reports if it lapses.
    fn hold(&self, holder: &Holder, lease: i64) -> anyhow::Result<DeployLock> {
        let mut fence = self
            .fence
            .lock()
            .map_err(|_| anyhow::anyhow!("the etcd fence is poisoned"))?;
        *fence = Some(lease);
        drop(fence);
        let (lost_tx, lost) = watch::channel(None);
        let (stop_tx, stop) = oneshot::channel();
        let why = format!(
            "its deploy lock in etcd ({} at {})",
            self.lock_key(),
            endpoints(&self.config)
        );
        let resume = holder.rollout.clone();
        self.handle.spawn(keep_alive(
            self.client.clone(),
            lease,
            self.fence.clone(),
            stop,
            move |reason| {
                let _ = lost_tx.send(Some(format!(
                    "{why} lapsed: {reason}; this coordinator touches nothing more (the agents' leases still guard the hosts); once etcd answers, `handover resume {resume}` from any bastion with this config carries on"
                )));
            },
        ));
        Ok(DeployLock::new(
            Box::new(Held {
                client: self.client.clone(),
                runtime: self.handle.clone(),
                fence: self.fence.clone(),
                lease,
                stop: Some(stop_tx),
            }),
            lost,
        ))
    }

    fn refusal(&self, holder: &Holder, held: &Holder) -> LockHeld {
        let hint = if held.rollout == holder.rollout {
            format!(
                "if that process is gone, its lock lapses within {}s: `handover resume --takeover {}` waits for that, `--break-lease` takes it now",
                TTL.as_secs(),
                held.rollout
            )
        } else {
            "another rollout of this fleet is under way: let it finish (`handover history` shows it), or pass --break-lease if its coordinator is gone".to_string()
        };
        LockHeld {
            holder: held.describe(),
            message: format!(
                "the deploy lock {} in etcd is held by {}: {hint}",
                self.lock_key(),
                held.describe()
            ),
        }
    }

    /// Takes the lock for `holder`, taking it over from a holder this bastion
    /// proves gone, or breaking it (`brk`).
    fn take(&self, holder: &Holder, brk: bool) -> anyhow::Result<Result<DeployLock, LockHeld>> {
        for _ in 0..5 {
            match self.attempt(holder)? {
                Ok(lease) => return Ok(Ok(self.hold(holder, lease)?)),
                Err((held, lease)) if lease != 0 && (brk || holder.proves_gone(&held)) => {
                    tracing::warn!(holder = %held.describe(), "taking over the etcd deploy lock");
                    self.revoke(lease)?;
                }
                Err((held, lease)) if lease != 0 => return Ok(Err(self.refusal(holder, &held))),
                Err(_) => {}
            }
        }
        bail!(
            "the deploy lock {} in etcd keeps changing hands: try again",
            self.lock_key()
        )
    }
}

fn ttl_secs() -> i64 {
    i64::try_from(TTL.as_secs()).unwrap_or(10)
}

fn holder_of(value: &[u8]) -> Holder {
    serde_json::from_slice(value).unwrap_or_else(|_| unknown_holder())
}

fn unknown_holder() -> Holder {
    Holder {
        rollout: "?".into(),
        owner: "an unreadable holder".into(),
        host: "?".into(),
        pid: 0,
        since_ms: 0,
    }
}

fn options(config: &EtcdConfig) -> anyhow::Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT)
        .with_require_leader(true);
    if let Some(ca) = &config.ca {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).with_context(|| {
                format!("cannot read [state] {what} {}: fix the path", p.display())
            })
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "ca")?));
        if let Some((cert, key)) = &config.identity {
            tls = tls.identity(Identity::from_pem(read(cert, "cert")?, read(key, "key")?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Runs `fut` on `runtime` (the etcd client's) and waits for its answer: the
/// caller may be a task of another runtime, which must not block on this one.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Handle,
    fut: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().context("the etcd client stopped")?
}

/// Ends `lease` now, and with it the lock it carries.
async fn revoke(mut client: Client, lease: i64) -> anyhow::Result<()> {
    match client.lease_revoke(lease).await {
        Ok(_) => Ok(()),
        // Already expired: just as good.
        Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
        Err(e) => Err(e).context("cannot revoke the lease in etcd"),
    }
}

/// Whether an error may go away by itself (no leader yet, a member restarting).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        // gRPC's status codes (fixed by its spec): CANCELLED 1 (tonic's own request
        // timeout, "Timeout expired", while the cluster elects a leader: seen when the
        // e2e test killed the leader), UNKNOWN 2, DEADLINE_EXCEEDED 4, UNAVAILABLE 14
        // (etcd's "no leader", "leader changed", a member down).
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Retries `op` on transient errors for up to [`PATIENCE`]. Every request this
/// store makes is idempotent (a put under the same fence, a get).
async fn patiently<T, F, Fut>(mut op: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match op().await {
            Err(e) if transient(&e) && tokio::time::Instant::now() < until => {
                tracing::debug!(error = %e, "etcd request failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => return other,
        }
    }
}

/// Keeps `lease` alive until `stop`; calls `lost` once if it lapses: etcd says it
/// expired, or it could not be renewed for as long as it lives.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    fence: Arc<Mutex<Option<i64>>>,
    mut stop: oneshot::Receiver<()>,
    lost: impl FnOnce(String),
) {
    let mut renewed = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(KEEP_ALIVE_EVERY) => {}
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, renew(&mut client, lease)).await {
            Ok(Ok(ttl)) if ttl > 0 => renewed = tokio::time::Instant::now(),
            Ok(Ok(_)) => {
                break "etcd says its lease expired (another coordinator may have broken it)"
                    .to_string();
            }
            Ok(Err(e)) if renewed.elapsed() >= TTL => {
                break format!("etcd did not renew it for {}s ({e})", TTL.as_secs());
            }
            Err(_) if renewed.elapsed() >= TTL => {
                break format!("etcd did not answer for {}s", TTL.as_secs());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "keeping the etcd deploy lock alive failed; retrying")
            }
            Err(_) => tracing::warn!("keeping the etcd deploy lock alive timed out; retrying"),
        }
    };
    if let Ok(mut f) = fence.lock()
        && *f == Some(lease)
    {
        *f = None;
    }
    lost(reason);
}

/// One keep-alive: the lease's remaining TTL (0: it is gone).
async fn renew(client: &mut Client, lease: i64) -> Result<i64, etcd_client::Error> {
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    Ok(stream.message().await?.map_or(0, |r| r.ttl()))
}

/// The lock as this process holds it: released (its lease revoked) on drop.
struct Held {
    client: Client,
    runtime: tokio::runtime::Handle,
    fence: Arc<Mutex<Option<i64>>>,
    lease: i64,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Ok(mut f) = self.fence.lock()
            && *f == Some(self.lease)
        {
            *f = None;
        }
        if let Err(e) = run_on(&self.runtime, revoke(self.client.clone(), self.lease)) {
            tracing::warn!(error = %e, "releasing the etcd deploy lock failed; it expires by itself");
        }
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!(
            "journal in etcd at {} under {}",
            endpoints(&self.config),
            self.config.prefix
        )
    }

    fn put(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let lease = self
            .fence
            .lock()
            .map_err(|_| anyhow::anyhow!("the etcd fence is poisoned"))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "this coordinator does not hold the deploy lock {}: it writes nothing",
                    self.lock_key()
                )
            })?;
        let (lock_key, key, value) = (self.lock_key(), self.key(collection, key), value.to_vec());
        let written = self.run(move |c| async move {
            let txn = Txn::new()
                .when([Compare::lease(lock_key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::put(key, value, None)])
                .or_else([TxnOp::get(lock_key, None)]);
            let resp = patiently(|| {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await?;
            Ok(resp.succeeded())
        })?;
        if !written {
            let now = match self.lock_state()? {
                Some((holder, _)) => format!("now held by {}", holder.describe()),
                None => "now free".into(),
            };
            bail!(
                "this coordinator no longer holds the deploy lock {} ({now}): it wrote nothing more",
                self.lock_key()
            );
        }
        Ok(())
    }

    fn create(&self, collection: &str, key: &str, value: &[u8]) -> anyhow::Result<bool> {
        let (key, value) = (self.key(collection, key), value.to_vec());
        self.run(move |c| async move {
            // create_revision 0: the key has never been written (or was deleted).
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            let resp = patiently(|| {
                let (mut c, txn) = (c.clone(), txn.clone());
                async move { c.txn(txn).await }
            })
            .await?;
            Ok(resp.succeeded())
        })
    }

    fn get(&self, collection: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let key = self.key(collection, key);
        self.run(move |c| async move {
            let resp = patiently(|| {
                let (mut c, key) = (c.clone(), key.clone());
                async move { c.get(key, None).await }
            })
            .await?;
            Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    fn scan(&self, collection: &str, prefix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let base = self.key(collection, "");
        let from = format!("{base}{prefix}");
        self.run(move |c| async move {
            let resp = patiently(|| {
                let (mut c, from) = (c.clone(), from.clone());
                async move { c.get(from, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
            resp.kvs()
                .iter()
                .map(|kv| {
                    let key = kv.key_str()?;
                    Ok((
                        key.strip_prefix(&base).unwrap_or(key).to_owned(),
                        kv.value().to_vec(),
                    ))
                })
                .collect()
        })
    }

    fn try_lock(&self, holder: &Holder) -> anyhow::Result<Result<DeployLock, LockHeld>> {
        self.take(holder, false)
    }

    fn wait_lock<'a>(&'a self, holder: &'a Holder) -> BoxFuture<'a, anyhow::Result<DeployLock>> {
        async move {
            let since = tokio::time::Instant::now();
            loop {
                match self.take(holder, false)? {
                    Ok(lock) => return Ok(lock),
                    Err(held) if since.elapsed() < TAKEOVER_LIMIT => {
                        tracing::debug!(holder = %held.holder, "waiting for the etcd deploy lock");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(held) => bail!(
                        "{held}; still kept alive after {}s, so its process runs: stop it first, or pass --break-lease",
                        TAKEOVER_LIMIT.as_secs()
                    ),
                }
            }
        }
        .boxed()
    }

    fn break_lock(&self, holder: &Holder) -> anyhow::Result<DeployLock> {
        self.take(holder, true)?.map_err(anyhow::Error::new)
    }
}

#[cfg(test)]
mod tests {
    //! Against a real single etcd (Debian's etcd-server), started on free
    //! loopback ports with a temporary data dir.

    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A single-member etcd, killed on drop. One at a time: etcd fsyncs every
    /// write, and several at once on a busy machine slow each past its timeouts.
    struct Etcd {
        child: Child,
        endpoint: String,
        _dir: tempfile::TempDir,
        _one: std::sync::MutexGuard<'static, ()>,
    }

    static ONE: Mutex<()> = Mutex::new(());

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port")
    }

    impl Etcd {
        fn start() -> Self {
            let one = ONE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dir = tempfile::tempdir().expect("tempdir");
            let (client, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd runs (scripts/install-deps.sh installs etcd-server)");
            let etcd = Etcd {
                child,
                endpoint,
                _dir: dir,
                _one: one,
            };
            // Ready once it answers a health check (it has a leader).
            for _ in 0..100 {
                let healthy = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &etcd.endpoint, "endpoint", "health"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if healthy {
                    return etcd;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            panic!("etcd did not listen on {}", etcd.endpoint);
        }

        fn config(&self) -> EtcdConfig {
            EtcdConfig {
                endpoints: vec![self.endpoint.clone()],
                prefix: "/handover/test".into(),
                ca: None,
                identity: None,
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn holder(rollout: &str, pid: u32) -> Holder {
        Holder {
            rollout: rollout.into(),
            owner: "ops@bastion-a".into(),
            host: "bastion-a".into(),
            pid,
            since_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_writes_and_a_broken_holder_writes_nothing_more() {
        let etcd = Etcd::start();
        let a = EtcdStore::connect(&etcd.config()).expect("a connects");
        let b = EtcdStore::connect(&etcd.config()).expect("b connects");
        // Without the lock nothing is written.
        let err = format!("{:#}", a.put("steps", "r-1/x", b"{}").expect_err("no lock"));
        assert!(err.contains("does not hold the deploy lock"), "{err}");

        let lock_a = a.try_lock(&holder("r-1", 1)).expect("asks").expect("free");
        a.put("rollouts", "r-1", b"{\"n\":1}").expect("a writes");
        // The second coordinator is refused, naming the first.
        let refused = b
            .try_lock(&holder("r-2", 2))
            .expect("asks")
            .err()
            .expect("held");
        assert!(
            refused.message.contains("rollout r-1") && refused.message.contains("pid 1"),
            "{refused}"
        );
        // Breaking it: the first's next append is refused by the transaction.
        let mut lost = lock_a.lost();
        let _lock_b = b.break_lock(&holder("r-1", 2)).expect("broken");
        let err = format!(
            "{:#}",
            a.put("rollouts", "r-1", b"{\"n\":2}").expect_err("fenced")
        );
        assert!(
            err.contains("no longer holds") && err.contains("pid 2"),
            "{err}"
        );
        b.put("rollouts", "r-1", b"{\"n\":3}").expect("b writes");
        assert_eq!(
            a.get("rollouts", "r-1").expect("read"),
            Some(b"{\"n\":3}".to_vec())
        );
        // And the first hears that its lock lapsed.
        let why = tokio::time::timeout(Duration::from_secs(30), lost.wait_for(Option::is_some))
            .await
            .expect("heard within the lease's life")
            .expect("channel")
            .clone()
            .expect("a reason");
        assert!(
            why.contains("lapsed") && why.contains("handover resume r-1"),
            "{why}"
        );
    }

    /// Inputs versions are appended from any bastion without the deploy lock; two
    /// writers of one number must not both succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_numbered_record_is_created_once_without_the_lock() {
        let etcd = Etcd::start();
        let a = EtcdStore::connect(&etcd.config()).expect("a connects");
        let b = EtcdStore::connect(&etcd.config()).expect("b connects");
        assert!(a.create("inputs", "000000000001", b"a").expect("a creates"));
        assert!(!b.create("inputs", "000000000001", b"b").expect("b asks"));
        assert_eq!(
            b.get("inputs", "000000000001").expect("reads").as_deref(),
            Some(&b"a"[..])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_scan_by_prefix_in_key_order_and_the_lock_frees_on_drop() {
        let etcd = Etcd::start();
        let a = EtcdStore::connect(&etcd.config()).expect("connects");
        let lock = a.try_lock(&holder("r-1", 1)).expect("asks").expect("free");
        for key in [
            "r-1/forward/000001",
            "r-10/forward/000000",
            "r-1/forward/000000",
        ] {
            a.put("steps", key, key.as_bytes()).expect("write");
        }
        let keys: Vec<String> = a
            .scan("steps", "r-1/")
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["r-1/forward/000000", "r-1/forward/000001"]);
        drop(lock);
        let b = EtcdStore::connect(&etcd.config()).expect("connects");
        assert!(
            b.try_lock(&holder("r-2", 2)).expect("asks").is_ok(),
            "released on drop"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn takeover_waits_for_a_live_holder_and_takes_a_dead_one_at_once() {
        let etcd = Etcd::start();
        let a = EtcdStore::connect(&etcd.config()).expect("connects");
        let b = EtcdStore::connect(&etcd.config()).expect("connects");
        // A holder of this bastion whose pid cannot run (above pid_max): gone.
        let mut dead = holder("r-1", 4_194_305);
        dead.host = crate::rollout::lease::this_host();
        let stale = a.try_lock(&dead).expect("asks").expect("free");
        let mut me = holder("r-1", std::process::id());
        me.host = dead.host.clone();
        let mine = b.try_lock(&me).expect("asks").expect("taken over at once");
        drop(mine);
        drop(stale);
        // A live holder is waited for, and its lock taken once it lets go.
        let live = a.try_lock(&holder("r-2", 1)).expect("asks").expect("free");
        let waiter = tokio::spawn(async move {
            let lock = b.wait_lock(&holder("r-2", 2)).await.map(drop);
            (b, lock)
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished(), "it waits while the holder lives");
        drop(live);
        let (_b, lock) = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("taken once free")
            .expect("task");
        lock.expect("the lock");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_gone_is_heard_as_a_lost_lock() {
        let mut etcd = Etcd::start();
        let a = EtcdStore::connect(&etcd.config()).expect("connects");
        let lock = a.try_lock(&holder("r-1", 1)).expect("asks").expect("free");
        let mut lost = lock.lost();
        let _ = etcd.child.kill();
        let _ = etcd.child.wait();
        let why = tokio::time::timeout(Duration::from_secs(60), lost.wait_for(Option::is_some))
            .await
            .expect("heard")
            .expect("channel")
            .clone()
            .expect("a reason");
        assert!(why.contains("did not"), "{why}");
        let err = format!(
            "{:#}",
            a.put("steps", "r-1/x", b"{}").expect_err("nothing written")
        );
        assert!(err.contains("does not hold"), "{err}");
    }
}
