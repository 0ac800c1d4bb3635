//! Just enough X.509 to show a certificate's serial number and validity:
//! a DER walk of `Certificate.tbsCertificate`, PEM and base64 decoding.

use serde_json::Value;

/// What `proxy-config secrets` shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertInfo {
    pub(crate) serial: Vec<u8>,
    /// Unix seconds.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl CertInfo {
    pub(crate) fn serial_hex(&self) -> String {
        let s: String = self.serial.iter().map(|b| format!("{b:02x}")).collect();
        let t = s.trim_start_matches('0');
        if t.is_empty() {
            "0".into()
        } else {
            t.to_string()
        }
    }

    pub(crate) fn valid_now(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_before <= now && now <= self.not_after
    }

    pub(crate) fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }

    pub(crate) fn not_before_rfc3339(&self) -> String {
        rfc3339(self.not_before)
    }
}

/// The first certificate of an Envoy `DataSource` (`inline_bytes` base64
/// DER or PEM, `inline_string` PEM, `filename`).
pub(crate) fn from_data_source(ds: &Value) -> Option<CertInfo> {
    let raw: Vec<u8> = if let Some(b) = ds.get("inline_bytes").and_then(Value::as_str) {
        base64_decode(b)?
    } else if let Some(s) = ds.get("inline_string").and_then(Value::as_str) {
        s.as_bytes().to_vec()
    } else if let Some(f) = ds.get("filename").and_then(Value::as_str) {
        std::fs::read(f).ok()?
    } else {
        return None;
    };
    let der = match std::str::from_utf8(&raw) {
        Ok(text) if text.contains("-----BEGIN") => pem_first(text)?,
        _ => raw,
    };
    parse_cert(&der)
}

fn pem_first(text: &str) -> Option<Vec<u8>> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let rest = &text[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = rest.find("-----END")?;
    base64_decode(&rest[..end])
}

pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    // Protobuf JSON and PEM bodies: standard alphabet, padding optional,
    // line breaks allowed.
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(cleaned).ok()
}

/// One DER TLV: (tag, content, rest).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in data.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let content = data.get(hdr..hdr + len)?;
    Some((tag, content, &data[hdr + len..]))
}

fn parse_cert(der: &[u8]) -> Option<CertInfo> {
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let (mut tag, mut content, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        // [0] version
        (tag, content, rest) = tlv(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    let serial = content.to_vec();
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (t1, nb, r) = tlv(validity)?;
    let (t2, na, _) = tlv(r)?;
    Some(CertInfo {
        serial,
        not_before: asn1_time(t1, nb)?,
        not_after: asn1_time(t2, na)?,
    })
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn asn1_time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let f = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (mo, d, h, mi, se) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8).unwrap_or(0));
    Some(days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + se)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        let t = asn1_time(0x17, b"240229123456Z").unwrap();
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = asn1_time(0x18, b"20500101000000Z").unwrap();
        assert_eq!(rfc3339(t), "2050-01-01T00:00:00Z");
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    }
}
