//! Certificate roles: an executor accepts only the coordinator's certificate, the
//! coordinator only executors'. The impostors here are hand-made TLS peers, since
//! `faultbox` itself refuses to start with a certificate of the wrong role.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{faultbox_bounded, faultbox_cmd, fleet, Executor, SERIAL};
use crate::common::Scratch;

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let text = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    let text = std::fs::read(path).unwrap();
    rustls_pemfile::private_key(&mut text.as_slice())
        .unwrap()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(spec_args: &[&str], executors: &str, fleet: &Path) -> crate::common::Out {
    let mut args = vec!["test", "coordinator/tests/specs/seeds.star"];
    args.extend_from_slice(spec_args);
    args.extend(["--executors", executors, "--fleet", fleet.to_str().unwrap()]);
    faultbox_cmd(&args)
}

#[test]
fn an_executor_certificate_cannot_drive_executors() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-role-exec");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1", "e2"]);
    let e2 = Executor::start(&dir, "e2", 7781, &s.0.join("w2"), "1");

    // e1's identity copied in as the coordinator's: faultbox refuses to use it...
    let stolen = s.0.join("stolen");
    std::fs::create_dir(&stolen).unwrap();
    std::fs::copy(dir.join("ca.pem"), stolen.join("ca.pem")).unwrap();
    std::fs::copy(dir.join("e1.pem"), stolen.join("coordinator.pem")).unwrap();
    std::fs::copy(dir.join("e1.key"), stolen.join("coordinator.key")).unwrap();
    let out = run(&["--test", "always"], &e2.addr, &stolen);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "--fleet: {}: the certificate's role is executor, not coordinator",
            stolen.join("coordinator.pem").display()
        )),
        "{}",
        out.stderr
    );

    // ...and a peer that presents it anyway is refused by the executor, which says why.
    let rt = runtime();
    let answered = rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&dir.join("ca.pem")) {
            roots.add(c).unwrap();
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&dir.join("e1.pem")), key(&dir.join("e1.key")))
        .unwrap();
        tls.alpn_protocols = vec![faultbox_executor::fleet::identity::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                e2.addr.parse().unwrap(),
                faultbox_executor::fleet::identity::EXECUTOR_SAN,
            )
            .unwrap()
            .await;
        let Ok(conn) = conn else { return false };
        let Ok((mut tx, mut rx)) = conn.open_bi().await else {
            return false;
        };
        let hello = faultbox_executor::fleet::wire::Frame::Hello {
            version: faultbox_executor::fleet::wire::PROTOCOL_VERSION,
            name: "coordinator".into(),
            slots: 0,
        };
        if faultbox_executor::fleet::wire::send(&mut tx, &hello)
            .await
            .is_err()
        {
            return false;
        }
        faultbox_executor::fleet::wire::recv(&mut rx).await.is_ok()
    });
    assert!(
        !answered,
        "the executor answered a peer with e1's certificate"
    );
    e2.wait_for("refused a connection");
    e2.wait_for("the certificate's role is executor, not coordinator");
}

#[test]
fn a_coordinator_certificate_cannot_serve_as_an_executor() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-role-coord");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);

    // faultbox refuses to serve with the coordinator's identity...
    let out = faultbox_bounded(&[
        "executor",
        "--listen",
        "127.0.0.1:7782",
        "--name",
        "coordinator",
        "--fleet",
        dir.to_str().unwrap(),
        "--work",
        s.0.join("wc").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("coordinator.pem: the certificate's role is coordinator, not executor"),
        "{}",
        out.stderr
    );

    // ...and a server that presents it anyway is refused by the coordinator.
    let rt = runtime();
    let _endpoint = rt.block_on(async {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            certs(&dir.join("coordinator.pem")),
            key(&dir.join("coordinator.key")),
        )
        .unwrap();
        tls.alpn_protocols = vec![faultbox_executor::fleet::identity::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, ([127, 0, 0, 1], 7783).into()).unwrap();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    let _ = incoming.await;
                });
            }
        });
        endpoint
    });
    let out = run(&["--test", "always"], "127.0.0.1:7783", &dir);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("executor 127.0.0.1:7783:")
            && out
                .stderr
                .contains("the certificate's role is coordinator, not executor"),
        "{}",
        out.stderr
    );
}

/// A fleet made the way `faultbox fleet` made them before roles: every certificate
/// good for both ends.
fn fleet_without_roles(dir: &Path, names: &[&str]) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir).unwrap();
    let ca_params = || {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "faultbox fleet CA 0123456789abcdef");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params().self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("fleet-id"), "0123456789abcdef\n").unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("ca.key"), ca_key.serialize_pem()).unwrap();
    let issuer = Issuer::new(ca_params(), ca_key);
    for name in names {
        let sans = if *name == "coordinator" {
            vec!["coordinator".to_string()]
        } else {
            vec![name.to_string(), "faultbox-executor".to_string()]
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, *name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

#[test]
fn fleets_made_before_roles_are_told_to_issue_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-role-old");
    let dir = s.0.join("fleet");
    fleet_without_roles(&dir, &["coordinator", "e1"]);
    let d = dir.to_str().unwrap();
    let out = faultbox_bounded(&[
        "executor",
        "--listen",
        "127.0.0.1:7784",
        "--name",
        "e1",
        "--fleet",
        d,
        "--work",
        s.0.join("w1").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{}: a certificate without a role",
            dir.join("e1.pem").display()
        )) && out.stderr.contains("faultbox fleet issue"),
        "{}",
        out.stderr
    );
    let out = run(&["--test", "always"], "127.0.0.1:7784", &dir);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "--fleet: {}: a certificate without a role",
            dir.join("coordinator.pem").display()
        )),
        "{}",
        out.stderr
    );
    // Doing what the message says is enough: the CA is still good.
    for name in ["coordinator", "e1"] {
        assert_eq!(faultbox_cmd(&["fleet", "issue", d, name]).code, 0);
    }
    let e1 = Executor::start(&dir, "e1", 7784, &s.0.join("w1"), "1");
    let out = run(&["--test", "always"], &e1.addr, &dir);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
