//! The CA directory: reading Istio's `cacerts` layout or our own self-signed
//! root, and writing a new root when there is neither.
//!
//! Both use Istio's file names, so a directory written here can later be
//! turned into a plugged-in intermediate by dropping in `cert-chain.pem`:
//!
//! | file | plugged-in CA (Istio `cacerts`) | self-signed root |
//! |---|---|---|
//! | `ca-cert.pem` | the intermediate that signs | the root that signs |
//! | `ca-key.pem` | its key | its key (mode 0600) |
//! | `cert-chain.pem` | `ca-cert.pem`, then any issuers (Istio's `tools/certs` appends the root) | absent |
//! | `root-cert.pem` | the trust bundle (one or more roots) | the trust bundle; must include `ca-cert.pem`; optional when reading |
//!
//! A directory holding only some of the files is an error, never a reason to
//! generate a fresh root over a half-written or half-copied CA.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

use super::{CLOCK_SKEW_GRACE, CaError, CaOrigin, random_serial};
use crate::x509;

pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Istio's self-signed root lives ten years (`DefaultSelfSignedCACertTTL`).
const ROOT_CERT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// What a CA directory holds, checked for consistency.
pub(super) struct CaMaterial {
    pub(super) origin: CaOrigin,
    pub(super) signing_cert: CertificateDer<'static>,
    pub(super) signing_key: KeyPair,
    /// The certificates after the leaf in every issued chain: the contents of
    /// `cert-chain.pem` for a plugged-in CA, nothing for a self-signed root.
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) trust_bundle: Vec<CertificateDer<'static>>,
}

pub(super) fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CaMaterial, CaError> {
    let has = |name: &str| dir.join(name).exists();
    let present: Vec<&str> = [CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE]
        .into_iter()
        .filter(|name| has(name))
        .collect();

    if has(CERT_CHAIN_FILE) {
        require_all(dir, &present, &[CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE])?;
        return load_plugged_in(dir);
    }
    if has(CA_CERT_FILE) || has(CA_KEY_FILE) {
        require_all(dir, &present, &[CA_CERT_FILE, CA_KEY_FILE])?;
        return load_self_signed(dir, CaOrigin::SelfSignedLoaded);
    }
    if has(ROOT_CERT_FILE) {
        return Err(CaError::IncompleteLayout {
            dir: dir.to_owned(),
            problem: format!(
                "{ROOT_CERT_FILE} is present but {CA_CERT_FILE} and {CA_KEY_FILE} are missing; \
                 a CA needs its signing certificate and key"
            ),
        });
    }
    write_self_signed_root(dir, trust_domain)?;
    load_self_signed(dir, CaOrigin::SelfSignedGenerated)
}

