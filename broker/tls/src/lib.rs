//! TLS for every Tern listener and connection, built on rustls (no
//! OpenSSL).
//!
//! This crate owns three things and nothing else:
//! - **Configurations from PEM files** ([`TlsFiles`] → [`TlsContext`]): the
//!   broker's certificate and key, and the cluster CA that every peer and
//!   every client certificate must chain to. A context builds the rustls
//!   server configurations of the three listeners (peer: client certificate
//!   required; client: optional, a certificate names a principal; metrics:
//!   none) and the client configuration a broker uses to dial its peers. It
//!   **reloads** them when asked (SIGHUP or a file change, see
//!   [`TlsContext::reload_if_changed`]); connections accepted afterwards use
//!   the new certificate, open ones keep theirs — rotation needs no restart.
//! - **Identities in certificates** ([`identity`]): a broker's certificate
//!   carries the DNS name `tern-node-<id>`, so a peer's node id is *proven*
//!   by the TLS handshake, never taken from what it says; a client
//!   certificate's principal is its subject common name.
//! - **Certificate generation** ([`generate`], rcgen) behind `tern cert`.
//!
//! **Architecture invariant: no sockets and no tasks here** — callers wrap
//! their own streams with the acceptors and connectors this crate hands out.

#![warn(missing_docs)]

pub mod generate;
pub mod identity;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::{self, ServerName};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;
pub use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

pub use identity::{node_id_of, node_server_name, principal_of, NODE_NAME_PREFIX};

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{path}: no PEM certificate in it")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no (or an unreadable) private key.
    #[error("{path}: no PEM private key in it: {reason}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, an unusable CA...).
    #[error("{what}: {reason}")]
    Rustls {
        /// What was being built.
        what: &'static str,
        /// rustls's message.
        reason: String,
    },
    /// Generating a certificate failed.
    #[error("generate a certificate: {0}")]
    Generate(String),
    /// An argument is unusable (e.g. a host name that is no DNS name).
    #[error("{0}")]
    Invalid(String),
}

/// The PEM files of one broker (or client) identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This party's certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) the other side must chain to.
    pub ca: PathBuf,
}

/// The crypto provider every configuration uses (ring: one provider
/// compiled, no C toolchain beyond what RocksDB already needs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoKey {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A root store holding every certificate of the CA file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Rustls {
            what: "add the CA certificate",
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn rustls_err(what: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |e| TlsError::Rustls {
        what,
        reason: e.to_string(),
    }
}

/// Whether a listener asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never (the metrics port).
    None,
    /// Asked for; a client without one may still connect (and must then
    /// authenticate otherwise). The client port.
    Optional,
    /// Required and verified against the CA (the peer port).
    Required,
}

/// A server configuration for `files` with the given client authentication.
pub fn server_config(files: &TlsFiles, auth: ClientAuth) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("choose TLS versions"))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(load_roots(&files.ca)?, provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| TlsError::Rustls {
                what: "build the client-certificate verifier",
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(rustls_err("use the certificate and key"))
}

/// A client configuration trusting the CA file, presenting `identity`
/// (certificate, key) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err("choose TLS versions"))?
        .with_root_certificates(load_roots(ca)?);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(rustls_err("use the client certificate and key")),
    }
}

/// A connector for a client of the client port: trusts `ca`; presents a
/// client certificate (whose common name is the principal) when `identity`
/// is given.
pub fn client_connector(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<TlsConnector, TlsError> {
    Ok(TlsConnector::from(Arc::new(client_config(ca, identity)?)))
}

/// The configurations built from one set of files at one moment.
struct Built {
    peer_server: Arc<ServerConfig>,
    client_server: Arc<ServerConfig>,
    metrics_server: Arc<ServerConfig>,
    peer_client: Arc<ClientConfig>,
}

impl Built {
    fn from_files(files: &TlsFiles) -> Result<Built, TlsError> {
        Ok(Built {
            peer_server: Arc::new(server_config(files, ClientAuth::Required)?),
            client_server: Arc::new(server_config(files, ClientAuth::Optional)?),
            metrics_server: Arc::new(server_config(files, ClientAuth::None)?),
            peer_client: Arc::new(client_config(&files.ca, Some((&files.cert, &files.key)))?),
        })
    }
}

/// A broker's TLS material, reloadable while it serves.
pub struct TlsContext {
    files: TlsFiles,
    built: RwLock<Arc<Built>>,
    /// Modification times of the three files when last loaded.
    stamps: Mutex<[Option<SystemTime>; 3]>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn stamps(files: &TlsFiles) -> [Option<SystemTime>; 3] {
    [&files.cert, &files.key, &files.ca]
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

impl TlsContext {
    /// Loads and checks `files` (a mismatched key, a missing CA... fail
    /// here, at start-up, not at the first connection).
    pub fn load(files: TlsFiles) -> Result<Arc<TlsContext>, TlsError> {
        let stamp = stamps(&files);
        let built = Built::from_files(&files)?;
        Ok(Arc::new(TlsContext {
            files,
            built: RwLock::new(Arc::new(built)),
            stamps: Mutex::new(stamp),
        }))
    }

    /// The files.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Built> {
        self.built.read().expect("tls lock").clone()
    }

    /// Rebuilds every configuration from the files. On error the current
    /// ones stay in use (a half-written file never takes a listener down).
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = stamps(&self.files);
        let built = Built::from_files(&self.files)?;
        *self.built.write().expect("tls lock") = Arc::new(built);
        *self.stamps.lock().expect("stamp lock") = stamp;
        Ok(())
    }

    /// Reloads if any file's modification time changed since the last
    /// load: `Ok(true)` when it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        if *self.stamps.lock().expect("stamp lock") == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Acceptor for the peer port: a client certificate chaining to the
    /// cluster CA is required.
    pub fn peer_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().peer_server.clone())
    }

    /// Acceptor for the client port: a client certificate is optional.
    pub fn client_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().client_server.clone())
    }

    /// Acceptor for the HTTP metrics port.
    pub fn metrics_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().metrics_server.clone())
    }

    /// Connector to dial a peer, presenting this broker's certificate.
    pub fn peer_connector(&self) -> TlsConnector {
        TlsConnector::from(self.current().peer_client.clone())
    }
}
