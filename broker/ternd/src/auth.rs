//! Client authentication on the broker: the SASL exchange of one
//! connection (SCRAM-SHA-256, messages parsed by `tern-auth`), the slowdown
//! of sources that keep failing, and the one check that guards user
//! administration.
//!
//! Owns: each connection's [`SaslState`] (handshake → client-first →
//! client-final → done; one exchange per connection), the per-IP record of
//! recent failures ([`FailureTracker`], bounded by
//! [`AUTH_FAILURE_SOURCES_MAX`]), the decoy secret that makes an unknown
//! user look like a wrong password, and the `tern::security` events.
//!
//! **It must never** set a principal that the exchange did not prove, tell
//! an unknown user from a wrong password in what it answers (message or
//! timing: an unknown user runs the exchange against a decoy credential
//! derived from a per-broker secret), or hold a failed connection open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_auth::{ClientFirst, ServerExchange, StoredCredential, SCRAM_SHA_256};
use tern_protocol::{ErrorCode, Request, Response};
use tracing::{info, warn};

use crate::broker::{Broker, Failure};
use crate::session::Session;

/// Sources (IP addresses) whose recent failures are remembered; past it the
/// one that failed longest ago is forgotten.
pub const AUTH_FAILURE_SOURCES_MAX: usize = 10_000;
/// Failures older than this no longer slow a source down.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Delay before answering a source's first recent failure; it doubles with
/// each further one, up to [`AUTH_FAILURE_DELAY_MAX`].
pub const AUTH_FAILURE_DELAY_MIN: Duration = Duration::from_millis(50);
/// Longest delay before a failure is answered: under `tern-client`'s
/// default connect timeout (5 s), so a client hears the refusal (not
/// retried) instead of timing out (retried).
pub const AUTH_FAILURE_DELAY_MAX: Duration = Duration::from_secs(3);

/// Where one connection's exchange stands.
#[derive(Debug, Default)]
pub enum SaslState {
    /// Nothing yet.
    #[default]
    Start,
    /// `SaslHandshake` chose SCRAM-SHA-256; the client-first message is next.
    Handshaken,
    /// The server-first message went out; the client-final message is next.
    AwaitingFinal {
        /// The exchange.
        exchange: Box<ServerExchange>,
        /// Whether the user exists (for the log only, never the answer).
        known: bool,
    },
    /// Authenticated; no other exchange on this connection.
    Done,
}

/// The outcome of one SASL request: the answer, and whether the connection
/// must close after sending it (a failed exchange).
pub struct SaslOutcome {
    /// The answer to send.
    pub result: Result<Response, Failure>,
    /// Close the connection once the answer is out.
    pub close: bool,
}

/// Recent failures per source address, bounded.
#[derive(Debug, Default)]
pub struct FailureTracker {
    sources: HashMap<IpAddr, (u32, Instant)>,
}

impl FailureTracker {
    /// Records a failure from `ip` at `now`; returns how long to wait before
    /// answering it.
    pub fn record(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if !self.sources.contains_key(&ip) && self.sources.len() >= AUTH_FAILURE_SOURCES_MAX {
            self.sources
                .retain(|_, (_, last)| now.duration_since(*last) < AUTH_FAILURE_WINDOW);
            if self.sources.len() >= AUTH_FAILURE_SOURCES_MAX {
                let oldest = self
                    .sources
                    .iter()
                    .min_by_key(|(_, (_, last))| *last)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.sources.remove(&oldest);
                }
            }
        }
        let entry = self.sources.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= AUTH_FAILURE_WINDOW {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        AUTH_FAILURE_DELAY_MIN
            .saturating_mul(1 << doublings)
            .min(AUTH_FAILURE_DELAY_MAX)
    }

    /// Sources remembered.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// The broker's authentication state shared by all connections.
pub struct Authenticator {
    decoy_secret: [u8; tern_auth::KEY_BYTES],
    failures: Mutex<FailureTracker>,
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator {
            decoy_secret: tern_auth::random_secret(),
            failures: Mutex::new(FailureTracker::default()),
        }
    }
}

