//! TLS certificate verifiers that check the peer's role on top of rustls' webpki
//! checks: an executor accepts only a coordinator's certificate, the coordinator
//! only an executor's. The refusing side's error names the reason (the executor logs
//! it; the coordinator prints it); the TLS alert the peer gets carries none.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::role::{self, Role, RoleError};

fn refusal(e: RoleError) -> rustls::Error {
    let message = format!("the peer's certificate is refused: {e}");
    rustls::Error::Other(rustls::OtherError(Arc::new(std::io::Error::other(message))))
}

/// Checks `end_entity`'s role; a chain webpki refuses is left to the inner
/// verifier, whose error names the problem (expired, unknown issuer).
fn check_role(
    want: Role,
    anchors: &[TrustAnchor<'static>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    match role::require(want, end_entity, intermediates, anchors, now) {
        Ok(()) | Err(RoleError::Invalid(_)) => Ok(()),
        Err(e) => Err(refusal(e)),
    }
}

/// The executor's check of a coordinator.
#[derive(Debug)]
pub struct CoordinatorVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) anchors: Vec<TrustAnchor<'static>>,
}

impl ClientCertVerifier for CoordinatorVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_role(
            Role::Coordinator,
            &self.anchors,
            end_entity,
            intermediates,
            now,
        )?;
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The coordinator's check of an executor.
#[derive(Debug)]
pub struct ExecutorVerifier {
    pub(super) inner: Arc<dyn ServerCertVerifier>,
    pub(super) anchors: Vec<TrustAnchor<'static>>,
}

impl ServerCertVerifier for ExecutorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        check_role(
            Role::Executor,
            &self.anchors,
            end_entity,
            intermediates,
            now,
        )?;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
