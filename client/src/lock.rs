//! Distributed locks: named leases with fencing tokens, kept in the
//! cluster's replicated coordination state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use std::time::Duration;
//! use tern_client::{Client, LockClient};
//! let client = Client::connect("127.0.0.1:4650").await?;
//! let locks = LockClient::new(client);
//! let guard = locks
//!     .acquire("nightly-report", Duration::from_secs(10), Some(Duration::from_secs(30)))
//!     .await?;
//! // Pass the token to every write to the protected resource: a resource
//! // that refuses tokens smaller than the largest it has seen is safe even
//! // if this process pauses past its lease.
//! println!("holding with fencing token {}", guard.token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! A guard renews its lease in the background (every third of the lease)
//! while it lives. If renewal fails for a whole lease (the client was cut
//! off), or the cluster says the lease ended, the guard reports the lock
//! lost ([`LockGuard::lost`]); the holder must stop using the resource.
//!
//! # Cancel safety
//!
//! Dropping an acquisition before it returns leaves the lock's queue (or
//! frees a grant that arrived too late) in the background, so an abandoned
//! waiter never ends up holding the lock for a lease. Dropping a guard
//! releases the lock in the background.

use std::time::{Duration, Instant};

use tern_protocol::coord::{LockInfo, LockMode, LockRequest, LockResponse};
use tern_protocol::{ErrorCode, Request, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{random_secret, random_u64, Client};
use crate::error::ClientError;
use crate::retry::RetryPolicy;

/// Longest wait the broker accepts in one request; longer waits re-queue.
const WAIT_PER_REQUEST_MAX: Duration = Duration::from_secs(300);

/// How to acquire a lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Lease length: the lock is freed this long after the last renewal.
    pub lease: Duration,
    /// Longest wait for the lock; `None` waits as long as it takes.
    pub wait: Option<Duration>,
    /// Exclusive, or shared (with a read-write lock plugin).
    pub mode: LockMode,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lease: Duration::from_secs(10),
            wait: None,
            mode: LockMode::Exclusive,
        }
    }
}

/// Acquires and lists locks.
#[derive(Clone)]
pub struct LockClient {
    client: Client,
}

impl LockClient {
    /// Locks over `client`'s brokers.
    pub fn new(client: Client) -> LockClient {
        LockClient { client }
    }

    /// Acquires `name` exclusively with `lease`, waiting up to `wait`
    /// (`None`: forever). Fails with [`ErrorCode::LockWaitTimeout`] when
    /// the wait ends first.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped acquisition leaves the queue in the
    /// background (and releases a grant that arrived as it was dropped).
    pub async fn acquire(
        &self,
        name: &str,
        lease: Duration,
        wait: Option<Duration>,
    ) -> Result<LockGuard, ClientError> {
        self.acquire_with(
            name,
            LockOptions {
                lease,
                wait,
                mode: LockMode::Exclusive,
            },
        )
        .await
    }

    /// Acquires `name` as `options` say.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`LockClient::acquire`].
    #[tracing::instrument(level = "debug", skip(self, options), fields(lease = ?options.lease))]
    pub async fn acquire_with(
        &self,
        name: &str,
        options: LockOptions,
    ) -> Result<LockGuard, ClientError> {
        let lease_ms = options.lease.as_millis() as u64;
        if lease_ms == 0 {
            return Err(ClientError::InvalidArgument(
                "lease must be positive".into(),
            ));
        }
        // One owner id for the whole acquisition: a retry after a lost
        // connection finds its place in the queue (or its grant).
        let owner = random_u64();
        // What proves this acquisition is ours; the owner id is public.
        let secret = random_secret();
        let deadline = options.wait.map(|w| Instant::now() + w);
        // If the caller drops this future while it waits (a timeout, a
        // select), leave the queue: otherwise the lock would later be
        // granted to nobody and stay taken for one lease.
        let mut abandoned = CancelOnDrop {
            client: Some(self.client.clone()),
            name: name.to_owned(),
            owner,
            secret,
        };
        let mut pauses = RetryPolicy::BACKGROUND.backoff();
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => WAIT_PER_REQUEST_MAX,
            };
            let wait = left.min(WAIT_PER_REQUEST_MAX);
            let request = Request::Lock(LockRequest::Acquire {
                name: name.to_owned(),
                owner,
                secret,
                mode: options.mode,
                lease_ms,
                wait_ms: wait.as_millis() as u64,
            });
            let sent = Instant::now();
            match self.client.coordinate(request, wait).await {
                Ok(Response::Lock(LockResponse::Granted {
                    token,
                    remaining_ms,
                    ..
                })) => {
                    let expires = sent + Duration::from_millis(remaining_ms.min(lease_ms));
                    abandoned.client = None;
                    return Ok(LockGuard::start(
                        self.client.clone(),
                        name.to_owned(),
                        (owner, secret),
                        token,
                        options.lease,
                        expires,
                    ));
                }
                Ok(other) => {
                    return Err(ClientError::Decode(format!(
                        "acquire answered with {other:?}"
                    )))
                }
                Err(e) if e.code() == Some(ErrorCode::LockWaitTimeout) => {
                    // The broker already left the queue for us.
                    let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
                    if out_of_time {
                        abandoned.client = None;
                        return Err(e);
                    }
                }
                Err(e) if e.is_retriable() => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(e); // `abandoned` leaves the queue
                    }
                    let pause = pauses.next_pause().unwrap_or_default();
                    let pause = match deadline {
                        Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
                        None => pause,
                    };
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every lock with a holder or waiter, as one broker knows them.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn list(&self) -> Result<Vec<LockInfo>, ClientError> {
        match self
            .client
            .coordinate(Request::Lock(LockRequest::List), Duration::ZERO)
            .await?
        {
            Response::Lock(LockResponse::List(locks)) => Ok(locks),
            other => Err(ClientError::Decode(format!("list answered with {other:?}"))),
        }
    }
}

