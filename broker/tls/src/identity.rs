//! Who is on the other side of a TLS connection, read from the certificate
//! the handshake verified.
//!
//! A broker's certificate carries the DNS name `tern-node-<id>` (issued by
//! `tern cert issue --node-id <id>`). A broker dialling peer N asks rustls to
//! verify the name `tern-node-N`, and a broker accepting a peer reads the id
//! from the verified client certificate: either way the node id is proven by
//! the CA's signature, never taken from the peer's hello. A client
//! certificate's principal is its subject common name.

use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The DNS-name prefix of a broker certificate: `tern-node-<id>`.
pub const NODE_NAME_PREFIX: &str = "tern-node-";

/// The DNS name that proves node `id`.
pub fn node_dns_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

/// The name to verify when dialling peer `id`.
pub fn node_server_name(id: u64) -> ServerName<'static> {
    ServerName::DnsName(
        DnsName::try_from(node_dns_name(id)).expect("tern-node-<digits> is a valid DNS name"),
    )
}

/// The node ids a certificate proves (normally one), from its
/// `tern-node-<id>` DNS names. Empty for a client certificate or an
/// unparsable one.
pub fn node_ids_of(cert: &CertificateDer<'_>) -> Vec<u64> {
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => dns.strip_prefix(NODE_NAME_PREFIX)?.parse().ok(),
            _ => None,
        })
        .collect()
}

/// The one node id a certificate proves, if it proves exactly one.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<u64> {
    match node_ids_of(cert).as_slice() {
        [id] => Some(*id),
        _ => None,
    }
}

/// A client certificate's principal: its subject common name.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
