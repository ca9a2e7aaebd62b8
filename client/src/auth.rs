//! The client's side of authentication: SCRAM-SHA-256 on a freshly opened
//! connection, before it carries any other request, and the credential a
//! client derives when it creates a user (the password never leaves it).
//!
//! A failed exchange is [`ClientError::AuthenticationFailed`], which is not
//! retriable: retrying the same password cannot succeed, and a client that
//! retried would only feed the broker's per-source slowdown.

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tern_auth::{ClientExchange, SCRAM_SHA_256};
use tern_protocol::auth::UserCredential;
use tern_protocol::{ErrorCode, FrameCodec, Request, RequestFrame, Response, ResponseFrame};
use tokio_util::codec::Framed;

use crate::error::ClientError;

/// A username and password for SCRAM-SHA-256 (see
/// [`crate::ClientConfig::credentials`]). `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Username.
    pub username: String,
    password: String,
}

impl Credentials {
    /// Credentials of `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Derives the stored credential of `password` (fresh salt, default
/// iterations) for a user upsert: what the broker keeps instead of the
/// password.
pub fn derive_credential(password: &str) -> Result<UserCredential, ClientError> {
    let c = tern_auth::StoredCredential::generate(password, tern_auth::ITERATIONS_DEFAULT)
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
    Ok(UserCredential {
        salt: Bytes::copy_from_slice(c.salt()),
        iterations: c.iterations(),
        stored_key: Bytes::copy_from_slice(c.stored_key()),
        server_key: Bytes::copy_from_slice(c.server_key()),
    })
}

/// Runs the SCRAM-SHA-256 exchange on `stream`, which must carry nothing
/// else until this returns. The caller bounds it in time.
pub(crate) async fn authenticate<S>(
    stream: &mut S,
    addr: &str,
    credentials: &Credentials,
) -> Result<(), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let failed = |message: String| ClientError::AuthenticationFailed {
        username: credentials.username.clone(),
        message,
    };
    let mut framed = Framed::new(stream, FrameCodec::default());
    // The broker's refusal of a proof closes the connection with an error
    // code: report it as a failed authentication, never as a retriable one.
    let broker_failure = |e: ClientError| match e {
        ClientError::Broker {
            code: ErrorCode::AuthenticationFailed,
            message,
        } => failed(message),
        other => other,
    };
    match call(
        &mut framed,
        addr,
        1,
        Request::SaslHandshake {
            mechanism: SCRAM_SHA_256.to_owned(),
        },
    )
    .await
    .map_err(broker_failure)?
    {
        Response::SaslHandshake { .. } => {}
        _ => {
            return Err(ClientError::Decode(
                "SaslHandshake answered with another type".into(),
            ))
        }
    }
    let (exchange, first) = ClientExchange::start(&credentials.username, &credentials.password)
        .map_err(|e| failed(e.to_string()))?;
    let server_first = sasl_step(&mut framed, addr, 2, first)
        .await
        .map_err(broker_failure)?;
    let (awaiting, client_final) = exchange
        .respond(&server_first)
        .map_err(|e| failed(format!("the broker's first message: {e}")))?;
    let server_final = sasl_step(&mut framed, addr, 3, client_final)
        .await
        .map_err(broker_failure)?;
    awaiting
        .verify(&server_final)
        .map_err(|e| failed(format!("the broker's final message: {e}")))?;
    if !framed.read_buffer().is_empty() {
        return Err(ClientError::Decode(
            "the broker sent more than its answers during authentication".into(),
        ));
    }
    Ok(())
}

/// One SaslAuthenticate round trip: sends `message`, returns the broker's.
async fn sasl_step<S>(
    framed: &mut Framed<&mut S, FrameCodec>,
    addr: &str,
    correlation_id: u32,
    message: impl Into<Bytes>,
) -> Result<Bytes, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = Request::SaslAuthenticate {
        auth_bytes: message.into(),
    };
    match call(framed, addr, correlation_id, request).await? {
        Response::SaslAuthenticate { auth_bytes } => Ok(auth_bytes),
        _ => Err(ClientError::Decode(
            "SaslAuthenticate answered with another type".into(),
        )),
    }
}

/// Sends one request and reads its answer (nothing else is in flight).
async fn call<S>(
    framed: &mut Framed<&mut S, FrameCodec>,
    addr: &str,
    correlation_id: u32,
    request: Request,
) -> Result<Response, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    RequestFrame {
        correlation_id,
        request,
    }
    .encode(&mut buf);
    framed
        .send(buf.freeze())
        .await
        .map_err(|e| ClientError::connect(addr, e))?;
    let body = match framed.next().await {
        Some(Ok(body)) => body,
        Some(Err(e)) => return Err(ClientError::connect(addr, e)),
        None => {
            return Err(ClientError::ConnectionClosed {
                addr: addr.to_owned(),
            })
        }
    };
    let reply = ResponseFrame::decode(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    if reply.correlation_id != correlation_id {
        return Err(ClientError::Decode(format!(
            "answer to request {} during authentication, expected {correlation_id}",
            reply.correlation_id
        )));
    }
    reply.result.map_err(|e| ClientError::Broker {
        code: e.code,
        message: e.message,
    })
}
