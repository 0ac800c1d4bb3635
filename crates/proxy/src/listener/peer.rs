//! The downstream peer's identity from its verified TLS client certificate:
//! what Envoy's `Ssl::ConnectionInfo` offers filters (`uriSanPeerCertificate`,
//! `dnsSansPeerCertificate`, `subjectPeerCertificate`).

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs (SPIFFE ids), in certificate order.
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// The subject in RFC 2253 form (`CN=client,O=org`), as Envoy prints it.
    pub subject: String,
}

impl PeerIdentity {
    /// Envoy's principal name: the first URI SAN, else the first DNS SAN,
    /// else the subject.
    pub fn principal(&self) -> &str {
        self.uri_sans
            .first()
            .or_else(|| self.dns_sans.first())
            .map_or(self.subject.as_str(), String::as_str)
    }

    /// Reads the end-entity certificate; `None` if it does not parse.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let mut id = Self {
            subject: rfc2253(parsed.subject()),
            ..Self::default()
        };
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uri_sans.push((*u).to_string()),
                    GeneralName::DNSName(d) => id.dns_sans.push((*d).to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }

    /// The identity of a server-side TLS connection's client, if it sent a
    /// certificate.
    pub fn from_server_connection(conn: &rustls::ServerConnection) -> Option<Self> {
        conn.peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(Self::from_certificate)
    }
}

/// OpenSSL's `X509_NAME_print_ex(..., XN_FLAG_RFC2253)`: RDNs last to
/// first, `,` between them, `+` inside a multi-valued RDN.
fn rfc2253(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = Vec::new();
    for rdn in name.iter() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|attr| {
                let oid = attr.attr_type();
                let key = short_name(&oid.to_id_string());
                let value = match attr.as_str() {
                    Ok(s) => escape(s),
                    Err(_) => {
                        let raw = attr.attr_value().data;
                        let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
                        format!("#{hex}")
                    }
                };
                format!("{key}={value}")
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

fn short_name(oid: &str) -> String {
    match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.5" => "serialNumber",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "2.5.4.4" => "SN",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        other => return other.to_string(),
    }
    .to_string()
}

/// RFC 2253 escaping of an attribute value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let last = s.chars().count().saturating_sub(1);
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen_params::Params) -> CertificateDer<'static> {
        rcgen_params::build(params)
    }

    /// Certificates built with aws-lc-rs keys and x509 DER by hand would be
    /// long; rcgen is only a dev convenience here.
    mod rcgen_params {
        use rustls::pki_types::CertificateDer;

        pub(super) struct Params {
            pub(super) cn: &'static str,
            pub(super) org: Option<&'static str>,
            pub(super) uris: Vec<&'static str>,
            pub(super) dns: Vec<&'static str>,
        }

        pub(super) fn build(p: Params) -> CertificateDer<'static> {
            let mut params = rcgen::CertificateParams::new(
                p.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            )
            .expect("params");
            let mut dn = rcgen::DistinguishedName::new();
            if let Some(o) = p.org {
                dn.push(rcgen::DnType::OrganizationName, o);
            }
            dn.push(rcgen::DnType::CommonName, p.cn);
            params.distinguished_name = dn;
            for u in p.uris {
                params.subject_alt_names.push(rcgen::SanType::URI(
                    rcgen::string::Ia5String::try_from(u).expect("ia5"),
                ));
            }
            let key = rcgen::KeyPair::generate().expect("key");
            params.self_signed(&key).expect("cert").der().clone()
        }
    }

    #[test]
    fn reads_sans_and_subject_in_envoy_order() {
        let der = cert(rcgen_params::Params {
            cn: "client",
            org: Some("acme, inc"),
            uris: vec!["spiffe://cluster.local/ns/default/sa/client"],
            dns: vec!["client.default.svc"],
        });
        let id = PeerIdentity::from_certificate(&der).expect("parses");
        assert_eq!(id.uri_sans, ["spiffe://cluster.local/ns/default/sa/client"]);
        assert_eq!(id.dns_sans, ["client.default.svc"]);
        assert_eq!(id.subject, "CN=client,O=acme\\, inc");
        assert_eq!(
            id.principal(),
            "spiffe://cluster.local/ns/default/sa/client"
        );
        let plain = cert(rcgen_params::Params {
            cn: "only-cn",
            org: None,
            uris: vec![],
            dns: vec![],
        });
        let id = PeerIdentity::from_certificate(&plain).expect("parses");
        assert_eq!(id.principal(), "CN=only-cn");
    }
}
