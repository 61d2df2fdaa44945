//! TLS on both ports (rustls, through tonic), and the certificates of a
//! development CA (`lattice cert`).
//!
//! - The KV port serves with [`ServerTls`]; with a client CA it also asks
//!   every client for a certificate signed by it (`--client-cert-auth`).
//! - The peer port is always mutual ([`PeerTls`]): a node serves its peer
//!   certificate, dials its peers with the same certificate, and refuses a
//!   peer whose certificate the cluster CA did not sign. A certificate that
//!   names nodes (`lattice-node-<id>` in its SAN) may speak only for the node
//!   it names: [`PeerIdentity`] checks every message's sender against it.
//! - Clients dial with [`ClientTls`]: the CA that signed the servers, and a
//!   certificate of their own when the servers ask for one.
//!
//! Files are read and checked when the configuration is built, so a missing
//! or malformed file stops the node before it serves, naming the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Error, Result};

/// The SAN DNS name that says "this certificate speaks for node `id`".
pub fn node_name(id: u64) -> String {
    format!("lattice-node-{id}")
}

/// The SAN DNS name of a client certificate made by `lattice cert client`:
/// in Lattice's namespace, so the peer port knows it names no node.
pub fn client_name(name: &str) -> String {
    format!("lattice-client-{name}")
}

const NAMESPACE: &str = "lattice-";

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(format!("reading the {what} {}", path.display()), e))
}

/// The certificates of a PEM file, as DER; an error naming the file when
/// there are none or one does not parse.
fn certificates(pem: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block
            .map_err(|e| Error::Config(format!("{}: not a PEM file ({e})", path.display())))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&block.contents).map_err(|e| {
            Error::Config(format!(
                "{}: a certificate that does not parse ({e})",
                path.display()
            ))
        })?;
        found.push(block.contents);
    }
    if found.is_empty() {
        return Err(Error::Config(format!(
            "{}: no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it",
            path.display()
        )));
    }
    Ok(found)
}

/// A certificate chain and its private key, checked to parse.
#[derive(Clone)]
struct KeyedCertificate {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl KeyedCertificate {
    fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "private key")?;
        let chain = certificates(&cert_pem, cert)?;
        warn_if_expired(&chain[0], cert);
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(Error::Config(format!(
                "{}: no PEM private key (\"-----BEGIN ... PRIVATE KEY-----\") in it",
                key.display()
            )));
        }
        let keyed = KeyedCertificate { cert_pem, key_pem };
        // rustls checks the key (and that it matches the certificate) as it
        // builds a server configuration: do it now, to name the files.
        tonic::transport::Server::builder()
            .tls_config(ServerTlsConfig::new().identity(keyed.identity()))
            .map_err(|e| {
                Error::Config(format!(
                    "{} with {}: unusable as a TLS identity ({})",
                    cert.display(),
                    key.display(),
                    crate::error::with_sources(&e, e.to_string())
                ))
            })?;
        Ok(keyed)
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

fn warn_if_expired(der: &[u8], path: &Path) {
    if let Ok((_, cert)) = X509Certificate::from_der(der) {
        if !cert.validity().is_valid() {
            tracing::warn!(
                file = %path.display(),
                not_before = %cert.validity().not_before,
                not_after = %cert.validity().not_after,
                "the certificate is not valid now: peers and clients will refuse it"
            );
        }
    }
}

/// A CA's certificates (PEM), checked to parse.
#[derive(Clone)]
struct TrustedCa {
    pem: Vec<u8>,
}

impl TrustedCa {
    fn from_file(path: &Path) -> Result<Self> {
        let pem = read(path, "CA certificate")?;
        certificates(&pem, path)?;
        Ok(TrustedCa { pem })
    }

    fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }
}

/// How one port serves TLS.
#[derive(Clone)]
pub struct ServerTls {
    identity: KeyedCertificate,
    /// Clients must present a certificate this CA signed.
    client_ca: Option<TrustedCa>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("requires_client_certificate", &self.client_ca.is_some())
            .finish()
    }
}

