//! Fleet identities: a fleet's CA and the certificates it signs, one for the
//! coordinator and one per executor, kept as PEM files in a fleet directory; and the
//! TLS configurations that make both ends of a QUIC link present one and check the
//! other's (mutual TLS, TLS 1.3 only, ring). Each certificate carries its role
//! (see [`role`]): each side refuses a peer of the wrong one.

mod role;
mod verify;

pub use role::{Role, RoleError};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The name every executor certificate carries, and the one the coordinator checks,
/// since it dials addresses and learns executors' own names only after the handshake.
pub const EXECUTOR_SAN: &str = "faultbox-executor";
/// The name of the coordinator's certificate.
pub const COORDINATOR: &str = "coordinator";
/// The ALPN protocol of a fleet link.
pub const ALPN: &[u8] = b"faultbox-fleet";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PEM {what}")]
    Pem { path: PathBuf, what: &'static str },
    #[error("{0}: already a fleet directory (it has ca.pem)")]
    Exists(PathBuf),
    #[error("{0:?} is not a valid name: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("making a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{path}: {problem}")]
    Role { path: PathBuf, problem: RoleError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ca_params(fleet_id: &str) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("faultbox fleet CA {fleet_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(path))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Whether `name` may name an identity (it becomes a file name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Creates a fleet in `dir`: its CA (`ca.pem`, `ca.key`, `fleet-id`) and the
/// coordinator's identity (`coordinator.pem`, `coordinator.key`).
pub fn init(dir: &Path, days: u32) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join("ca.pem").exists() {
        return Err(IdentityError::Exists(dir.to_path_buf()));
    }
    // A random id distinguishes this fleet's CA from any other's.
    let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(io(dir))?;
    let id: String = uuid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(16)
        .collect();
    let key = KeyPair::generate()?;
    let mut params = ca_params(&id)?;
    validity(&mut params, days.max(1) * 10);
    let cert = params.self_signed(&key)?;
    write(&dir.join("fleet-id"), &format!("{id}\n"), false)?;
    write(&dir.join("ca.pem"), &cert.pem(), false)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    issue(dir, COORDINATOR, days)
}

/// `secs` after (or, negative, before) now.
fn from_now(secs: i64) -> time::OffsetDateTime {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(now + secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn validity(params: &mut CertificateParams, days: u32) {
    params.not_before = from_now(-3600);
    params.not_after = from_now(i64::from(days) * 86_400);
}

/// Issues the identity `name` (`name.pem`, `name.key`) from the fleet CA in `dir`,
/// valid for `days` days (0: expired at once, for testing refusals).
pub fn issue(dir: &Path, name: &str, days: u32) -> Result<(), IdentityError> {
    if !valid_name(name) || name == "ca" || name == "fleet-id" {
        return Err(IdentityError::BadName(name.to_string()));
    }
    let ca_key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|_| IdentityError::Pem {
        path: ca_key_path.clone(),
        what: "private key",
    })?;
    let id = read(&dir.join("fleet-id"))?.trim().to_string();
    let issuer = Issuer::new(ca_params(&id)?, ca_key);
    let role = role_of_name(name);
    let (sans, purpose) = match role {
        Role::Coordinator => (
            vec![COORDINATOR.to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        Role::Executor => (
            vec![name.to_string(), EXECUTOR_SAN.to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
    };
    let mut params = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    // For people reading the certificate; the extended key usage is what is checked.
    dn.push(DnType::OrganizationalUnitName, role.to_string());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // One purpose only: the role.
    params.extended_key_usages = vec![purpose];
    if days == 0 {
        params.not_before = from_now(-7200);
        params.not_after = from_now(-3600);
    } else {
        validity(&mut params, days);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    write(&dir.join(format!("{name}.key")), &key.serialize_pem(), true)
}

/// The role `faultbox fleet` issues the identity called `name`: `coordinator` is
/// the coordinator's, every other name an executor's.
fn role_of_name(name: &str) -> Role {
    if name == COORDINATOR {
        Role::Coordinator
    } else {
        Role::Executor
    }
}

/// One side's identity, loaded from a fleet directory.
pub struct Identity {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Loads `name`'s identity and the fleet CA from `dir`, and checks that the
    /// certificate is good for `role`: a side never starts with the other's.
    pub fn load(dir: &Path, name: &str, role: Role) -> Result<Identity, IdentityError> {
        let certs = |path: PathBuf| -> Result<Vec<CertificateDer<'static>>, IdentityError> {
            let text = read(&path)?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| IdentityError::Pem {
                    path: path.clone(),
                    what: "certificate",
                })?;
            if certs.is_empty() {
                return Err(IdentityError::Pem {
                    path,
                    what: "certificate",
                });
            }
            Ok(certs)
        };
        let ca = certs(dir.join("ca.pem"))?;
        let cert_path = dir.join(format!("{name}.pem"));
        let chain = certs(cert_path.clone())?;
        let key_path = dir.join(format!("{name}.key"));
        let key = rustls_pemfile::private_key(&mut read(&key_path)?.as_bytes())
            .ok()
            .flatten()
            .ok_or(IdentityError::Pem {
                path: key_path,
                what: "private key",
            })?;
        let identity = Identity { ca, chain, key };
        role::require_own(
            role,
            &identity.chain[0],
            &identity.chain[1..],
            &identity.roots()?.roots,
        )
        .map_err(|problem| IdentityError::Role {
            path: cert_path,
            problem,
        })?;
        Ok(identity)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| IdentityError::Tls(e.to_string()))?;
        }
        Ok(roots)
    }

    /// The executor's side: present our certificate, require one from the fleet CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots()?;
        let anchors = roots.roots.clone();
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let verifier = Arc::new(verify::CoordinatorVerifier { inner, anchors });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }

    /// The coordinator's side: present our certificate, require the executor's to
    /// come from the fleet CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = self.roots()?;
        let anchors = roots.roots.clone();
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let verifier = Arc::new(verify::ExecutorVerifier { inner, anchors });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }
}

/// Keep-alives every second and a 5 s idle timeout: a host that dies or is cut off
/// is noticed within seconds, however long its jobs run.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(std::time::Duration::from_secs(5)).ok());
    Arc::new(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_one_role_each() {
        let dir = std::env::temp_dir().join(format!("fbtest-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init(&dir, 1).unwrap();
        issue(&dir, "e1", 1).unwrap();
        issue(&dir, "old", 0).unwrap();
        assert!(Identity::load(&dir, COORDINATOR, Role::Coordinator).is_ok());
        assert!(Identity::load(&dir, "e1", Role::Executor).is_ok());
        // An expired certificate still loads: its peer refuses it, saying why.
        assert!(Identity::load(&dir, "old", Role::Executor).is_ok());
        for (name, want) in [("e1", Role::Coordinator), (COORDINATOR, Role::Executor)] {
            match Identity::load(&dir, name, want) {
                Err(IdentityError::Role {
                    problem: RoleError::Wrong { found, .. },
                    ..
                }) => assert_ne!(found, want),
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name} loaded as {want}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
