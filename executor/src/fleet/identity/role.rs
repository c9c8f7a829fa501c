//! Which side of a fleet link a certificate stands for. A coordinator's certificate
//! is good for TLS client authentication only, an executor's for server
//! authentication only (the extended key usage, checked by webpki against the fleet
//! CA). So an executor's key cannot drive other executors, and a coordinator's
//! cannot pose as an executor. Certificates made before roles existed carry both
//! purposes: they are refused with a hint to issue them again.

use std::cell::Cell;

use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};

/// The two ends of a fleet link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Dials executors and hands them jobs: TLS client authentication.
    Coordinator,
    /// Serves jobs: TLS server authentication.
    Executor,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Executor => "executor",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(
        "a certificate without a role (made by an older faultbox, or not by `faultbox fleet`): \
         issue it again with `faultbox fleet issue` (or make a new fleet with `faultbox fleet init`)"
    )]
    NoRole,
    #[error("the certificate's role is {found}, not {want}")]
    Wrong { want: Role, found: Role },
    #[error("not valid under the fleet CA: {0}")]
    Invalid(webpki::Error),
}

/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1) and id-kp-clientAuth (…3.2), as OID values.
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Notes the end entity's purposes while webpki builds its chain; the verdict is
/// ours, after the chain is known to be good.
#[derive(Default)]
struct Purposes {
    seen: Cell<Option<(bool, bool)>>,
}

impl webpki::ExtendedKeyUsageValidator for Purposes {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let (mut client, mut server) = (false, false);
        for id in iter {
            let id = id?;
            client |= id == webpki::KeyPurposeId::new(CLIENT_AUTH);
            server |= id == webpki::KeyPurposeId::new(SERVER_AUTH);
        }
        // The end entity is checked first; issuers after it.
        if self.seen.get().is_none() {
            self.seen.set(Some((client, server)));
        }
        Ok(())
    }
}

/// The role of `end_entity`, after checking its chain to `anchors` at `now`.
pub fn of(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> Result<Role, RoleError> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(RoleError::Invalid)?;
    let purposes = Purposes::default();
    cert.verify_for_usage(
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
        anchors,
        intermediates,
        now,
        &purposes,
        None,
        None,
    )
    .map_err(RoleError::Invalid)?;
    match purposes.seen.get() {
        Some((true, false)) => Ok(Role::Coordinator),
        Some((false, true)) => Ok(Role::Executor),
        _ => Err(RoleError::NoRole),
    }
}

/// Checks that `end_entity` has the role `want`.
pub fn require(
    want: Role,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
    now: UnixTime,
) -> Result<(), RoleError> {
    match of(end_entity, intermediates, anchors, now)? {
        found if found == want => Ok(()),
        found => Err(RoleError::Wrong { want, found }),
    }
}

/// Like [`require`], at a time the certificate is valid: a side checking its own
/// certificate at start-up asks only about its role; an expired one is the peer's
/// to refuse, with the TLS error that says so.
pub fn require_own(
    want: Role,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchors: &[TrustAnchor<'_>],
) -> Result<(), RoleError> {
    let now = UnixTime::now();
    match require(want, end_entity, intermediates, anchors, now) {
        Err(RoleError::Invalid(webpki::Error::CertExpired { not_after, .. })) => {
            let then = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                not_after.as_secs().saturating_sub(1),
            ));
            require(want, end_entity, intermediates, anchors, then)
        }
        Err(RoleError::Invalid(webpki::Error::CertNotValidYet { not_before, .. })) => {
            require(want, end_entity, intermediates, anchors, not_before)
        }
        other => other,
    }
}