impl ServerTls {
    /// Serve `cert` (PEM, the leaf first) with `key`; with `client_ca`, refuse
    /// a client that presents no certificate signed by that CA.
    pub fn from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self> {
        Ok(ServerTls {
            identity: KeyedCertificate::from_files(cert, key)?,
            client_ca: client_ca.map(TrustedCa::from_file).transpose()?,
        })
    }

    pub fn requires_client_certificate(&self) -> bool {
        self.client_ca.is_some()
    }

    pub(crate) fn config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity.identity())
            .timeout(std::time::Duration::from_secs(10));
        match &self.client_ca {
            Some(ca) => config
                .client_ca_root(ca.certificate())
                .client_auth_optional(false),
            None => config,
        }
    }
}

/// How a client (or a node dialling its peers) speaks TLS.
#[derive(Clone)]
pub struct ClientTls {
    ca: TrustedCa,
    identity: Option<KeyedCertificate>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("has_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Trust servers signed by `ca`; present `cert` and `key` (both or
    /// neither) to servers that ask.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some(KeyedCertificate::from_files(cert, key)?),
            (None, None) => None,
            _ => return Err(Error::Config(
                "a client certificate needs its key, and a key its certificate (--cert with --key)"
                    .into(),
            )),
        };
        Ok(ClientTls {
            ca: TrustedCa::from_file(ca)?,
            identity,
        })
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(self.ca.certificate())
            .timeout(std::time::Duration::from_secs(10));
        match &self.identity {
            Some(identity) => config.identity(identity.identity()),
            None => config,
        }
    }
}

/// The peer port's TLS: one certificate served to peers and presented when
/// dialling them, and the cluster CA both ways.
#[derive(Clone, Debug)]
pub struct PeerTls {
    pub(crate) server: ServerTls,
    pub(crate) client: ClientTls,
}

impl PeerTls {
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self> {
        let identity = KeyedCertificate::from_files(cert, key)?;
        let ca = TrustedCa::from_file(ca)?;
        Ok(PeerTls {
            server: ServerTls {
                identity: identity.clone(),
                client_ca: Some(ca.clone()),
            },
            client: ClientTls {
                ca,
                identity: Some(identity),
            },
        })
    }
}

/// What a peer's certificate lets it speak for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// The connection is not TLS (peer TLS is off).
    Plaintext,
    /// The certificate names no one in Lattice's namespace: the cluster CA
    /// signed it, which is all that is checked.
    Unnamed,
    /// The nodes the certificate names (empty: it names only non-node
    /// Lattice identities, such as a client's).
    Nodes(Vec<u64>),
}

impl PeerIdentity {
    /// The identity of a connection's peer certificate (the leaf first).
    pub fn of_certificates(certs: Option<&[impl AsRef<[u8]>]>) -> Self {
        let Some(leaf) = certs.and_then(|certs| certs.first()) else {
            return PeerIdentity::Plaintext;
        };
        let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
            // rustls verified it; x509-parser cannot read it. Name no one.
            return PeerIdentity::Nodes(Vec::new());
        };
        // DNS names compare without regard to case.
        let names: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .filter(|name| name.starts_with(NAMESPACE))
                .collect(),
            Ok(None) => Vec::new(),
            // A SAN that does not parse names no one.
            Err(_) => return PeerIdentity::Nodes(Vec::new()),
        };
        if names.is_empty() {
            return PeerIdentity::Unnamed;
        }
        PeerIdentity::Nodes(
            names
                .iter()
                .filter_map(|name| name.strip_prefix("lattice-node-")?.parse().ok())
                .collect(),
        )
    }

    /// Whether a message from node `from` may come over this connection.
    pub fn check(&self, from: u64) -> std::result::Result<(), String> {
        match self {
            PeerIdentity::Plaintext | PeerIdentity::Unnamed => Ok(()),
            PeerIdentity::Nodes(nodes) if nodes.contains(&from) => Ok(()),
            PeerIdentity::Nodes(nodes) if nodes.is_empty() => Err(format!(
                "the peer's certificate names no node (a client certificate?), so it cannot speak for node {from}"
            )),
            PeerIdentity::Nodes(nodes) => Err(format!(
                "the peer's certificate is node {}'s, not node {from}'s",
                nodes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// The files of a development CA in one directory, as `lattice cert` writes
/// them (etcd's names: `ca.pem`, `ca-key.pem`, `node-1.pem`, ...).
pub struct DevCaFiles {
    pub dir: PathBuf,
}

impl DevCaFiles {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn node(&self, id: u64) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("node-{id}.pem")),
            self.dir.join(format!("node-{id}-key.pem")),
        )
    }
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("client-{name}.pem")),
            self.dir.join(format!("client-{name}-key.pem")),
        )
    }
}