/// What the client is told for every failed proof, whatever the cause.
const FAILED: &str = "authentication failed: unknown user or wrong password";

impl Broker {
    /// Carries one `SaslHandshake` or `SaslAuthenticate` request of a
    /// connection through its exchange. Requests of one connection must be
    /// handed over in order, one at a time (the server awaits each).
    pub async fn sasl_step(
        &self,
        session: &Session,
        state: &mut SaslState,
        request: Request,
    ) -> SaslOutcome {
        let ok = |response| SaslOutcome {
            result: Ok(response),
            close: false,
        };
        match (std::mem::take(state), request) {
            (SaslState::Done, _) => {
                *state = SaslState::Done;
                SaslOutcome {
                    result: Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        "this connection is already authenticated; open a new one to authenticate again",
                    )),
                    close: false,
                }
            }
            (SaslState::Start, Request::SaslHandshake { mechanism }) => {
                if let Some(principal) = session.principal() {
                    *state = SaslState::Done;
                    return SaslOutcome {
                        result: Err(Failure::new(
                            ErrorCode::InvalidRequest,
                            format!("this connection is already authenticated as {principal:?} (TLS client certificate)"),
                        )),
                        close: false,
                    };
                }
                if mechanism != SCRAM_SHA_256 {
                    return SaslOutcome {
                        result: Err(Failure::new(
                            ErrorCode::InvalidRequest,
                            format!(
                                "SASL mechanism {mechanism:?} is not supported; this broker offers {SCRAM_SHA_256}"
                            ),
                        )),
                        close: false,
                    };
                }
                *state = SaslState::Handshaken;
                ok(Response::SaslHandshake {
                    mechanisms: vec![SCRAM_SHA_256.to_owned()],
                })
            }
            (SaslState::Handshaken, Request::SaslAuthenticate { auth_bytes }) => {
                let first = match ClientFirst::parse(&auth_bytes) {
                    Ok(first) => first,
                    Err(e) => {
                        return self
                            .fail(session, None, &e.to_string(), e.to_string())
                            .await
                    }
                };
                let users = self.raft().users();
                // The decoy is derived for every exchange, so a known and an
                // unknown user cost the same work.
                let decoy = StoredCredential::decoy(&self.auth().decoy_secret, first.username());
                let (credential, known) = match users.get(first.username()) {
                    Some(c) => (c.clone(), true),
                    None => (decoy, false),
                };
                let (exchange, server_first) = ServerExchange::start(first, credential);
                *state = SaslState::AwaitingFinal {
                    exchange: Box::new(exchange),
                    known,
                };
                ok(Response::SaslAuthenticate {
                    auth_bytes: Bytes::from(server_first),
                })
            }
            (
                SaslState::AwaitingFinal { exchange, known },
                Request::SaslAuthenticate { auth_bytes },
            ) => {
                let claimed = exchange.username().to_owned();
                let key = *exchange.stored_key();
                match exchange.finish(&auth_bytes) {
                    Ok((user, server_final)) => {
                        info!(target: "tern::security", principal = %user, peer = %session.peer(), mechanism = SCRAM_SHA_256, "client authenticated");
                        session.set_password_principal(user.into(), key);
                        *state = SaslState::Done;
                        ok(Response::SaslAuthenticate {
                            auth_bytes: Bytes::from(server_final),
                        })
                    }
                    Err(tern_auth::ScramError::ProofMismatch) => {
                        let reason = if known {
                            "wrong password"
                        } else {
                            "unknown user"
                        };
                        self.fail(session, Some(&claimed), reason, FAILED.to_owned())
                            .await
                    }
                    Err(e) => {
                        self.fail(session, Some(&claimed), &e.to_string(), e.to_string())
                            .await
                    }
                }
            }
            (_, Request::SaslHandshake { .. }) => {
                let reason = "a second SaslHandshake during an exchange";
                self.fail(session, None, reason, reason.to_owned()).await
            }
            (_, _) => {
                let reason = "SaslAuthenticate out of order (SaslHandshake first, then the client-first and client-final messages)";
                self.fail(session, None, reason, reason.to_owned()).await
            }
        }
    }

    /// Counts and logs a failure, waits the source's delay, and answers
    /// `AuthenticationFailed` with the connection to be closed.
    async fn fail(
        &self,
        session: &Session,
        claimed: Option<&str>,
        reason: &str,
        message: String,
    ) -> SaslOutcome {
        self.metrics()
            .auth_failures
            .with_label_values(&[SCRAM_SHA_256])
            .inc();
        let delay = self
            .auth()
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(session.peer().ip(), Instant::now());
        warn!(
            target: "tern::security",
            principal = claimed.unwrap_or("-"),
            peer = %session.peer(),
            mechanism = SCRAM_SHA_256,
            reason,
            delay_ms = delay.as_millis() as u64,
            "client authentication failed; closing the connection"
        );
        tokio::time::sleep(delay).await;
        SaslOutcome {
            result: Err(Failure::new(ErrorCode::AuthenticationFailed, message)),
            close: true,
        }
    }

    /// Whether `session`'s principal still holds: one proven by password
    /// lasts only while its user exists with the credential it proved, so
    /// removing a user or changing its password ends its open connections
    /// at their next request (the caller answers this refusal and closes).
    pub fn revalidate(&self, session: &Session) -> Result<(), Failure> {
        let Some((user, key)) = session.password_proof() else {
            return Ok(());
        };
        if self
            .raft()
            .users()
            .get(&*user)
            .is_some_and(|c| *c.stored_key() == key)
        {
            return Ok(());
        }
        warn!(
            target: "tern::security",
            principal = %user,
            peer = %session.peer(),
            "closing a connection: its user was removed or its password changed since it authenticated"
        );
        Err(Failure::new(
            ErrorCode::AuthenticationFailed,
            format!(
                "user {user:?} was removed or its password changed since this connection \
                 authenticated; authenticate again"
            ),
        ))
    }

    /// Whether `session` may administer users. With authorization on, the
    /// ACL check every request passes first has decided it already (`alter`
    /// / `describe` on the cluster; super-users always pass). Without it:
    /// with `auth required`, only a super-user (`[auth] super_users`);
    /// otherwise anyone, like the other admin operations.
    pub fn require_cluster_admin(&self, session: &Session) -> Result<(), Failure> {
        if self.config().authorization || !self.config().auth_required {
            return Ok(());
        }
        match session.principal() {
            Some(p) if self.config().super_users.iter().any(|s| **s == *p) => Ok(()),
            Some(p) => Err(Failure::new(
                ErrorCode::AuthenticationRequired,
                format!("{p:?} is not a super-user (super_users); user administration needs one"),
            )),
            None => Err(Failure::new(
                ErrorCode::AuthenticationRequired,
                "user administration needs an authenticated super-user",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_with_recent_failures_and_resets_after_the_window() {
        let mut t = FailureTracker::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..10).map(|_| t.record(ip, now)).collect();
        assert_eq!(delays[0], AUTH_FAILURE_DELAY_MIN);
        assert_eq!(delays[1], AUTH_FAILURE_DELAY_MIN * 2);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[9], AUTH_FAILURE_DELAY_MAX);
        let later = now + AUTH_FAILURE_WINDOW;
        assert_eq!(t.record(ip, later), AUTH_FAILURE_DELAY_MIN);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.record(other, later), AUTH_FAILURE_DELAY_MIN);
    }

    #[test]
    fn the_tracker_never_holds_more_than_its_limit() {
        let mut t = FailureTracker::default();
        let now = Instant::now();
        for i in 0..(AUTH_FAILURE_SOURCES_MAX as u32 + 500) {
            let ip = IpAddr::from(i.to_be_bytes());
            t.record(ip, now + Duration::from_millis(i as u64));
        }
        assert_eq!(t.len(), AUTH_FAILURE_SOURCES_MAX);
    }
}
