//! A client connection's session: who is on the other end, as far as it
//! has been proven on this connection.
//!
//! Owns: the connection's principal (from its TLS client certificate, or
//! from a completed SCRAM-SHA-256 exchange: `crate::auth`) and its address. It must never hold a
//! principal that was not proven on this connection: a request never names
//! its own principal, every authorization decision reads it from here.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

/// Who is on the other end of one client connection.
#[derive(Debug)]
pub struct Session {
    peer: SocketAddr,
    principal: RwLock<Option<Arc<str>>>,
    /// For a principal proven by password: the stored key of the
    /// credential it proved (the session ends when that credential does).
    password_key: RwLock<Option<[u8; tern_auth::KEY_BYTES]>>,
}

impl Session {
    /// A session for a connection from `peer` that has proven nothing yet.
    pub fn new(peer: SocketAddr) -> Session {
        Session {
            peer,
            principal: RwLock::new(None),
            password_key: RwLock::new(None),
        }
    }

    /// The connection's remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The proven principal, if any (`None`: anonymous).
    pub fn principal(&self) -> Option<Arc<str>> {
        self.principal
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records the principal that this connection proved (a certificate's
    /// name, a completed SASL exchange).
    pub fn set_principal(&self, principal: Arc<str>) {
        *self
            .principal
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(principal);
    }

    /// Records a principal proven by password (SCRAM), with the stored key
    /// of the credential it proved.
    pub fn set_password_principal(&self, principal: Arc<str>, key: [u8; tern_auth::KEY_BYTES]) {
        self.set_principal(principal);
        *self
            .password_key
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(key);
    }

    /// The principal and credential key, if the principal was proven by
    /// password.
    pub fn password_proof(&self) -> Option<(Arc<str>, [u8; tern_auth::KEY_BYTES])> {
        let key = (*self
            .password_key
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        Some((self.principal()?, key))
    }
}