/// A development CA: makes itself and signs node and client certificates.
/// Keys are ECDSA P-256. For development and tests; production clusters use
/// their organisation's CA.
pub struct DevCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
    key_pem: String,
    days: u32,
}

fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Config("the clock is before 1970".into()))?
        .as_secs() as i64;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|e| Error::Config(format!("certificate validity: {e}")))
    };
    // An hour back: clocks of the machines that check it may lag.
    Ok((at(now - 3600)?, at(now + i64::from(days) * 86_400)?))
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Config(format!("{what}: {e}"))
}

impl DevCa {
    /// A new CA whose certificates are valid for `days`.
    pub fn generate(days: u32) -> Result<Self> {
        let key = rcgen::KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Lattice development CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(days)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("signing the CA certificate"))?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            cert_pem: cert.pem(),
            key_pem,
            issuer: rcgen::Issuer::new(params, key),
            days,
        })
    }

    /// The CA `lattice cert ca` wrote into `files.dir`.
    pub fn load(files: &DevCaFiles, days: u32) -> Result<Self> {
        let cert_pem = String::from_utf8_lossy(&read(&files.ca(), "CA certificate")?).into_owned();
        let key_pem = String::from_utf8_lossy(&read(&files.ca_key(), "CA key")?).into_owned();
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| {
            Error::Config(format!(
                "{}: not a usable key ({e})",
                files.ca_key().display()
            ))
        })?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
            Error::Config(format!(
                "{}: not a usable CA certificate ({e})",
                files.ca().display()
            ))
        })?;
        Ok(DevCa {
            issuer,
            cert_pem,
            key_pem,
            days,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600) into `files.dir`.
    pub fn write(&self, files: &DevCaFiles) -> Result<()> {
        write_pair(&files.ca(), &self.cert_pem, &files.ca_key(), &self.key_pem)
    }

    /// A certificate for node `id`, for both its ports and for dialling its
    /// peers: SAN `lattice-node-<id>`, `localhost`, 127.0.0.1, ::1 and
    /// `hosts` (IP addresses or DNS names the node is reached by).
    /// Returns (certificate PEM, key PEM).
    pub fn issue_node(&self, id: u64, hosts: &[String]) -> Result<(String, String)> {
        let mut names = vec![
            node_name(id),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        self.issue(
            &format!("lattice node {id}"),
            &names,
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A client certificate (SAN `lattice-client-<name>`).
    pub fn issue_client(&self, name: &str) -> Result<(String, String)> {
        self.issue(
            &format!("lattice client {name}"),
            &[client_name(name)],
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[String],
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String)> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
                Err(_) => name
                    .clone()
                    .try_into()
                    .map(rcgen::SanType::DnsName)
                    .map_err(|e| Error::Config(format!("{name:?} is not a DNS name: {e}"))),
            })
            .collect::<Result<_>>()?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(self.days)?;
        let key = rcgen::KeyPair::generate().map_err(rcgen_error("generating a key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_error("signing a certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Writes a certificate and its key; the key readable by its owner only.
pub fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(cert_path, cert)
        .map_err(|e| Error::io(format!("writing {}", cert_path.display()), e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key_path)
        .map_err(|e| Error::io(format!("writing {}", key_path.display()), e))?;
    file.write_all(key.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", key_path.display()), e))?;
    Ok(())
}

/// Whether `host:port` (or a bare host) is a loopback address: the only
/// place a node listens in plaintext without `--insecure`.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let path = Path::new("test.pem");
        certificates(pem.as_bytes(), path).unwrap().remove(0)
    }

    #[test]
    fn a_node_certificate_speaks_for_its_node_only() {
        let ca = DevCa::generate(1).unwrap();
        let (node, _) = ca.issue_node(3, &["127.0.0.13".into()]).unwrap();
        let identity = PeerIdentity::of_certificates(Some(&[der_of(&node)]));
        assert_eq!(identity, PeerIdentity::Nodes(vec![3]));
        assert!(identity.check(3).is_ok());
        let refused = identity.check(2).unwrap_err();
        assert!(refused.contains("node 3's, not node 2's"), "{refused}");

        let (client, _) = ca.issue_client("alice").unwrap();
        let identity = PeerIdentity::of_certificates(Some(&[der_of(&client)]));
        assert_eq!(identity, PeerIdentity::Nodes(vec![]));
        assert!(identity.check(1).unwrap_err().contains("names no node"));

        assert_eq!(
            PeerIdentity::of_certificates(None::<&[Vec<u8>]>),
            PeerIdentity::Plaintext
        );
        assert!(PeerIdentity::Plaintext.check(7).is_ok());
    }

    #[test]
    fn a_certificate_without_lattice_names_is_trusted_by_its_ca_alone() {
        let ca = DevCa::generate(1).unwrap();
        let (cert, _) = ca
            .issue("an operator's own", &["db1.example.com".into()], vec![])
            .unwrap();
        let identity = PeerIdentity::of_certificates(Some(&[der_of(&cert)]));
        assert_eq!(identity, PeerIdentity::Unnamed);
        assert!(identity.check(5).is_ok());
    }

    #[test]
    fn files_that_are_not_certificates_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = DevCaFiles {
            dir: dir.path().to_path_buf(),
        };
        let ca = DevCa::generate(1).unwrap();
        ca.write(&files).unwrap();
        let (cert, key) = ca.issue_node(1, &[]).unwrap();
        let (cert_path, key_path) = files.node(1);
        write_pair(&cert_path, &cert, &key_path, &key).unwrap();
        assert!(PeerTls::from_files(&cert_path, &key_path, &files.ca()).is_ok());

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"\x00\xffnot pem at all").unwrap();
        for (cert, key, ca) in [
            (&garbage, &key_path, &files.ca()),
            (&cert_path, &garbage, &files.ca()),
            (&cert_path, &key_path, &garbage),
            // A certificate with another certificate's key.
            (&cert_path, &files.ca_key(), &files.ca()),
        ] {
            let error = PeerTls::from_files(cert, key, ca)
                .expect_err("refused")
                .to_string();
            assert!(error.contains(".pem"), "{error}");
        }
        let missing = dir.path().join("missing.pem");
        let error = ClientTls::from_files(&missing, None, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let error = ClientTls::from_files(&files.ca(), Some(&cert_path), None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--cert with --key"), "{error}");
    }

    #[test]
    fn a_written_ca_loads_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let files = DevCaFiles {
            dir: dir.path().to_path_buf(),
        };
        let ca = DevCa::generate(30).unwrap();
        ca.write(&files).unwrap();
        let loaded = DevCa::load(&files, 30).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let (cert, _) = loaded.issue_node(2, &[]).unwrap();
        assert_eq!(
            PeerIdentity::of_certificates(Some(&[der_of(&cert)])),
            PeerIdentity::Nodes(vec![2])
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(files.ca_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn loopback_addresses() {
        for addr in [
            "127.0.0.1:7001",
            "127.0.0.13:1",
            "[::1]:5",
            "localhost:80",
            "::1",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "0.0.0.0:7001",
            "10.0.0.1:1",
            "[::]:5",
            "node1:80",
            "example.com",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }
}