fn require_all(dir: &Path, present: &[&str], needed: &[&'static str]) -> Result<(), CaError> {
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|name| !present.contains(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CaError::IncompleteLayout {
        dir: dir.to_owned(),
        problem: format!(
            "found {} but {} missing; Istio's cacerts layout needs {CA_CERT_FILE}, {CA_KEY_FILE}, \
             {ROOT_CERT_FILE} and {CERT_CHAIN_FILE}, a self-signed root needs {CA_CERT_FILE} and {CA_KEY_FILE}",
            present.join(", "),
            missing.join(", ")
        ),
    })
}

/// Istio `cacerts`: an intermediate CA whose chain leads to a root in
/// `root-cert.pem`.
fn load_plugged_in(dir: &Path) -> Result<CaMaterial, CaError> {
    let (signing_cert, signing_key) = read_signing_pair(dir)?;
    let chain_path = dir.join(CERT_CHAIN_FILE);
    let chain = read_certs(&chain_path)?;
    let trust_bundle = read_certs(&dir.join(ROOT_CERT_FILE))?;

    if chain.first() != Some(&signing_cert) {
        return Err(CaError::file(
            &chain_path,
            format!(
                "the first certificate is not the one in {CA_CERT_FILE}; cert-chain.pem must start with the signing certificate"
            ),
        ));
    }
    for (i, pair) in chain.windows(2).enumerate() {
        if !signed_by(&pair[0], &pair[1]) {
            return Err(CaError::file(
                &chain_path,
                format!(
                    "certificate {} ({}) is not signed by certificate {} ({})",
                    i + 1,
                    subject(&pair[0]),
                    i + 2,
                    subject(&pair[1])
                ),
            ));
        }
    }
    let last = chain.last().unwrap_or(&signing_cert);
    let anchored = trust_bundle
        .iter()
        .any(|root| root == last || signed_by(last, root));
    if !anchored {
        return Err(CaError::file(
            &chain_path,
            format!(
                "the chain ends at {} which is neither in nor signed by any certificate in {ROOT_CERT_FILE}",
                subject(last)
            ),
        ));
    }
    Ok(CaMaterial {
        origin: CaOrigin::PluggedIn,
        signing_cert,
        signing_key,
        chain,
        trust_bundle,
    })
}

fn load_self_signed(dir: &Path, origin: CaOrigin) -> Result<CaMaterial, CaError> {
    let (signing_cert, signing_key) = read_signing_pair(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    if !is_self_signed(&signing_cert) {
        return Err(CaError::file(
            &cert_path,
            format!(
                "not a self-signed root ({}); an intermediate CA needs {CERT_CHAIN_FILE} and {ROOT_CERT_FILE} beside it (Istio's cacerts layout)",
                subject(&signing_cert)
            ),
        ));
    }
    let root_path = dir.join(ROOT_CERT_FILE);
    let trust_bundle = if root_path.exists() {
        let bundle = read_certs(&root_path)?;
        if !bundle.contains(&signing_cert) {
            return Err(CaError::file(
                &root_path,
                format!(
                    "does not contain the signing root from {CA_CERT_FILE}; workloads would not trust the certificates this CA issues"
                ),
            ));
        }
        bundle
    } else {
        vec![signing_cert.clone()]
    };
    Ok(CaMaterial {
        origin,
        signing_cert,
        signing_key,
        chain: Vec::new(),
        trust_bundle,
    })
}

/// `ca-cert.pem` and `ca-key.pem`: one CA certificate, still valid, and the
/// key that matches it.
fn read_signing_pair(dir: &Path) -> Result<(CertificateDer<'static>, KeyPair), CaError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let mut certs = read_certs(&cert_path)?;
    if certs.len() != 1 {
        return Err(CaError::file(
            &cert_path,
            format!(
                "holds {} certificates; expected exactly one (the signing CA)",
                certs.len()
            ),
        ));
    }
    let cert = certs.remove(0);
    let parsed = x509::parse(&cert).map_err(|e| CaError::file(&cert_path, e))?;
    if !parsed.is_ca() {
        return Err(CaError::file(
            &cert_path,
            "not a CA certificate (basicConstraints CA:TRUE is missing)",
        ));
    }
    if let Ok(Some(ku)) = parsed.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(CaError::file(
            &cert_path,
            "its key usage does not allow signing certificates (keyCertSign)",
        ));
    }
    let not_after: SystemTime = parsed.validity().not_after.to_datetime().into();
    if not_after <= SystemTime::now() {
        return Err(CaError::file(
            &cert_path,
            format!("expired at {}", parsed.validity().not_after.to_datetime()),
        ));
    }

    let key_pem = read_to_string(&key_path)?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        CaError::file(
            &key_path,
            format!("no usable private key (PKCS#8, SEC1 or PKCS#1 PEM): {e}"),
        )
    })?;
    let key = KeyPair::try_from(&key_der).map_err(|e| {
        CaError::file(
            &key_path,
            format!(
                "unsupported private key (ECDSA P-256/P-384/P-521, RSA or Ed25519 expected): {e}"
            ),
        )
    })?;
    if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
        return Err(CaError::file(
            &key_path,
            format!("does not match the public key of {CA_CERT_FILE}"),
        ));
    }
    Ok((cert, key))
}

/// Generates an ECDSA P-256 root for `trust_domain` (`O=<trust domain>`, as
/// Istio's self-signed root) and writes `ca-cert.pem`, `ca-key.pem` (0600)
/// and `root-cert.pem` into `dir`, creating it if needed. Each file is
/// written to a temporary name and renamed, so a crash leaves either no file
/// or a complete one.
pub(super) fn write_self_signed_root(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW_GRACE).into();
    params.not_after = (now + ROOT_CERT_TTL).into();
    params.serial_number = Some(random_serial().map_err(|e| CaError::Generate(e.to_string()))?);
    let cert = params.self_signed(&key).map_err(generate)?;
    let cert_pem = x509::cert_to_pem(cert.der());

    fs::create_dir_all(dir).map_err(|e| CaError::file(dir, format!("cannot create: {e}")))?;
    // Key first: if we die before the certificate is written, the next start
    // reports the incomplete layout instead of silently replacing the key.
    write_atomically(
        &dir.join(CA_KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_atomically(&dir.join(CA_CERT_FILE), cert_pem.as_bytes(), 0o644)?;
    write_atomically(&dir.join(ROOT_CERT_FILE), cert_pem.as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), trust_domain, "generated a self-signed mesh root CA");
    Ok(())
}

fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        CaError::file(path, format!("cannot write: {e}"))
    })
}

fn read_to_string(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| CaError::file(path, format!("cannot read: {e}")))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let pem = read_to_string(path)?;
    x509::certs_from_pem(&pem).map_err(|e| CaError::file(path, e))
}

/// Whether `cert`'s signature verifies with `issuer`'s public key and its
/// issuer name is `issuer`'s subject.
fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    let (Ok(cert), Ok(issuer)) = (x509::parse(cert), x509::parse(issuer)) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    signed_by(cert, cert)
}

fn subject(cert: &CertificateDer<'_>) -> String {
    x509::parse(cert)
        .map(|c| {
            let s = c.subject().to_string();
            if s.is_empty() {
                "empty subject".to_owned()
            } else {
                s
            }
        })
        .unwrap_or_else(|_| "unparsable certificate".to_owned())
}
