//! Certificates for a Tern cluster, so nobody needs openssl to try TLS:
//! a cluster CA, broker certificates that prove a node id, and client
//! certificates that name a principal. Used by `tern cert` and the tests.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{node_dns_name, NODE_NAME_PREFIX};
use crate::TlsError;

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedPem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn base_params(
    common_name: &str,
    alt_names: Vec<String>,
    days: u32,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(alt_names).map_err(gen_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // A minute of slack for clocks that disagree a little.
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(i64::from(days));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A new self-signed cluster CA named `name`, valid for `days`.
pub fn create_ca(name: &str, days: u32) -> Result<CertifiedPem, TlsError> {
    let mut params = base_params(name, Vec::new(), days)?;
    params.use_authority_key_identifier_extension = false;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok(CertifiedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn sign(
    ca: &CertifiedPem,
    mut params: CertificateParams,
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertifiedPem, TlsError> {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    let ca_key = KeyPair::from_pem(&ca.key).map_err(gen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(gen_err)?;
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
    Ok(CertifiedPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A broker certificate for node `node_id`: it proves the node id to peers
/// (DNS name `tern-node-<id>`) and serves clients connecting by any of
/// `hosts` (DNS names or IP addresses). Valid for server and client
/// authentication (a broker both accepts and dials peers).
pub fn issue_node(
    ca: &CertifiedPem,
    node_id: u64,
    hosts: &[String],
    days: u32,
) -> Result<CertifiedPem, TlsError> {
    let name = node_dns_name(node_id);
    let mut alt_names = vec![name.clone()];
    alt_names.extend(hosts.iter().cloned());
    let params = base_params(&name, alt_names, days)?;
    sign(
        ca,
        params,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// A client certificate whose principal is `name` (its common name). It
/// carries no DNS name, so it can never pass for a broker.
pub fn issue_client(ca: &CertifiedPem, name: &str, days: u32) -> Result<CertifiedPem, TlsError> {
    if name.is_empty() || name.starts_with(NODE_NAME_PREFIX) {
        return Err(TlsError::Invalid(format!(
            "client name {name:?}: must be non-empty and not start with {NODE_NAME_PREFIX:?}"
        )));
    }
    let params = base_params(name, Vec::new(), days)?;
    sign(ca, params, vec![ExtendedKeyUsagePurpose::ClientAuth])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{node_id_of, principal_of};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_node_certificate_proves_its_node_id_and_a_client_one_its_principal() {
        let ca = create_ca("test-ca", 1).unwrap();
        let node = issue_node(&ca, 7, &["127.0.0.1".into(), "localhost".into()], 1).unwrap();
        assert_eq!(node_id_of(&der(&node.cert)), Some(7));
        assert_eq!(
            principal_of(&der(&node.cert)).as_deref(),
            Some("tern-node-7")
        );
        let alice = issue_client(&ca, "alice", 1).unwrap();
        assert_eq!(node_id_of(&der(&alice.cert)), None);
        assert_eq!(principal_of(&der(&alice.cert)).as_deref(), Some("alice"));
        assert!(issue_client(&ca, "tern-node-1", 1).is_err());
    }
}
