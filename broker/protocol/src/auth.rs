//! Authentication messages: the SASL handshake (api 11), SASL exchange
//! messages (api 12) and user administration (api 13).
//!
//! A client that authenticates sends `SaslHandshake{mechanism}` (answered
//! with the broker's mechanisms), then one `SaslAuthenticate` per message of
//! the mechanism (SCRAM-SHA-256: client-first, then client-final), each
//! answered with the server's next message. The SCRAM messages themselves
//! travel as opaque bytes bounded by [`SASL_BYTES_MAX`]; `tern-auth` parses
//! them.
//!
//! A user is created with its *stored credential* (salt, iterations,
//! StoredKey, ServerKey) which the client derives: **the password never
//! crosses the wire**.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::wire::{put_bytes, put_string, Reader};

/// Longest SASL message accepted on decode (a SCRAM message is far smaller;
/// `tern-auth` applies its own, tighter bound).
pub const SASL_BYTES_MAX: usize = 4096;
/// Longest salt or key in a [`UserCredential`] accepted on decode.
pub const CREDENTIAL_FIELD_BYTES_MAX: usize = 64;

/// A user's stored credential as carried on the wire (checked by the
/// broker with `tern_auth::StoredCredential::from_parts`).
#[derive(Clone, PartialEq, Eq)]
pub struct UserCredential {
    /// PBKDF2 salt.
    pub salt: Bytes,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// SHA-256(ClientKey).
    pub stored_key: Bytes,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Bytes,
}

impl std::fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A user administration request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRequest {
    /// Create the user, or replace its credential (a password change).
    Upsert {
        /// Username.
        name: String,
        /// Its credential, derived by the client.
        credential: UserCredential,
    },
    /// Delete the user (its open connections stay authenticated).
    Delete {
        /// Username.
        name: String,
    },
    /// List the usernames.
    List,
}

/// A user administration answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserResponse {
    /// The change is committed.
    Done,
    /// Every username, sorted.
    List(Vec<String>),
}

const OP_UPSERT: u8 = 0;
const OP_DELETE: u8 = 1;
const OP_LIST: u8 = 2;

const ANSWER_DONE: u8 = 0;
const ANSWER_LIST: u8 = 1;

impl UserRequest {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            UserRequest::Upsert { name, credential } => {
                out.put_u8(OP_UPSERT);
                put_string(out, name);
                put_bytes(out, &credential.salt);
                out.put_u32_le(credential.iterations);
                put_bytes(out, &credential.stored_key);
                put_bytes(out, &credential.server_key);
            }
            UserRequest::Delete { name } => {
                out.put_u8(OP_DELETE);
                put_string(out, name);
            }
            UserRequest::List => out.put_u8(OP_LIST),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<UserRequest, DecodeError> {
        Ok(match r.u8("user op")? {
            OP_UPSERT => UserRequest::Upsert {
                name: r.string("username")?,
                credential: UserCredential {
                    salt: r.bytes("salt", CREDENTIAL_FIELD_BYTES_MAX)?,
                    iterations: r.u32("iterations")?,
                    stored_key: r.bytes("stored_key", CREDENTIAL_FIELD_BYTES_MAX)?,
                    server_key: r.bytes("server_key", CREDENTIAL_FIELD_BYTES_MAX)?,
                },
            },
            OP_DELETE => UserRequest::Delete {
                name: r.string("username")?,
            },
            OP_LIST => UserRequest::List,
            other => {
                return Err(DecodeError::Invalid {
                    field: "user op",
                    detail: other.to_string(),
                })
            }
        })
    }
}

impl UserResponse {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            UserResponse::Done => out.put_u8(ANSWER_DONE),
            UserResponse::List(names) => {
                out.put_u8(ANSWER_LIST);
                out.put_u32_le(names.len() as u32);
                for n in names {
                    put_string(out, n);
                }
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<UserResponse, DecodeError> {
        Ok(match r.u8("user answer")? {
            ANSWER_DONE => UserResponse::Done,
            ANSWER_LIST => {
                let n = r.list_len("usernames", 2)?;
                let mut names = Vec::with_capacity(n);
                for _ in 0..n {
                    names.push(r.string("username")?);
                }
                UserResponse::List(names)
            }
            other => {
                return Err(DecodeError::Invalid {
                    field: "user answer",
                    detail: other.to_string(),
                })
            }
        })
    }
}