/// Leaves a lock's queue (or frees a grant that arrived too late) in the
/// background when an acquisition ends without a guard, unless disarmed.
struct CancelOnDrop {
    client: Option<Client>,
    name: String,
    owner: u64,
    secret: u128,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let request = Request::Lock(LockRequest::Release {
                name: std::mem::take(&mut self.name),
                owner: self.owner,
                secret: self.secret,
            });
            runtime.spawn(async move {
                let _ = client.coordinate_retrying(request).await;
            });
        }
    }
}

/// A held lock. Renews its lease while it lives; dropping it releases the
/// lock in the background, [`LockGuard::release`] releases and waits.
pub struct LockGuard {
    client: Client,
    name: String,
    owner: u64,
    /// Proves the acquisition is this guard's (never shown).
    secret: u128,
    token: u64,
    lost: watch::Receiver<bool>,
    /// When the lease ends unless renewed (this client's conservative
    /// view: measured from when the request was sent).
    expires: watch::Receiver<Instant>,
    keepalive: JoinHandle<()>,
    released: bool,
}

impl LockGuard {
    fn start(
        client: Client,
        name: String,
        (owner, secret): (u64, u128),
        token: u64,
        lease: Duration,
        expires: Instant,
    ) -> LockGuard {
        let (lost_tx, lost) = watch::channel(false);
        let (expires_tx, expires_rx) = watch::channel(expires);
        let keepalive = tokio::spawn(keep_alive(
            client.clone(),
            name.clone(),
            (owner, secret),
            lease,
            expires_tx,
            lost_tx,
        ));
        LockGuard {
            client,
            name,
            owner,
            secret,
            token,
            lost,
            expires: expires_rx,
            keepalive,
            released: false,
        }
    }

    /// The fencing token of this grant: larger than every earlier grant's
    /// of the same lock.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This acquisition's owner id (as `tern lock list` shows it).
    pub fn owner(&self) -> u64 {
        self.owner
    }

    /// Whether the lease was lost (refused renewal), or may have ended:
    /// check before every use of the protected resource.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || Instant::now() >= *self.expires.borrow()
    }

    /// Resolves when the lease is lost.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing the lease without releasing: the lock is freed when
    /// the lease runs out, exactly as if this process had crashed (fault
    /// tests use it to model a paused or dead holder).
    pub fn abandon(mut self) {
        self.released = true;
        self.keepalive.abort();
    }

    /// Releases the lock and waits for the cluster to confirm.
    ///
    /// # Cancel safety
    /// Cancel safe: cancelled before the cluster confirmed, the guard's
    /// drop sends the release again in the background (a release is
    /// idempotent).
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.keepalive.abort();
        let request = Request::Lock(LockRequest::Release {
            name: self.name.clone(),
            owner: self.owner,
            secret: self.secret,
        });
        let released = self.client.coordinate_retrying(request).await;
        self.released = true;
        released.map(drop)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.keepalive.abort();
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let request = Request::Lock(LockRequest::Release {
                name: self.name.clone(),
                owner: self.owner,
                secret: self.secret,
            });
            runtime.spawn(async move {
                let _ = client.coordinate(request, Duration::ZERO).await;
            });
        }
    }
}

/// Renews the lease every third of it; reports it lost when the cluster
/// refuses or when no renewal succeeded before the lease would end.
async fn keep_alive(
    client: Client,
    name: String,
    (owner, secret): (u64, u128),
    lease: Duration,
    expires_tx: watch::Sender<Instant>,
    lost: watch::Sender<bool>,
) {
    let mut expires = *expires_tx.borrow();
    let period = lease / 3;
    let mut next = Instant::now() + period;
    // Failed renewals are retried well within the lease: pauses stay under
    // a tenth of it (a fifth with jitter).
    let pacing = RetryPolicy::BACKGROUND.capped(lease / 10);
    let mut pauses = pacing.backoff();
    loop {
        tokio::time::sleep_until(next.into()).await;
        if Instant::now() >= expires {
            tracing::warn!(lock = %name, "lease expired before it could be renewed");
            lost.send_replace(true);
            return;
        }
        let request = Request::Lock(LockRequest::KeepAlive {
            name: name.clone(),
            owner,
            secret,
        });
        let sent = Instant::now();
        match client.coordinate(request, Duration::ZERO).await {
            Ok(Response::Lock(LockResponse::Granted { remaining_ms, .. })) => {
                expires = sent + Duration::from_millis(remaining_ms).min(lease);
                expires_tx.send_replace(expires);
                next = sent + period;
                pauses = pacing.backoff();
            }
            Err(e) if e.code() == Some(ErrorCode::LockNotHeld) => {
                tracing::warn!(lock = %name, "the cluster ended the lease");
                lost.send_replace(true);
                return;
            }
            _ => next = Instant::now() + pauses.next_pause().unwrap_or(lease / 10),
        }
    }
}
